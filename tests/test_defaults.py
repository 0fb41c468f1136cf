"""One source for a profile: the study's recipe is the default on real data, the demo's on the
synthetic demo; notebooks 2 and 3, train.py, evaluate.py and the Makefile read the same files,
and every setting can be overridden from each."""

import argparse
import dataclasses
import json
import shutil
import socket
import subprocess

import pytest

import config
import evaluate
import evaluation
import networks
import train
import training
from conftest import ROOT


def _cell(notebook: str, tag: str | None = "parameters", index: int | None = None) -> str:
    nb = json.loads((ROOT / notebook).read_text())
    if index is not None:
        return "".join(nb["cells"][index]["source"])
    cell = next(c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", []))
    return "".join(cell["source"])


def _parameters(notebook: str) -> dict:
    ns: dict = {}
    exec(_cell(notebook), ns)  # the cell holds plain assignments only
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def _make_dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_the_study_is_the_default_on_real_data(tmp_path):
    settings, prof = config.train_settings(None, tmp_path)  # not the synthetic demo
    assert prof["name"] == "study" and list(settings) == ["vgg16", "resnet18", "densenet121"]
    cfg, weights = settings["vgg16"]
    assert weights == "imagenet" == networks.resolve_weights("vgg16", weights)  # never random
    assert (cfg.image_size, cfg.batch_size, cfg.epochs, cfg.patience) == (224, 32, 25, 5)
    assert cfg.lr is None and dataclasses.replace(cfg, weights="imagenet").resolved_lr(
        "vgg16") == 3e-5 == training.LR_PRETRAINED
    archs, ecfg, _ = config.eval_settings(None, tmp_path)
    assert ecfg.cam_layers is None  # the study's layer: each model's last convolutional block
    assert abs(ecfg.pointing_margin * 299 - 15) < 1e-9
    assert config.split_args("study") == ["--val", "60", "--test", "60"]


def test_the_demo_profile_is_the_default_on_the_demo(demo_dir):
    settings, prof = config.train_settings(None, demo_dir)
    assert prof["name"] == "demo-cpu"
    want = {"vgg16": (96, 16, 16, "cosine", 2, True, "balanced"),
            "resnet18": (160, 8, 3, "cosine", 0, False, None),
            "densenet121": (128, 6, 3, "cosine", 0, True, None)}
    for arch, (cfg, weights) in settings.items():
        assert weights == "auto" and cfg.batch_size == 16 and cfg.max_per_class == 150
        assert (cfg.image_size, cfg.epochs, cfg.patience, cfg.schedule, cfg.warmup_epochs,
                cfg.augment, cfg.class_weight) == want[arch], arch
    _, ecfg, _ = config.eval_settings(None, demo_dir)
    assert {a: ecfg.cam_layers[a] for a in settings} == {
        "vgg16": "features.22", "resnet18": "layer3", "densenet121": "features.denseblock3"}
    assert config.split_args("demo-cpu") == ["--val", "30", "--test", "30"]


def test_explicit_values_override_the_profile_and_mistakes_are_named(demo_dir, tmp_path):
    settings, _ = config.train_settings("demo-cpu", demo_dir, ["resnet18"], epochs=2,
                                        image_size={"resnet18": 32}, augment=None, amp=False)
    cfg, _ = settings["resnet18"]
    assert (cfg.epochs, cfg.image_size, cfg.augment, cfg.amp) == (2, 32, False, False)
    with pytest.raises(ValueError, match="unknown setting 'epoch' .*did you mean 'epochs'"):
        config.train_settings("demo-cpu", demo_dir, epoch=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 8\n")
    with pytest.raises(ValueError, match="bad.yaml: train: unknown setting 'batchsize'"):
        config.load_profile(bad)
    with pytest.raises(FileNotFoundError, match="demo-cpu, study"):
        config.load_profile("nope")
    with pytest.raises(ValueError, match=r"demo-cpu.yaml: no image_size, epochs, .* for "
                                         r"'mobilenet_v3_small' .*add mobilenet_v3_small"):
        config.train_settings("demo-cpu", demo_dir, ["mobilenet_v3_small"])
    settings, _ = config.train_settings("study", demo_dir, ["mobilenet_v3_small"])
    assert settings["mobilenet_v3_small"][0].image_size == 224  # plain values fit any arch


def test_the_notebooks_name_every_setting_and_pass_them_on_by_field():
    """papermill can only set a variable the parameter cell names: notebook 2's cell names
    every TrainConfig field (None: the profile's), notebook 3's every EvalConfig field, and both
    hand them on with config.given, not one keyword each."""
    train_fields = {f.name for f in dataclasses.fields(config.TrainConfig)}
    p2 = _parameters("2_finetune_models.ipynb")
    assert train_fields <= set(p2)
    assert all(p2[f] is None for f in train_fields - {"seed"}) and p2["seed"] == 42
    assert p2["profile"] is None and p2["archs"] is None and p2["cache_dir"] is None
    assert "**config.given(globals(), config.TrainConfig)" in _cell("2_finetune_models.ipynb",
                                                                     index=2)
    p3 = _parameters("3_evaluate_results.ipynb")
    eval_fields = {f.name for f in dataclasses.fields(config.EvalConfig)}
    assert eval_fields <= set(p3) and all(p3[f] is None for f in eval_fields - {"seed"})
    assert "**config.given(globals(), config.EvalConfig)" in _cell("3_evaluate_results.ipynb",
                                                                    index=2)
    assert training.TrainConfig is config.TrainConfig and evaluation.EvalConfig is config.EvalConfig


def test_the_cli_flags_are_made_from_the_fields(demo_dir, capsys):
    """Every field has a flag whose help is the field's; unset flags are None (the profile's);
    per-architecture values, --no-X and the older spellings parse into the fields."""
    a = train.parse_args(["--data-dir", "d", "--manifest", "m"])
    assert config.given(a, config.TrainConfig) == {f.name: None for f in
                                                   dataclasses.fields(config.TrainConfig)}
    a = train.parse_args(["--data-dir", str(demo_dir), "--manifest", "m", "--image-size",
                          "vgg16=96,resnet18=64", "--no-amp", "--augment", "resnet18=off",
                          "--epochs", "3", "--compile", "--max-per-class", "20", "--lr", "1e-4",
                          "--dropout", "vgg16=0", "--out-dir", "o"])
    given = {k: v for k, v in config.given(a, config.TrainConfig).items() if v is not None}
    assert given == {"image_size": {"vgg16": 96, "resnet18": 64}, "amp": False,
                     "augment": {"resnet18": False}, "epochs": 3, "compile": True,
                     "max_per_class": 20, "lr": 1e-4, "dropout": {"vgg16": 0.0}}
    assert a.out == "o"  # --out-dir: the old spelling of --out
    settings, _ = train.settings_for(train.parse_args(
        ["--data-dir", str(demo_dir), "--manifest", "m", "--archs", "resnet18", "--no-augment",
         "--epochs", "2"]))
    cfg, _ = settings["resnet18"]
    assert (cfg.augment, cfg.epochs, cfg.image_size) == (False, 2, 160)  # the rest: the profile's
    settings, _ = train.settings_for(train.parse_args(
        ["--data-dir", str(demo_dir), "--manifest", "m", "--archs", "vgg16", "--dropout", "0"]))
    assert settings["vgg16"][0].dropout == 0.0  # unset (None) otherwise: the family's own 0.5
    with pytest.raises(SystemExit):
        train.parse_args(["--data-dir", "d", "--manifest", "m", "--augment", "vgg17=on"])
    assert "vgg17" in capsys.readouterr().err
    e = evaluate.parse_args(["m.pt", "--data-dir", "d"])
    assert config.given(e, config.EvalConfig) == {f.name: None for f in
                                                  dataclasses.fields(config.EvalConfig)}
    e = evaluate.parse_args(["m.pt", "--data-dir", "d", "--cam", "hirescam", "--cam-layer",
                             "resnet18=layer3,vgg16=features.22", "--n-boot", "10"])
    assert (e.cam_method, e.cam_layers, e.n_boot) == (
        "hirescam", {"resnet18": "layer3", "vgg16": "features.22"}, 10)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["m.pt", "--data-dir", "d", "--cam", "gradcam+++"])
    assert "expected one of gradcam" in capsys.readouterr().err
    help_text = argparse.ArgumentParser()
    config.add_flags(help_text, config.TrainConfig)
    text = " ".join(help_text.format_help().split())
    for f in dataclasses.fields(config.TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text
        assert " ".join(f.metadata["help"].split()[:4]) in text, f.name


def test_one_cache_folder_and_one_rule_for_it():
    assert config.cache_folder(None) == config.CACHE_DIR == config.EvalConfig().cache_dir
    assert config.cache_folder("none") is None and config.cache_folder("NONE") is None
    assert config.cache_folder("x/y") == "x/y"
    assert config.EvalConfig(cache_dir="none").cache_dir is None
    assert train.parse_args(["--data-dir", "d", "--manifest", "m"]).cache_dir is None


def test_make_passes_the_profile_and_reads_its_split_from_it():
    demo, real = _make_dry_run(), _make_dry_run("DATA=/some/COVID-19_Radiography_Dataset")
    nb2 = [line for line in demo.splitlines() if "2_finetune_models" in line]
    assert nb2 and "-p profile demo-cpu" in nb2[0] and "weights" not in nb2[0]
    nb2_real = [line for line in real.splitlines() if "2_finetune_models" in line]
    assert nb2_real and "-p profile study" in nb2_real[0] and "image_size" not in nb2_real[0]
    assert "config.py demo-cpu --split-args" in demo and "config.py study --split-args" in real
    assert "-p seed 42" in nb2_real[0] and "-p seed 7" in _make_dry_run("SEED=7")
    assert subprocess.run([str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists()
                           else "python3", "config.py", "demo-cpu", "--split-args"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() == "--val 30 --test 30"


def _online() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_notebook_2_with_no_settings_on_real_data_runs_the_study(demo_dir, demo_manifest,
                                                                tmp_path, monkeypatch):
    """What a user meets opening notebook 2 on a non-demo folder: the study's recipe, which
    wants ImageNet weights; offline, it stops at once saying which file to put where."""
    if _online():
        pytest.skip("online: the study profile would download ImageNet weights")
    import papermill as pm
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty weights cache
    real = tmp_path / "real"
    shutil.copytree(demo_dir, real)
    (real / "demo_dataset.json").unlink()  # no longer the synthetic demo
    manifest = tmp_path / "manifest.csv"
    demo_manifest.to_csv(manifest, index=False)
    with pytest.raises(pm.PapermillExecutionError, match="ImageNet weights for vgg16 are not in "
                                                         "the cache"):
        pm.execute_notebook(str(ROOT / "2_finetune_models.ipynb"), str(tmp_path / "nb2.ipynb"),
                            parameters={"data_dir": str(real), "manifest_path": str(manifest),
                                        "out_dir": str(tmp_path / "out"),
                                        "models_dir": str(tmp_path / "models")},
                            cwd=str(ROOT), kernel_name="python3", progress_bar=False)
    out = json.loads((tmp_path / "nb2.ipynb").read_text())
    shown = "".join("".join(o.get("text", "")) for c in out["cells"] for o in c.get("outputs", []))
    assert "profile study" in shown


def test_every_module_is_under_the_warnings_rule(pytestconfig):
    import warnings

    from conftest import project_modules
    rule = next(f for f in pytestconfig.getini("filterwarnings") if f.startswith("error:::("))
    assert rule[len("error:::("):-2].split("|") == project_modules()
    assert {"app", "config", "exploration", "external", "image_cache", "phantoms"} \
        <= set(project_modules())
    import config  # a warning raised from a project module fails a test
    with pytest.raises(UserWarning, match="from config"):
        warnings.warn_explicit("from config", UserWarning, config.__file__, 1,
                               module="config")
