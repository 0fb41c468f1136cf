"""The study's recipe is the default on real data; the demo's random init is opt-in ("auto")."""

import json
import subprocess

import networks
import training
from conftest import ROOT


def _parameters(notebook: str) -> dict:
    nb = json.loads((ROOT / notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    ns: dict = {}
    exec("".join(cell["source"]), ns)  # the cell holds plain assignments only
    return ns


def _make_dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", "notebooks", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_notebook_defaults_are_the_study():
    p = _parameters("2_finetune_models.ipynb")
    assert p["weights"] == "imagenet" and p["lr"] is None and p["image_size"] == 224
    w = networks.resolve_weights("vgg16", p["weights"])
    assert w == "imagenet"  # never silently random init
    cfg = training.TrainConfig(weights=str(w), lr=p["lr"])
    assert cfg.resolved_lr("vgg16") == 3e-5 == training.LR_PRETRAINED
    q = _parameters("3_evaluate_results.ipynb")
    assert q["cam_layers"] is None  # the study's layer: each model's last convolutional block
    assert abs(q["pointing_margin"] * 299 - 15) < 1e-9


def test_make_passes_auto_for_the_demo_only():
    demo = _make_dry_run()
    real = _make_dry_run("DATA=/some/COVID-19_Radiography_Dataset")
    nb2 = [line for line in demo.splitlines() if "2_finetune_models" in line]
    assert nb2 and "-p weights auto" in nb2[0]
    nb2_real = [line for line in real.splitlines() if "2_finetune_models" in line]
    assert nb2_real and "weights" not in nb2_real[0] and "image_size" not in nb2_real[0]
    assert "cam_layers" not in real
    assert "-p seed 42" in nb2_real[0] and "-p seed 7" in _make_dry_run("SEED=7")
