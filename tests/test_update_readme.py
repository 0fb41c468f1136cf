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
             "n": 10, "pointing_game": 0.5, "pointing_game_ci": [0.2, 0.8], "chance": 0.14,
             "pointing_game_strict": 0.3, "pointing_game_strict_ci": [0.1, 0.6],
             "chance_strict": 0.04, "energy_in_mask": 0.3, "energy_in_mask_ci": [0.25, 0.35],
             "mask": "lesion_mask_path", "layer": "layer3", "image_size": 128,
             "margin": 15 / 299, "target": "true class",
             "per_class": {"COVID": {"hit": 0.75}, "Viral Pneumonia": {"hit": 0.25}}}},
             "vgg16": {"test": t, "localization": None}}}
    (out / "metrics.json").write_text(json.dumps(m))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--assets", str(tmp_path / "assets")]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n")
    assert "synthetic demo dataset" in text
    assert "| resnet18 | 120 | 0.900 [0.850, 0.950] |" in text
    assert "| resnet18 | 128 px | `layer3` | 0.500 [0.200, 0.800] (0.14) | 0.300 [0.100, 0.600] " \
           "(0.04) | 0.300 [0.250, 0.350] (0.04) | COVID 0.75, Viral Pneumonia 0.25 |" in text
    assert "| vgg16 | | | n/a |" in text and "within the original game's margin (15 px" in text
    assert (tmp_path / "assets" / "grad_cam_comparison.png").is_file()
    readme.write_text("no markers")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--assets", str(tmp_path / "assets")]) == 2
