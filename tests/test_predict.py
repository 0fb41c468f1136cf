"""predict.py: every input kind, probabilities equal to inference.predict_loader, the ensemble, CAM
pictures, clear errors, and the real X-rays in ../shared/realcxr."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import networks
import predict
import files
import utils
from conftest import REALCXR
from test_bad_inputs import make_corpus
import checkpoints
import inference

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def _checkpoint(path, seed, classes=CLASSES, size=32):
    torch.manual_seed(seed)
    model = networks.build_model("resnet18", len(classes), weights=None)
    checkpoints.save_checkpoint(path, model, arch="resnet18", class_names=list(classes),
                                image_size=size, epoch=1, val_loss=1.0, val_acc=0.5, seed=seed)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    yield str(_checkpoint(d / "a.pt", 0)), str(_checkpoint(d / "b.pt", 1, size=40))
    shutil.rmtree(d, ignore_errors=True)


def _run(args, tmp_path):
    out = tmp_path / "pred"
    rc = predict.main([*map(str, args), "--out", str(out), "--batch-size", "4"])
    csv = out / "predictions.csv"
    return rc, (pd.read_csv(csv, keep_default_na=False) if csv.is_file() else None), out


@pytest.mark.filterwarnings("ignore:.*CAMs are constant")  # untrained models: flat maps happen
def test_every_input_kind_gets_a_row_and_broken_files_their_reason(models, tmp_path, capsys):
    root = tmp_path / "corpus"
    valid, broken = make_corpus(root)
    rc, df, out = _run([models[0], root], tmp_path)
    assert rc == 0
    by_path = df.set_index("path")
    # every file with an image extension below the folder is a row; the folder named x.png and
    # the dangling link are found by the extension too
    for rel in valid:
        assert by_path.loc[str(root / rel), "status"] == "ok", rel
    for rel in broken:
        assert str(root / rel) in by_path.index, rel
        status = by_path.loc[str(root / rel), "status"]
        assert status != "ok" and str(root / rel) in status, (rel, status)
    ok = df[df["status"] == "ok"]
    probs = ok[[f"a_{c}" for c in CLASSES]].to_numpy(float)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert (ok["predicted"] == [CLASSES[i] for i in probs.argmax(1)]).all()
    assert (df.loc[df["status"] != "ok", "predicted"] == "").all()
    # one picture per readable image, none for the others
    pngs = sorted((out / "cams").glob("*.png"))
    assert len(pngs) == len(valid) and (ok["cam"] != "").all()
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGB" and im.size[0] == 2 * 256 and im.size[1] > 256
    assert "not read:" in capsys.readouterr().out


def test_probabilities_equal_utils_predict_and_the_ensemble_is_their_mean(
        models, demo_dir, demo_manifest, tmp_path):
    manifest = tmp_path / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    rc, df, _ = _run([models[0], models[1], manifest, "--split", "test", "--data-dir", demo_dir,
                      "--cam", "none"], tmp_path)
    assert rc == 0
    test = demo_manifest[demo_manifest["split"] == "test"]
    assert df["path"].tolist() == test["path"].tolist()
    assert df["label"].tolist() == test["label"].tolist()
    for name, ckpt in zip("ab", models):
        model, meta = checkpoints.load_checkpoint(ckpt)
        loader = utils.eval_loader(test, demo_dir, CLASSES, meta["image_size"], 64, 0)
        _, ref, idx = inference.predict_loader(model, loader, torch.device("cpu"))
        got = df[[f"{name}_{c}" for c in CLASSES]].to_numpy(float)[idx]
        np.testing.assert_allclose(got, ref, atol=1e-5)
    ens = df[[f"ensemble_{c}" for c in CLASSES]].to_numpy(float)
    mean = (df[[f"a_{c}" for c in CLASSES]].to_numpy(float)
            + df[[f"b_{c}" for c in CLASSES]].to_numpy(float)) / 2
    np.testing.assert_allclose(ens, mean, atol=1e-12)
    assert (df["predicted"] == [CLASSES[i] for i in ens.argmax(1)]).all()
    np.testing.assert_allclose(df["probability"], ens.max(1))
    assert (df["cam"] == "").all()


@pytest.mark.filterwarnings("ignore:.*CAMs are constant")  # untrained models: flat maps happen
def test_one_cam_picture_per_image_with_every_model(models, demo_dir, demo_manifest, tmp_path):
    rows = demo_manifest[demo_manifest["split"] == "test"].head(3)
    files = [str(demo_dir / p) for p in rows["path"]]
    loaded = checkpoints.load_models(list(models), torch.device("cpu"))
    table = predict.collect_inputs(files)
    res = predict.predict_files(loaded, table, torch.device("cpu"), tmp_path, "hirescam",
                                batch_size=2, progress=False)
    pngs = sorted((tmp_path / "cams").glob("*.png"))
    assert [r.status for r in res] == ["ok"] * 3 and len(pngs) == 3
    assert [r.cam for r in res] == [str(p) for p in pngs]
    with Image.open(pngs[0]) as im:
        assert im.size[0] == 3 * 256          # the radiograph + one map per model


def test_wrong_model_files_exit_2_naming_the_file(models, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(img)
    junk = tmp_path / "notes.pt"
    junk.write_text("not a checkpoint")
    rc, df, _ = _run([junk, img], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and df is None and str(junk) in err and "not a model checkpoint" in err
    state_only = tmp_path / "weights.pth"
    torch.save(networks.build_model("resnet18", 4, weights=None).state_dict(), state_only)
    assert _run([state_only, img], tmp_path)[0] == 2
    assert str(state_only) in capsys.readouterr().err
    other = _checkpoint(tmp_path / "three.pt", 0, classes=["COVID", "Normal", "Other"])
    assert _run([models[0], other, img], tmp_path)[0] == 2
    err = capsys.readouterr().err
    assert str(other) in err and "one class list" in err
    assert _run([tmp_path / "missing.pt", img], tmp_path)[0] == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        predict.main([str(img)])
    assert e.value.code == 2


def test_nothing_readable_exits_1(models, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("404")
    rc, df, _ = _run([models[0], bad], tmp_path)
    assert rc == 1 and len(df) == 1 and df["status"].iat[0] != "ok"
    assert _run([models[0], tmp_path / "nothing-here"], tmp_path)[0] == 2


@pytest.mark.slow
@pytest.mark.skipif(not REALCXR.is_dir(), reason="../shared/realcxr not present")
def test_every_real_xray_gets_a_row(models, tmp_path):
    rc, df, _ = _run([models[0], REALCXR, "--cam", "none"], tmp_path)
    assert rc == 0
    images = [p for p in REALCXR.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".dcm")]
    assert len(df) == len(images) >= 470
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "status"].tolist()


def test_resumable_states_beside_their_best_checkpoint_are_skipped(models, tmp_path, capsys):
    import shutil
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(models[0], d / "resnet18.pt")
    shutil.copy(models[1], d / "resnet18_last.pt")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(img)
    rc, df, _ = _run([d / "resnet18.pt", d / "resnet18_last.pt", img, "--cam", "none"], tmp_path)
    assert rc == 0 and "skipping" in capsys.readouterr().out
    assert "resnet18_COVID" in df.columns and not any("last" in c for c in df.columns)
