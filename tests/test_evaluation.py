"""evaluation.py and evaluate.py: the internal split (copied data evaluates, a re-split is
refused, the CLI equals the module), an external set of every input kind (class map, skipped
folders, unreadable files, training duplicates), exit codes, read-only checkpoints, the report."""

import json
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import checkpoints
import evaluate
import evaluation
import external
import files
import image_cache
import metrics
import near_duplicates
import report
import runtime
import split_dataset
import tables
import training
from conftest import tree_digest
from test_bad_inputs import make_corpus

CPU = torch.device("cpu")
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
# untrained-ish models give flat maps now and then; the evaluation says so and goes on
pytestmark = pytest.mark.filterwarnings("ignore:.*CAMs are constant")


def _cfg(tmp_path, **kw):
    return evaluation.EvalConfig(batch_size=16, num_workers=0, n_boot=50, seed=0,
                                 cam_layers={"resnet18": "layer3"},
                                 cache_dir=str(tmp_path / "cache"), **kw)


def _same(a, b) -> bool:
    """Equal as JSON stores them (NaN, e.g. an absent class's AUC, equals NaN)."""
    return json.dumps(a, sort_keys=True, default=float) == json.dumps(b, sort_keys=True,
                                                                       default=float)


def _cli(*args) -> int:
    return evaluate.main([*map(str, args), "--num-workers", "0", "--n-boot", "50",
                          "--cam-layer", "resnet18=layer3"])


# --------------------------------------------------------------------------- what is recorded
def test_checkpoint_records_the_training_images_by_content(trained, demo_dir, demo_manifest):
    meta = torch.load(trained, weights_only=True)["meta"]
    rec = meta["trained_on"]
    dev = demo_manifest[demo_manifest["split"].isin(["train", "val"])]
    assert sorted(rec["path"]) == sorted(dev["path"]) and set(rec["split"]) == {"train", "val"}
    for p, d in zip(rec["path"][:5], rec["sha256"][:5]):   # what sha256sum would print
        assert d == files.file_sha256(demo_dir / p)
    assert meta["data"] == image_cache.split_fingerprint(
        demo_manifest, image_cache.content_digests(demo_manifest, demo_dir))


def test_digest_cache_rehashes_only_what_changed(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.bin" for i in range(4)]
    for i, f in enumerate(paths):
        f.write_bytes(bytes([i]) * 1000)
    cache = tmp_path / "c" / "digests.json"
    first = files.file_digests(paths, cache)
    assert first == [files.file_sha256(f) for f in paths] and cache.is_file()
    read = []
    real = files._digest_or_empty
    monkeypatch.setattr(files, "_digest_or_empty", lambda p: read.append(p) or real(p))
    assert files.file_digests(paths, cache) == first and read == []
    paths[2].write_bytes(b"changed")                     # another size: read again
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: read again
    again = files.file_digests([*paths, tmp_path / "missing.bin"], cache)
    assert sorted(read) == sorted(str(f) for f in paths[1:3])
    assert again[:2] == first[:2] and again[2] != first[2] and again[4] == ""


@pytest.mark.slow
# --------------------------------------------------------------------------- the internal split
def test_a_copy_with_new_mtimes_evaluates_and_a_resplit_is_refused(trained, demo_dir,
                                                                  demo_manifest, tmp_path):
    models = checkpoints.load_models([trained], CPU)
    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy, copy_function=shutil.copy)  # new mtimes, same bytes
    later = time.time_ns() + 3600 * 10**9
    for f in copy.rglob("*.png"):
        os.utime(f, ns=(later, later))
    a = evaluation.evaluate_split(models, demo_manifest, demo_dir, _cfg(tmp_path), CPU)
    b = evaluation.evaluate_split(models, demo_manifest, copy, _cfg(tmp_path), CPU)
    assert _same(a.metrics["archs"], b.metrics["archs"])
    other = split_dataset.make_split(demo_dir, val=3, test=3, seed=99, workers=1)
    with pytest.raises(ValueError, match=r"resnet18 was trained on \d+ of these 12 images"):
        evaluation.evaluate_split(models, other, copy, _cfg(tmp_path), CPU)
    renamed = demo_manifest.assign(label=demo_manifest["label"].str.upper())
    with pytest.raises(ValueError, match="trained on classes"):
        evaluation.check_split(models, renamed, demo_dir)


@pytest.mark.slow
def test_evaluate_py_with_a_manifest_writes_what_the_module_computes(trained, demo_dir,
                                                                    demo_manifest, tmp_path):
    manifest = tmp_path / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    before = tree_digest(trained.parent)
    assert _cli(trained, "--data-dir", demo_dir, "--manifest", manifest, "--out",
                tmp_path / "out", "--seed", 0, "--cache-dir", tmp_path / "cache") == 0
    assert tree_digest(trained.parent) == before                # checkpoints untouched
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    ev = evaluation.evaluate_split(checkpoints.load_models([trained], CPU), demo_manifest,
                                   demo_dir, _cfg(tmp_path), CPU)
    files.write_json_atomic(ev.metrics, tmp_path / "module.json")    # NaN stored as null
    want = json.loads((tmp_path / "module.json").read_text())
    for k in ("archs", "models", "class_names", "dataset", "convention"):
        assert m[k] == want[k], k
    # the numeric path the model trained with and why, from its checkpoint (the fixture keeps
    # amp on: bf16 where this CPU has native bf16 and the probe found it faster, else fp32)
    meta = checkpoints.read_meta(trained)
    assert m["models"]["resnet18"]["numeric_path"] == meta["numeric_path"] in ("bf16", "fp32")
    assert m["models"]["resnet18"]["numeric_path_reason"] == meta["numeric_path_reason"]
    assert ("timed step" in meta["numeric_path_reason"]) == runtime.cpu_bf16_supported()
    for f in ("confusion_matrices/resnet18_test.png", "roc/resnet18.png", "report.html",
              "calibration/resnet18.png", "grad_cam/comparison.png", "grad_cam/outside_lungs.png"):
        assert (tmp_path / "out" / f).is_file(), f
    # a re-split: exit 2, nothing written
    other = tmp_path / "other.csv"
    files.write_csv_atomic(split_dataset.make_split(demo_dir, val=3, test=3, seed=99,
                                                    workers=1), other)
    assert _cli(trained, "--data-dir", demo_dir, "--manifest", other, "--out",
                tmp_path / "other") == 2
    assert not (tmp_path / "other" / "metrics.json").exists()


def test_without_a_temperature_the_model_is_scored_uncalibrated(trained, demo_dir, demo_manifest,
                                                               tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["meta"] = {k: v for k, v in ckpt["meta"].items() if k not in ("temperature",
                                                                        "calibration")}
    bare = tmp_path / "resnet18.pt"
    torch.save(ckpt, bare)
    before = files.file_sha256(bare)
    ev = evaluation.evaluate_split(checkpoints.load_models([bare], CPU), demo_manifest, demo_dir,
                                   _cfg(tmp_path), CPU)
    cal = ev.metrics["archs"]["resnet18"]["calibration"]
    assert cal["temperature"] is None and "uncalibrated" in cal["note"]
    assert cal["test"]["ece_after"] is None and cal["test"]["ece_before"] >= 0
    assert files.file_sha256(bare) == before and "temperature" not in torch.load(
        bare, weights_only=True)["meta"]
    assert tables.calibration(ev.metrics["archs"]).loc["resnet18", "T (fitted on val)"] == \
        "none (uncalibrated)"
    # the report of such a run says so too
    report.save_metrics(ev.metrics, tmp_path / "out")
    html = report.build_report(tmp_path / "out").read_text()
    assert "none (uncalibrated)" in html and "scored uncalibrated" in html


# --------------------------------------------------------------------------- an external set
def test_folders_map_onto_classes_loosely_or_by_the_class_map():
    folders = {"normal": 5, "LUNG OPACITY": 3, "covid-19 positive": 2, "Effusion": 4}
    mapped, skipped = external.map_folders(folders, CLASSES, {"covid-19 positive": "covid"})
    assert mapped == {"covid-19 positive": "COVID", "normal": "Normal",
                      "LUNG OPACITY": "Lung_Opacity"}
    assert skipped == {"Effusion": 4}
    with pytest.raises(ValueError, match=r"no class 'Tuberculosis'.*valid: COVID, Lung_Opacity"):
        external.map_folders(folders, CLASSES, {"Effusion": "Tuberculosis"})
    with pytest.raises(ValueError, match=r"no class folder 'Pneumonia'.*Effusion, LUNG OPACITY"):
        external.map_folders(folders, CLASSES, {"Pneumonia": "Viral Pneumonia"})


def _external_set(root, demo_dir, demo_manifest):
    """Flat class folders of every image kind (PNG 8/16-bit, TIFF, BMP, JPEG, DICOM) and broken
    files; the COVID folder under another name; a folder of a class the models do not know; a
    byte-identical copy of a training image. Returns (readable images per class, the copy)."""
    valid, broken = make_corpus(root)
    (root / "COVID").rename(root / "covid-19 positive")
    (root / "Effusion").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40), 60 * i, np.uint8)).save(root / "Effusion" / f"e{i}.png")
    (root / "Normal" / "notes.txt").write_text("not an image")
    train = demo_manifest[(demo_manifest["split"] == "train")
                          & (demo_manifest["label"] == "Normal")].iloc[0]
    shutil.copy(demo_dir / train["path"], root / "Normal" / "from_training.png")
    counts = pd.Series([v.split("/")[0] for v in valid]).value_counts().to_dict()
    return counts, train["path"]


@pytest.mark.slow
def test_evaluate_py_on_an_external_set_of_every_input_kind(trained, demo_dir, demo_manifest,
                                                            tmp_path, capsys):
    ext = tmp_path / "other hospital"
    counts, copied = _external_set(ext, demo_dir, demo_manifest)
    before_models, before_data = tree_digest(trained.parent), tree_digest(ext)
    out = tmp_path / "out"
    rc = _cli(trained, "--data-dir", ext, "--out", out, "--name", "site-X", "--cache-dir",
              tmp_path / "cache", "--class-map", "covid-19 positive=COVID")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert tree_digest(trained.parent) == before_models and tree_digest(ext) == before_data
    x = json.loads((out / "metrics.json").read_text())["external"]["site-X"]
    info = x["images"]
    assert info["class_map"] == {"covid-19 positive": "COVID", "Normal": "Normal"}
    assert info["skipped_folders"] == {"Effusion": 3}           # counted, never scored
    assert info["scored_by_class"] == {"COVID": counts["COVID"], "Normal": counts["Normal"]}
    assert [d["path"] for d in info["training_duplicates"]] == ["Normal/from_training.png"]
    assert info["training_duplicates"][0]["trained_path"] == copied
    not_read = dict(map(tuple, info["not_read"]))
    for name in ("empty.png", "truncated.png", "text.png", "bomb.png", "header_only.dcm",
                 "dangling.png", "folder.png"):
        assert any(p.endswith(name) for p in not_read), name
    assert any(p.endswith("notes.txt") for p in not_read)
    r = x["archs"]["resnet18"]
    assert r["external"]["n"] == info["scored"] == counts["COVID"] + counts["Normal"]
    assert r["localization"] is None and r["lung_audit"] is None  # flat folders: no masks
    assert "skipped folder Effusion: 3 images" in text and "Normal/from_training.png" in text
    html = (out / "report.html").read_text()
    assert "External validation: site-X" in html and "Effusion" in html
    assert (out / "external" / "site-X" / "confusion_matrices" / "resnet18_external.png").is_file()


@pytest.mark.slow
def test_external_results_sit_beside_the_internal_ones(trained, demo_dir, demo_manifest, tmp_path):
    """An external set in the folder of notebook 3's results: one metrics.json, one report,
    internal test and external side by side; the same images there give the same numbers."""
    manifest = tmp_path / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    out = tmp_path / "out"
    common = ("--seed", 0, "--cache-dir", tmp_path / "cache", "--out", out)
    assert _cli(trained, "--data-dir", demo_dir, "--manifest", manifest, *common) == 0
    # the test split's images as an external set (images/ + masks/ per class, as the demo's)
    ext = tmp_path / "ext"
    test = demo_manifest[demo_manifest["split"] == "test"]
    for col in ("path", "mask_path", "lesion_mask_path"):
        for rel in test[col][test[col] != ""]:
            (ext / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(demo_dir / rel, ext / rel)
    assert _cli(trained, "--data-dir", ext, "--name", "same", *common) == 0
    m = json.loads((out / "metrics.json").read_text())
    internal, external = m["archs"]["resnet18"], m["external"]["same"]["archs"]["resnet18"]
    for k in ("accuracy", "accuracy_ci", "macro_auc", "confusion_matrix"):
        assert external["external"][k] == internal["test"][k], k
    assert external["lung_audit"]["lungs_removed"] == internal["lung_audit"]["lungs_removed"]
    assert external["localization"]["pointing_game"] == internal["localization"]["pointing_game"]
    side = tables.internal_vs_external(m, "same")
    assert side.loc[("resnet18", "accuracy"), "internal test"] == \
        side.loc[("resnet18", "accuracy"), "external"]
    assert "ECE with T" in side.index.get_level_values(1)
    html = (out / "report.html").read_text()
    assert 'id="comparison-table"' in html and 'id="external-table-same"' in html
    # notebook 3 rerun for the same checkpoints keeps the external set
    assert _cli(trained, "--data-dir", demo_dir, "--manifest", manifest, *common) == 0
    assert "same" in json.loads((out / "metrics.json").read_text())["external"]


def test_exit_codes_name_what_is_wrong(trained, demo_dir, demo_manifest, tmp_path, capsys):
    ext = tmp_path / "ext"
    _external_set(ext, demo_dir, demo_manifest)
    out = ("--out", tmp_path / "out", "--cache-dir", "none")
    assert _cli(tmp_path / "missing.pt", "--data-dir", ext, *out) == 2
    assert "missing.pt not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert _cli(tmp_path / "junk.pt", "--data-dir", ext, *out) == 2
    assert "junk.pt: not a model checkpoint" in capsys.readouterr().err
    ckpt = torch.load(trained, weights_only=True)
    ckpt["meta"]["class_names"] = ["a", "b", "c", "d"]
    torch.save(ckpt, tmp_path / "other.pt")
    assert _cli(trained, tmp_path / "other.pt", "--data-dir", ext, *out) == 2
    assert "one class list" in capsys.readouterr().err
    assert _cli(trained, "--data-dir", ext, "--class-map", "Effusion=Tuberculosis", *out) == 2
    assert "no class 'Tuberculosis'" in capsys.readouterr().err
    assert _cli(trained, "--data-dir", ext, "--class-map", "Effusion", *out) == 2
    assert "expected FOLDER=CLASS" in capsys.readouterr().err
    # nothing maps: exit 2 saying how to map; nothing readable: exit 1
    odd = tmp_path / "odd"
    (odd / "Tuberculosis").mkdir(parents=True)
    shutil.copy(ext / "Normal" / "plain.png", odd / "Tuberculosis" / "a.png")
    assert _cli(trained, "--data-dir", odd, *out) == 2
    assert "--class-map FOLDER=CLASS" in capsys.readouterr().err
    (odd / "Normal").mkdir()
    (odd / "Normal" / "broken.png").write_bytes(b"\x89PNG broken")
    assert _cli(trained, "--data-dir", odd, *out) == 1
    assert "could be read" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_external_results_are_not_put_beside_another_checkpoints_internal_results():
    old = {"models": {"resnet18": {"epoch": 3}}, "archs": {"resnet18": {}}}
    new = {"models": {"resnet18": {"epoch": 4}}, "external": {"x": {}}}
    with pytest.raises(ValueError, match="internal results of other checkpoints"):
        report.merged_metrics(new, old)
    merged, note = report.merged_metrics({**new, "models": {"resnet18": {"epoch": 3}}}, old)
    assert merged["archs"] == {"resnet18": {}} and "x" in merged["external"] and note
    again, _ = report.merged_metrics({"models": {"resnet18": {"epoch": 4}}, "archs": {}},
                                     merged)
    assert "external" not in again  # a new internal run of other checkpoints drops stale sets


def test_summary_reuses_the_report_and_equals_a_fresh_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    p = rng.dirichlet(np.ones(4), 80)
    rep = metrics.classification_report(y, p, CLASSES, 200, 1)
    assert metrics.summary_metrics(y, p, CLASSES, 200, 1, report=rep) == \
        metrics.summary_metrics(y, p, CLASSES, 200, 1)


def test_rerunning_notebook_2s_step_on_a_trained_model_leaves_models_alone(trained, demo_dir,
                                                                         demo_manifest):
    """What notebook 2 run again with its defaults does after a run: nothing is retrained and the
    checkpoint (already calibrated) is not rewritten."""
    before = (trained.stat().st_mtime_ns, files.file_sha256(trained))
    cfg = training.TrainConfig(epochs=1, batch_size=8, image_size=32, num_workers=0, seed=0)
    _, history, _ = training.train_architecture(
        "resnet18", demo_manifest, demo_dir, cfg, CPU, weights=None, models_dir=trained.parent,
        out_dir=trained.parent.parent / "out", cache_dir=trained.parent.parent / "cache",
        progress=False)
    assert len(history) == 1
    assert (trained.stat().st_mtime_ns, files.file_sha256(trained)) == before


# --------------------------------------------------------------------------- near copies
def _plant_twin(meta: dict, seed: int) -> tuple[dict, np.ndarray, str]:
    """A meta whose first training image's fingerprint is a distinctive picture (phantoms are
    too alike for their altered copies to be told apart, docs/methods.md): returns (meta, the
    picture, the training path it stands for)."""
    import near_duplicates as nd
    from test_near_duplicates import _field
    pic = _field(seed)
    fps = meta["trained_on"]["fingerprints"]["images"].clone()
    fps[0] = torch.from_numpy(nd.fingerprint(pic))
    rec = {**meta["trained_on"], "fingerprints": {**meta["trained_on"]["fingerprints"],
                                                  "images": fps}}
    return {**meta, "trained_on": rec}, pic, rec["path"][0]


def _save_jpeg_copy(pic: np.ndarray, path) -> None:
    crop = pic[6:-3, 4:]  # a few percent off the borders, then JPEG at quality 40
    Image.fromarray((crop * 255).astype(np.uint8)).save(path, "JPEG", quality=40)


def test_near_copies_in_the_test_split_are_left_out_and_listed(trained, demo_dir, demo_manifest,
                                                               tmp_path, monkeypatch):
    models = checkpoints.load_models([trained], CPU)
    assert checkpoints.has_fingerprints(models["resnet18"][1])
    model, meta = models["resnet18"]
    meta, pic, trained_path = _plant_twin(meta, 3)
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    victim = demo_manifest[demo_manifest["split"] == "test"].iloc[0]["path"]
    (data / victim).unlink()
    _save_jpeg_copy(pic, data / victim)  # a .png path holding JPEG bytes: read_xray reads both
    with pytest.warns(UserWarning, match="1 test images are near copies of training"):
        ev = evaluation.evaluate_split({"resnet18": (model, meta)}, demo_manifest, data,
                                       _cfg(tmp_path), CPU)
    dup = ev.metrics["training_duplicates"]
    assert [(d["path"], d["trained_path"], d["kind"]) for d in dup] == [
        (victim, trained_path, "near")]
    assert dup[0]["score"] >= 0.86
    n_test = int((demo_manifest["split"] == "test").sum())
    assert ev.metrics["archs"]["resnet18"]["test"]["n"] == n_test - 1
    clean = evaluation.evaluate_split(models, demo_manifest, demo_dir, _cfg(tmp_path), CPU)
    assert "training_duplicates" not in clean.metrics  # metrics.json as before when none
    # the scores were kept in the cache folder: a new process (nothing remembered) reads them
    assert near_duplicates.ScoreStore(_cfg(tmp_path).cache_dir).path.is_file()
    checkpoints._MATCHES.clear()
    monkeypatch.setattr(near_duplicates, "_verify", lambda *a, **k: pytest.fail("verified again"))
    with pytest.warns(UserWarning, match="1 test images are near copies of training"):
        again = evaluation.evaluate_split({"resnet18": (model, meta)}, demo_manifest, data,
                                          _cfg(tmp_path), CPU)
    assert again.metrics["training_duplicates"] == dup


def test_external_near_copies_are_left_out_and_shown_beside_their_twin(trained, demo_dir,
                                                                       tmp_path, capsys):
    ckpt = tmp_path / "models" / "resnet18.pt"
    ckpt.parent.mkdir()
    shutil.copy(trained, ckpt)
    meta, pic, trained_path = _plant_twin(torch.load(ckpt, weights_only=True)["meta"], 5)
    checkpoints.update_checkpoint_meta(ckpt, trained_on=meta["trained_on"])
    ext = tmp_path / "ext"
    for cls in ("Normal", "COVID"):
        src = sorted((demo_dir / cls / "images").glob("*.png"))[:3]
        (ext / cls).mkdir(parents=True)
        for f in src:  # unaltered phantoms of the demo: byte-identical, train or not
            shutil.copy(f, ext / cls / f.name)
    _save_jpeg_copy(pic, ext / "Normal" / "near_copy.jpg")
    out = tmp_path / "out"
    rc = _cli(ckpt, "--data-dir", ext, "--out", out, "--name", "x", "--cache-dir",
              tmp_path / "cache")
    text = capsys.readouterr().out
    assert rc == 0, text
    info = json.loads((out / "metrics.json").read_text())["external"]["x"]["images"]
    near = [d for d in info["training_duplicates"] if d["kind"] == "near"]
    assert [(d["path"], d["trained_path"]) for d in near] == [("Normal/near_copy.jpg",
                                                                 trained_path)]
    assert near_duplicates.ScoreStore(tmp_path / "cache").path.is_file()  # kept for a rerun
    assert all(d["kind"] == "exact" and d["score"] == 1.0
               for d in info["training_duplicates"] if d["path"] != "Normal/near_copy.jpg")
    assert info["scored"] == 7 - len(info["training_duplicates"])
    assert "copies of training images (" in text and "1 near" in text
    assert (out / "external" / "x" / "training_twins.png").is_file()
    assert "beside their training twin" in (out / "report.html").read_text()
