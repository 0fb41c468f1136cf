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
    readme, results = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--results", str(results), "--assets", str(tmp_path / "assets")]) == 0
    head = readme.read_text()
    assert "old" not in head and head.endswith("tail\n")
    assert "| resnet18 | 120 | 0.900 [0.850, 0.950] | 0.900 [0.850, 0.950] | 0.900 [0.850, " \
           "0.950] | 0.500 [0.200, 0.800] (0.14) | n/a |" in head
    assert "(assets/grad_cam_comparison.png)" in head
    text = results.read_text()
    assert "(../assets/grad_cam_comparison.png)" in text
    assert "synthetic demo dataset" in text
    assert "| resnet18 | 120 | 0.900 [0.850, 0.950] |" in text
    assert "| resnet18 | 128 px | layer3 | 0.500 [0.200, 0.800] (0.14) | 0.300 [0.100, 0.600] " \
           "(0.04) | 0.300 [0.250, 0.350] (0.04) | COVID 0.75, Viral Pneumonia 0.25 |" in text
    assert "| vgg16 |  |  | n/a | n/a | n/a |  |" in text and "within the original game's margin (15 px" in text
    assert (tmp_path / "assets" / "grad_cam_comparison.png").is_file()
    readme.write_text("no markers")
    assert update_readme.main(["--metrics", str(out / "metrics.json"), "--readme", str(readme),
                               "--results", str(results), "--assets", str(tmp_path / "assets")]) == 2


def _view(acc: float) -> dict:
    return {"accuracy": acc, "accuracy_ci": [acc - 0.05, acc + 0.05], "n": 120}


def _audit(removed: float, reads: bool) -> dict:
    view = _view
    return {"as_is": view(0.95), "lungs_only": view(0.9), "lungs_removed": view(removed),
            "chance": 0.25, "reads_outside_lungs": reads,
            "cam": {"n": 120, "energy_in_lungs": 0.6, "energy_in_lungs_ci": [0.55, 0.65],
                    "energy_chance": 0.34, "peaks_outside": 0.1, "peaks_outside_ci": [0.05, 0.15],
                    "peaks_outside_chance": 0.66}}


def test_shortcut_audit_and_calibration_tables_for_two_runs(tmp_path):
    t = {"n": 120, **{k: 0.9 for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
         **{k + "_ci": [0.85, 0.95] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                "macro_auc")}}
    cal = {"temperature": 1.5, "validation": {"note": ""},
           "test": {"n": 120, "ece_before": 0.08, "ece_before_ci": [0.05, 0.12], "ece_after": 0.03,
                    "ece_after_ci": [0.02, 0.06], "nll_before": 0.4, "nll_after": 0.3}}
    runs = {}
    for name, removed, reads in (("outputs", 0.25, False), ("outputs-shortcut", 0.81, True)):
        out = tmp_path / name
        (out / "grad_cam").mkdir(parents=True)
        (out / "grad_cam" / "outside_lungs.png").write_bytes(name.encode())
        m = {"dataset": {"name": name, "synthetic": True}, "created": "now",
             "archs": {"resnet18": {"test": t, "localization": None, "lung_audit": _audit(removed, reads),
                                    "calibration": cal,
                                    "by_source": {"https://demo.invalid/site-A": {"n": 30, "accuracy": 0.9},
                                                  "https://demo.invalid/site-D": {"n": 25, "accuracy": 0.4}}}}}
        (out / "metrics.json").write_text(json.dumps(m))
        runs[name] = out / "metrics.json"
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert update_readme.main(["--metrics", str(runs["outputs"]), "--readme", str(readme),
                               "--results", str(results), "--assets", str(tmp_path / "assets"),
                               "--shortcut-metrics", str(runs["outputs-shortcut"])]) == 0
    text = results.read_text()
    assert ("| normal demo | resnet18 | 0.600 [0.550, 0.650] (0.34) | 0.100 [0.050, 0.150] (0.66) | "
            "0.950 [0.900, 1.000] | 0.900 [0.850, 0.950] | 0.250 [0.200, 0.300] (0.25) | no |") in text
    assert "| planted shortcut | resnet18 |" in text and "0.810 [0.760, 0.860] (0.25) | yes |" in text
    assert "| resnet18 | https://demo.invalid/site-A | 30 | 0.900 |" in text
    assert "| resnet18 | https://demo.invalid/site-D | 25 | 0.400 |" in text
    assert "| resnet18 | 1.5 | 0.080 [0.050, 0.120] | 0.030 [0.020, 0.060] | 0.4000 | 0.3000 |" in text
    assert (tmp_path / "assets" / "outside_lungs.png").read_bytes() == b"outputs"
    assert (tmp_path / "assets" / "outside_lungs_shortcut.png").read_bytes() == b"outputs-shortcut"
    assert "(assets/outside_lungs_shortcut.png)" in text.replace(str(tmp_path) + "/", "")
    assert update_readme.main(["--metrics", str(runs["outputs"]), "--readme", str(readme),
                               "--results", str(results),
                               "--shortcut-metrics", str(tmp_path / "missing.json")]) == 2


def test_external_sets_in_the_headline_and_side_by_side(tmp_path):
    """An external set (make external) gets a column in the README and a side-by-side table with
    intervals in docs/results.md; an uncalibrated model's row says so."""
    def block(acc):
        return {"n": 100, "accuracy": acc, "accuracy_ci": [acc - 0.1, acc + 0.05],
                "balanced_accuracy": acc, "balanced_accuracy_ci": [acc - 0.1, acc + 0.05],
                "macro_f1": acc, "macro_f1_ci": [acc - 0.1, acc + 0.05], "macro_auc": 0.99,
                "macro_auc_ci": [0.98, 1.0],
                "per_class": {"COVID": {"recall": acc, "recall_lo": acc - 0.2, "recall_hi": 1.0}}}
    cal = {"temperature": None, "validation": None, "note": "no temperature",
           "test": {"n": 100, "ece_before": 0.05, "ece_before_ci": [0.03, 0.08], "ece_after": None,
                    "ece_after_ci": None, "nll_before": 0.2, "nll_after": None}}
    ext_cal = {**cal, "external": cal["test"]}
    m = {"dataset": {"name": "demo", "synthetic": True}, "created": "now",
         "archs": {"resnet18": {"test": block(0.95), "calibration": cal}},
         "external": {"site-X": {"dataset": {"name": "other"},
                                 "images": {"scored": 100, "scored_by_class": {"COVID": 100},
                                            "class_map": {"covid": "COVID"},
                                            "skipped_folders": {"Effusion": 4},
                                            "training_duplicates": [{"path": "a"}]},
                                 "archs": {"resnet18": {"external": block(0.8),
                                                        "calibration": ext_cal}}}}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert update_readme.main(["--metrics", str(tmp_path / "metrics.json"), "--readme",
                               str(readme), "--results", str(results), "--assets",
                               str(tmp_path / "assets")]) == 0
    head = readme.read_text()
    assert "accuracy, external `site-X` (n) |" in head and "| 0.800 [0.700, 0.850] (100) |" in head
    text = results.read_text()
    assert "| accuracy | 0.950 [0.850, 1.000] | 0.800 [0.700, 0.850] |" in text
    assert "| recall, COVID | 0.950 [0.750, 1.000] | 0.800 [0.600, 1.000] |" in text
    assert "Effusion (4 images)" in text and "training or validation images: 1" in text
    assert "| resnet18 | none (uncalibrated) | 0.050 [0.030, 0.080] | n/a | 0.2000 | n/a |" in text


def test_architecture_comparison_from_a_make_run_archs_run(tmp_path):
    t = {"n": 120, "accuracy": 0.9, "accuracy_ci": [0.85, 0.95]}
    loc = {"n": 90, "pointing_game": 0.6, "pointing_game_ci": [0.5, 0.7], "chance": 0.17}
    audit = {"as_is": {"accuracy": 0.9}, "chance": 0.25,
             "lungs_removed": {"accuracy": 0.25, "accuracy_ci": [0.18, 0.33]},
             "cam": {"energy_in_lungs": 0.55, "energy_in_lungs_ci": [0.5, 0.6], "energy_chance": 0.33}}
    m = {"dataset": {"name": "demo", "synthetic": True}, "created": "now",
         "archs": {"convnext_tiny": {"test": t, "localization": loc, "lung_audit": audit},
                   "vit_b_16": {"test": t, "localization": None, "lung_audit": None}}}
    out = tmp_path / "outputs-archs"
    (out / "CSVs").mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(m))
    (out / "CSVs" / "training_summary.csv").write_text(
        "arch,image_size,parameters,seconds_per_epoch,epochs_run,best_epoch\n"
        "convnext_tiny,128,27823204,41.6,6,6\nvit_b_16,128,85801732,250.2,8,5\n")
    base = tmp_path / "metrics.json"
    base.write_text(json.dumps({**m, "archs": {"resnet18": {"test": t}}}))
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    args = ["--metrics", str(base), "--readme", str(readme), "--results", str(results),
            "--assets", str(tmp_path / "assets")]
    assert update_readme.main([*args, "--archs-metrics", str(out / "metrics.json")]) == 0
    for text in (readme.read_text(), results.read_text()):
        # convnext's best epoch was its last: the row says it was still improving
        assert ("| convnext_tiny | 27.8 M | 128 px | 42 | 6 (6) | **still improving** | 0.900 "
                "[0.850, 0.950] | 0.600 [0.500, 0.700] (0.17) | 0.550 [0.500, 0.600] (0.33) | "
                "0.250 [0.180, 0.330] (0.25) |") in text
        assert ("| vit_b_16 | 85.8 M | 128 px | 250 | 8 (5) | levelled off | 0.900 [0.850, 0.950] "
                "| n/a | n/a | n/a |") in text
        # the title calls it a budget comparison and names the undertrained row
        assert "**at the demo's training budget**, not at their best" in text
        assert "at most 8 epochs each" in text
        assert "1 of 2 (convnext_tiny) were **still improving**" in text
    assert update_readme.main([*args, "--archs-metrics", str(tmp_path / "none.json")]) == 2


def test_still_improving_reads_the_best_epoch_against_the_epochs_run():
    import tables
    assert tables.still_improving({"best_epoch": 6, "epochs_run": 6}) is True
    assert tables.still_improving({"best_epoch": 4, "epochs_run": 7}) is False
    assert tables.still_improving({"best_epoch": float("nan"), "epochs_run": 7}) is None
    assert tables.still_improving({"epochs_run": 7}) is None
    assert tables.still_improving(None) is None


def test_the_architecture_title_reads_the_training_summary():
    """The title's budget and verdicts come from the summary's rows: the largest epochs run, the
    rows whose best epoch was their last, "levelled off" only when every row says so."""
    import pandas as pd

    import tables
    archs = {"resnet18": {}, "swin_t": {}}
    summary = pd.DataFrame({"arch": ["resnet18", "swin_t"], "epochs_run": [8, 6],
                            "best_epoch": [5, 6]})
    text = tables.architectures_title(archs, summary)
    assert "at most 8 epochs each" in text and "1 of 2 (swin_t) were **still improving**" in text
    summary["best_epoch"] = [5, 4]
    text = tables.architectures_title(archs, summary)
    assert "still improving" not in text and "Every row had levelled off" in text
    summary["best_epoch"] = [5, float("nan")]   # one row cannot say: no verdict for all
    text = tables.architectures_title(archs, summary)
    assert "still improving" not in text and "levelled off" not in text
    text = tables.architectures_title(archs, None)
    assert "the profile's epochs" in text and "levelled off" not in text
