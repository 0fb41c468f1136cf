"""The three notebooks execute headless (papermill) on a tiny demo set, in order."""

import json

import pytest
import torch

import metrics
import utils
from notebook_runs import run as _run, run_dir  # noqa: F401 (a fixture)
import audit
import checkpoints
import inference

pytestmark = pytest.mark.slow  # notebooks in new kernels: `make test-quick` leaves them out


NB2 = dict(archs=["resnet18"], image_size=32, epochs=1, batch_size=8, num_workers=0,
           weights="none")  # notebook 2's settings in these tests


@pytest.fixture(scope="module")
def ran(run_dir, demo_dir):
    """The three notebooks run once, in order, in fresh kernels: their outputs folder (the
    tests below each check one thing of it, so a failure names what broke)."""
    _run("1_data_exploration.ipynb", run_dir, demo_dir, stats_per_class=5, samples_per_class=2)
    _run("2_finetune_models.ipynb", run_dir, demo_dir, models_dir=str(run_dir / "models"), **NB2)
    _run("3_evaluate_results.ipynb", run_dir, demo_dir, archs=["resnet18"], num_workers=0,
         models_dir=str(run_dir / "models"), n_boot=20, cam_per_class=1,
         cam_layers={"resnet18": "layer3"})
    return run_dir / "outputs"


@pytest.fixture(scope="module")
def again(ran, run_dir, demo_dir, demo_manifest):
    """notebook 3's test predictions recomputed from the checkpoint, outside the notebook."""
    model, meta = checkpoints.load_checkpoint(run_dir / "models" / "resnet18.pt")
    test = demo_manifest[demo_manifest["split"] == "test"]
    y, prob, _ = inference.predict_loader(model, utils.eval_loader(
        test, demo_dir, meta["class_names"], meta["image_size"], num_workers=0), torch.device("cpu"))
    m = json.loads((ran / "metrics.json").read_text())
    return {"model": model, "meta": meta, "test": test, "y": y, "prob": prob, "metrics": m,
            "r": m["archs"]["resnet18"]}


def test_notebook_1_draws_its_figures(ran):
    for f in ("class_counts.png", "samples.png", "intensity_by_class.png", "lung_masks.png"):
        assert (ran / "images" / f).is_file(), f


def test_notebook_2_writes_history_curves_checkpoint_and_cache(ran, run_dir):
    assert (ran / "CSVs" / "resnet18.csv").is_file()
    assert (ran / "summary_plots" / "resnet18.png").is_file()
    assert (run_dir / "models" / "resnet18.pt").is_file()
    assert list((run_dir / "cache").glob("decoded-*.u8"))


def test_notebook_3_test_metrics_equal_a_recomputation(again):
    r, test = again["r"], again["test"]
    assert again["metrics"]["dataset"]["synthetic"] is True
    recomputed = metrics.summary_metrics(again["y"], again["prob"], again["meta"]["class_names"],
                                         n_boot=20, seed=42)
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        assert r["test"][k] == pytest.approx(recomputed[k], abs=1e-9), k
        assert r["test"][k + "_ci"] == pytest.approx(recomputed[k + "_ci"], abs=1e-9), k
    assert r["test"]["n"] == len(test)
    assert r["test"]["confusion_matrix"] == recomputed["confusion_matrix"]
    assert set(r["test"]["per_class"]) >= {"COVID", "Normal", "macro avg"}


def test_notebook_3_localization_record(again):
    loc = again["r"]["localization"]
    # 9 abnormal test images; maps that are constant (a 1-epoch model) have no peak to score
    assert 0 < loc["n"] <= 9 and loc["chance"] >= loc["chance_strict"] > 0
    assert loc["layer"] == "layer3" and loc["target"] == "true class" and loc["image_size"] == 32
    assert loc["tolerance_px"] == 2 and len(loc["pointing_game_ci"]) == 2
    assert set(loc["per_class"]) <= {"COVID", "Lung_Opacity", "Viral Pneumonia"}


def test_notebook_3_draws_its_figures(ran):
    for f in ("confusion_matrices/resnet18_test.png",
              "confusion_matrices/resnet18_train_normalized.png", "grad_cam/comparison.png",
              "roc/resnet18.png", "grad_cam/outside_lungs.png", "calibration/resnet18.png"):
        assert (ran / f).is_file(), f


def test_notebook_3_shortcut_audit_equals_a_recomputation(again, demo_dir):
    """Every test image has a lung mask; the audit's accuracies are the model's."""
    r, test = again["r"], again["test"]
    lung_audit = r["lung_audit"]
    assert lung_audit["as_is"]["n"] == len(test) and lung_audit["dilation_px"] == 1  # 3% of 32 px
    assert lung_audit["as_is"]["accuracy"] == pytest.approx(r["test"]["accuracy"])
    lungs = utils.eval_loader(test, demo_dir, again["meta"]["class_names"], 32, num_workers=0,
                              mask_column="mask_path")
    recomputed = audit.lung_reliance(again["model"], lungs, torch.device("cpu"),
                                     again["meta"]["class_names"], 1)
    for v in audit.LUNG_VIEWS:
        assert lung_audit[v]["accuracy"] == pytest.approx(recomputed[v]["accuracy"]), v
    assert lung_audit["chance"] == 0.25
    assert lung_audit["reads_outside_lungs"] == recomputed["reads_outside_lungs"]
    cam = lung_audit["cam"]
    assert 0 < cam["n"] <= len(test) and 0 < cam["energy_chance"] < 1
    assert cam["peaks_outside_chance"] == pytest.approx(1 - cam["energy_chance"])


def test_notebook_3_calibration_uses_the_temperature_notebook_2_stored(again):
    cal, meta = again["r"]["calibration"], again["meta"]
    assert cal["temperature"] == meta["temperature"] > 0 and cal["validation"]["fitted_on"] == "val"
    scaled = metrics.apply_temperature(again["prob"], meta["temperature"])
    assert cal["test"]["ece_after"] == pytest.approx(
        metrics.expected_calibration_error(again["y"], scaled))
    assert cal["test"]["nll_before"] == pytest.approx(
        metrics.negative_log_likelihood(again["y"], again["prob"]))


def test_notebook_3_accuracy_by_source(again):
    """The demo writes Kaggle-style metadata, so there is a source column."""
    by_source = again["r"]["by_source"]
    assert sum(v["n"] for v in by_source.values()) == len(again["test"])
    assert all(k.startswith("https://demo.invalid/site-") for k in by_source)


def test_same_seed_trains_the_same_model_in_a_new_kernel(ran, run_dir, demo_dir):
    """Each papermill run is a fresh process whose torch generator starts from a random seed;
    notebook 2 seeds before building each model, so a second run in a new kernel gives the
    first run's (``ran``'s) weights and history."""
    import pandas as pd
    import torch

    runs = {"first": (run_dir / "models", run_dir / "outputs"),
            "again": (run_dir / "models_again", run_dir / "out_again")}
    models, out = runs["again"]
    _run("2_finetune_models.ipynb", run_dir, demo_dir, models_dir=str(models), out_dir=str(out),
         **NB2)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    a, b = (pd.read_csv(out / "CSVs" / "resnet18.csv")[cols] for _, out in runs.values())
    pd.testing.assert_frame_equal(a, b)
    wa, wb = (torch.load(models / "resnet18_last.pt", weights_only=True)["model_state"]
              for models, _ in runs.values())
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_report_opens_in_a_browser_with_every_image_and_the_numbers(ran, run_dir):
    """outputs/report.html from the notebook run above, opened in headless Chromium."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed "
                                   "(pip install -r requirements-test.txt)")
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (.ci/run does)")
    out = run_dir / "outputs"
    page_file = out / "report.html"
    assert page_file.is_file(), "notebook 3 did not write report.html"
    assert page_file.stat().st_size < 8e6
    m = json.loads((out / "metrics.json").read_text())
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
        comparison = page.inner_text("#comparison-table")
        per_class = page.inner_text("#per-class-resnet18")
        audit = page.inner_text("#audit-resnet18")
        calibration = page.inner_text("#calibration-resnet18")
        by_source = page.inner_text("#by-source-resnet18")
        banner = page.locator("#synthetic-banner").count()
        page.screenshot(path=str(run_dir / "report.png"), full_page=False)
        browser.close()
    assert not errors, errors
    assert len(images) >= 10, images  # data figures, curves, matrices, ROC, reliability, Grad-CAMs
    assert all(done and width > 0 for _, done, width in images), images
    t = m["archs"]["resnet18"]["test"]
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        assert f"{t[k]:.3f} [{t[k + '_ci'][0]:.3f}, {t[k + '_ci'][1]:.3f}]" in comparison, k
    covid = t["per_class"]["COVID"]
    assert f"{covid['recall']:.3f} [{covid['recall_lo']:.3f}, {covid['recall_hi']:.3f}]" in per_class
    assert banner == 1 and (run_dir / "report.png").stat().st_size > 10_000
    removed = m["archs"]["resnet18"]["lung_audit"]["lungs_removed"]
    assert f"{removed['accuracy']:.3f} [{removed['accuracy_ci'][0]:.3f}" in audit
    assert f"{m['archs']['resnet18']['calibration']['temperature']:.3g}" in calibration
    site, r = sorted(m["archs"]["resnet18"]["by_source"].items())[0]
    assert site in by_source and f"{r['accuracy']:.3f} [{r['accuracy_lo']:.3f}" in by_source
