import json

import update_readme


def test_results_section_regenerated_from_metrics(tmp_path):
    out = tmp_path / "outputs"
    (out / "grad_cam").mkdir(parents=True)
    (out / "grad_cam" / "comparison.png").write_bytes(b"png")
    t = {"n": 120, **{k: 0.9 for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
         **{k + "_ci": [0.85, 0.95] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                "macro_auc")}}
    m = {"dataset": {"name": "demo", "synthetic": True}, "created": "now",
         "archs": {"resnet18": {"test": t, "localization": {
             "n": 10, "pointing_game": 0.5, "chance": 0.04, "energy_in_mask": 0.3,
             "mask": "lesion_mask_path"}}}}
    (out / "metrics.json").write_text(json.dumps(m))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--assets", str(tmp_path / "assets")]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n")
    assert "synthetic demo dataset" in text
    assert "| resnet18 | 120 | 0.900 [0.850, 0.950] |" in text
    assert "0.50 (0.04)" in text
    assert (tmp_path / "assets" / "grad_cam_comparison.png").is_file()
    readme.write_text("no markers")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--assets", str(tmp_path / "assets")]) == 2
