"""The five modern families through notebooks 2 and 3 (papermill) on the tiny demo set."""

import json

import pandas as pd
import pytest

from notebook_runs import run as _run, run_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # notebooks in new kernels: `make test-quick` leaves them out


MODERN = ["convnext_tiny", "efficientnet_b0", "regnet_y_400mf", "vit_b_16", "swin_t"]


@pytest.mark.filterwarnings("ignore:.*CAMs are constant")
def test_modern_families_train_for_an_epoch_and_are_evaluated_in_the_notebooks(run_dir, demo_dir):
    """Notebook 2 trains the five families for an epoch on tiny data (their settings from the
    demo profile, the size and epochs overridden), notebook 3 scores and explains them as it does
    the study's three: metrics, Grad-CAM at each family's default layer, the audit, calibration."""
    out = run_dir / "modern"
    models = str(run_dir / "models_modern")
    _run("2_finetune_models.ipynb", run_dir, demo_dir, archs=MODERN, image_size=32, epochs=1,
         batch_size=8, num_workers=0, models_dir=models, weights="none", out_dir=str(out))
    _run("3_evaluate_results.ipynb", run_dir, demo_dir, archs=MODERN, num_workers=0,
         models_dir=models, n_boot=20, cam_per_class=1, cam_layers={}, out_dir=str(out))
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["archs"]) == MODERN
    layers = {"convnext_tiny": "features.7", "efficientnet_b0": "features.8",
              "regnet_y_400mf": "trunk_output", "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
              "swin_t": "permute"}
    for arch, r in m["archs"].items():
        assert r["test"]["n"] == 12 and 0 <= r["test"]["accuracy"] <= 1
        assert r["lung_audit"]["layer"] == layers[arch] and r["lung_audit"]["as_is"]["n"] == 12
        assert r["calibration"]["temperature"] > 0
        assert (out / "calibration" / f"{arch}.png").is_file()
    assert (out / "grad_cam" / "comparison.png").is_file()
    summary = pd.read_csv(out / "CSVs" / "training_summary.csv")
    assert summary.set_index("arch").loc["vit_b_16", "parameters"] > 80e6
