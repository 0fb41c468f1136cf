"""familiarity.py: the out-of-distribution flag and conformal prediction sets, fitted in
training and read by predict.py, the app, evaluation and the refit CLI (CPU, offline, small)."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score

import app
import checkpoints
import evaluation
import familiarity as fam
import metrics
import networks
import near_duplicates as nd
import ood_sets
import predict
import report
import tables
import files
import utils
from xray_io import read_xray, resize_uint8

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*CAMs are constant")


# --------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("arch,size,want", [
    ("resnet18", 64, ["layer2", "layer3", "layer4", "fc"]),
    ("vgg16", 64, ["features.22", "features.29", "features", "classifier.6"]),
    ("densenet121", 64, ["features.transition2.conv", "features.transition3.conv",
                         "final_relu", "classifier"]),
    ("convnext_tiny", 128, ["features.4.0", "features.6.0", "features", "classifier.2"])])
def test_feature_layers_are_the_last_three_resolutions_and_the_head(arch, size, want):
    model = networks.build_model(arch, 4, weights=None)
    assert fam.feature_layers(model, size) == want


def test_features_are_pooled_maps_and_the_heads_input():
    model = networks.build_model("resnet18", 4, weights=None).eval()
    x = torch.rand(3, 3, 64, 64)
    with fam.Features(model, ["layer4", "fc"]) as f, torch.no_grad():
        model(x)
        pooled = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(
            model.relu(model.bn1(model.conv1(x))))))))
    assert torch.allclose(f.batch["layer4"], pooled.mean((2, 3)), atol=1e-5)
    assert torch.allclose(f.batch["fc"], pooled.mean((2, 3)), atol=1e-5)  # fc's input
    assert not model.layer4._forward_hooks and not model.fc._forward_pre_hooks
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        fam.Features(model, ["layer9", "fc"]).__enter__()


def test_ledoit_wolf_matches_scikit_learn():
    x = np.random.default_rng(0).normal(size=(40, 12)) @ np.diag(np.arange(1, 13))
    x -= x.mean(0)
    assert np.allclose(fam._ledoit_wolf(x), ledoit_wolf(x, assume_centered=True)[0], atol=1e-8)


def test_gaussian_scores_rank_shifted_points_higher():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 20))
    labels = (train[:, 0] > 0).astype(int)
    stats = fam.fit_gaussian(train, labels, k=8)
    assert stats["basis"].dtype == torch.float16 and stats["basis"].shape == (20, 8)
    near, far = rng.normal(size=(50, 20)), rng.normal(size=(50, 20)) + 3.0
    s_near, s_far = fam.gaussian_scores(stats, near), fam.gaussian_scores(stats, far)
    assert s_near.shape == (50, 2)
    assert metrics.auroc(s_near[:, 0], s_far[:, 0]) > 0.95
    lopsided = near.copy()
    lopsided[:, 5:] *= 4  # variation along directions outside the top 8: the residual part
    assert np.median(fam.gaussian_scores(stats, lopsided)[:, 1]) > np.median(s_near[:, 1]) + 1


def test_auroc_matches_scikit_learn():
    rng = np.random.default_rng(2)
    neg, pos = rng.normal(size=37), rng.normal(size=23) + 0.7
    pos[:3] = neg[:3]  # ties
    want = roc_auc_score(np.r_[np.zeros(37), np.ones(23)], np.r_[neg, pos])
    assert metrics.auroc(neg, pos) == pytest.approx(want)
    assert np.isnan(metrics.auroc([], pos))


def test_conformal_quantile_and_coverage():
    probs = np.array([[.7, .2, .1], [.5, .4, .1], [.2, .3, .5], [.1, .8, .1], [.3, .3, .4]])
    labels = np.array([0, 1, 2, 1, 0])
    c = fam.fit_conformal(probs, labels, alpha=0.2)  # scores .3 .6 .5 .2 .7: 5th smallest
    assert c["qhat"] == pytest.approx(0.7) and c["n"] == 5
    sets = fam.prediction_sets(probs, c["qhat"])
    assert sets[np.arange(5), labels].all()
    assert fam.set_names(sets[:2], ["a", "b", "c"]) == ["a", "a|b"]  # p >= 1 - qhat = 0.3
    top_only = fam.prediction_sets(probs, 0.0)  # never empty: the top class stays
    assert (top_only.sum(1) == 1).all() and top_only[np.arange(5), probs.argmax(1)].all()
    rng = np.random.default_rng(3)  # exchangeable draws: coverage at least 1 - alpha on average
    covered = []
    for _ in range(200):
        logits = rng.normal(size=(120, 4)) * 2
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = np.array([rng.choice(4, p=row) for row in p])
        q = fam.fit_conformal(p[:60], y[:60], 0.1)["qhat"]
        covered.append(fam.prediction_sets(p[60:], q)[np.arange(60), y[60:]].mean())
    assert np.mean(covered) >= 0.9 - 0.01


def test_built_in_unfamiliar_pictures():
    pics = ood_sets.non_radiographs()
    assert len(pics) == 12 and all(a.ndim == 2 and 0 <= a.min() and a.max() <= 1
                                   for a in pics.values())
    a = np.arange(20, dtype=np.float32).reshape(4, 5) / 19
    t = ood_sets.turned(a)
    assert t["rot90"].shape == (5, 4) and (t["upside_down"][0] == a[-1]).all()
    assert np.allclose(t["inverted"], 1 - a) and t["corner"].shape == (1, 2)


# --------------------------------------------------------------------------- with a model
def _scores(model, meta, images):
    f = meta["familiarity"]
    feats, _ = fam.extract(model, f["layers"],
                           np.stack([resize_uint8(a, meta["image_size"]) for a in images]), CPU)
    return fam.familiarity_scores(f, feats, np.stack([nd.fingerprint(a) for a in images]))


def test_training_stores_both_records_small(trained, demo_dir, demo_manifest):
    model, meta = checkpoints.load_checkpoint(trained)
    f, c = meta["familiarity"], meta["conformal"]
    assert f["rate"] == 0.95 and f["n_val"] == int((demo_manifest["split"] == "val").sum())
    assert c["alpha"] == 0.1 and 0 < c["qhat"] <= 1
    size = sum(v.numel() * v.element_size() for st in [*f["stats"].values(), f["layout"]]
               for v in st.values() if torch.is_tensor(v))
    assert size < 2 * 2**20
    val = [read_xray(demo_dir / p) for p in demo_manifest[demo_manifest["split"] == "val"]["path"]]
    s_val = _scores(model, meta, val)
    # 0 = the median val image (the features recomputed here differ from training's in the
    # last float32 bits: 2.4e-6 was seen on one box)
    assert np.quantile(s_val, 0.5) == pytest.approx(0, abs=1e-4)
    assert (s_val > 1).mean() <= 0.1                                 # 1 = its 95% quantile
    test = [read_xray(demo_dir / p) for p in demo_manifest[demo_manifest["split"] == "test"]["path"]]
    s_test = _scores(model, meta, test)
    s_other = _scores(model, meta, list(ood_sets.non_radiographs().values()))
    assert metrics.auroc(s_test, s_other) >= 0.95 and (s_other > 1).mean() >= 0.9
    s_rot = _scores(model, meta, [ood_sets.turned(a)["rot90"] for a in test])
    assert metrics.auroc(s_test, s_rot) >= 0.9


def test_predict_writes_the_flag_and_the_sets(trained, demo_dir, demo_manifest, tmp_path, capsys):
    row = demo_manifest[demo_manifest["split"] == "test"].iloc[0]
    shutil.copy(demo_dir / row["path"], tmp_path / "radiograph.png")
    Image.fromarray((ood_sets.non_radiographs()["checkerboard"] * 255).astype(np.uint8)).save(
        tmp_path / "checkerboard.png")
    rc = predict.main([str(trained), str(tmp_path / "radiograph.png"),
                       str(tmp_path / "checkerboard.png"), "--out", str(tmp_path / "out")])
    assert rc == 0
    out = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("path")
    board, xray = out.loc[str(tmp_path / "checkerboard.png")], out.loc[str(tmp_path / "radiograph.png")]
    assert str(board["out_of_distribution"]) == "True" and float(board["ood_score"]) > 1
    assert board["ood_score"] == board["resnet18_ood_score"]
    for r in (board, xray):
        classes = r["prediction_set"].split("|")
        assert r["predicted"] in classes and set(classes) <= set(utils.class_names_from(demo_manifest))
    assert "unlike the training images" in capsys.readouterr().out
    # the figure of a flagged image says so: its title is drawn, so compare with an unflagged one
    assert board["cam"] and xray["cam"]


def test_a_checkpoint_without_the_records_gives_empty_columns_and_says_so(trained, tmp_path,
                                                                           demo_dir, demo_manifest,
                                                                           capsys):
    old = tmp_path / "old.pt"
    ckpt = torch.load(trained, weights_only=True)
    for key in ("familiarity", "conformal"):
        ckpt["meta"].pop(key)
    torch.save(ckpt, old)
    row = demo_manifest[demo_manifest["split"] == "test"].iloc[0]
    assert predict.main([str(old), str(demo_dir / row["path"]), "--out", str(tmp_path / "o"),
                         "--cam", "none"]) == 0
    out = pd.read_csv(tmp_path / "o" / "predictions.csv", keep_default_na=False)
    assert out["ood_score"].tolist() == [""] and out["prediction_set"].tolist() == [""]
    assert "no familiarity record" in capsys.readouterr().out
    # the refit CLI adds both, weights untouched; another split is refused
    manifest = tmp_path / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    before = torch.load(old, weights_only=True)["model_state"]
    assert fam.main([str(old), "--manifest", str(manifest), "--data-dir", str(demo_dir),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    after = torch.load(old, weights_only=True)
    assert all(torch.equal(before[k], after["model_state"][k]) for k in before)
    assert after["meta"]["familiarity"]["layers"] and after["meta"]["conformal"]["alpha"] == 0.1
    other = demo_manifest.assign(split=demo_manifest["split"].replace({"test": "val",
                                                                       "val": "test"}))
    files.write_csv_atomic(other, tmp_path / "other.csv")
    assert fam.main([str(old), "--manifest", str(tmp_path / "other.csv"), "--data-dir",
                     str(demo_dir)]) == 2
    assert "was not trained on" in capsys.readouterr().err


def test_evaluation_reports_coverage_and_the_flag(trained, demo_dir, demo_manifest, tmp_path):
    models = checkpoints.load_models([trained], CPU)
    cfg = evaluation.EvalConfig(batch_size=16, num_workers=0, n_boot=50, seed=0,
                                cam_layers={"resnet18": "layer3"},
                                cache_dir=str(tmp_path / "cache"))
    ev = evaluation.evaluate_split(models, demo_manifest, demo_dir, cfg, CPU)
    r = ev.metrics["archs"]["resnet18"]
    ps, fr = r["prediction_sets"], r["familiarity"]
    n = r["test"]["n"]
    assert ps["n"] == n and ps["nominal"] == pytest.approx(0.9)
    assert ps["coverage_ci"][0] <= ps["coverage"] <= ps["coverage_ci"][1]
    assert 1 <= ps["mean_size"] <= 4 and sum(v["n"] for v in ps["per_class"].values()) == n
    assert fr["flagged"]["n"] == n
    assert fr["accuracy_passed"]["n"] + fr["accuracy_flagged"]["n"] == n
    assert set(fr["builtin"]) == {"rot90", "upside_down", "inverted", "corner",
                                  "non_radiographs"}
    assert fr["builtin"]["non_radiographs"]["auroc"] >= 0.95
    t = tables.trust(ev.metrics["archs"])
    assert list(t.columns) == ["flagged", "AUROC non-radiographs",
                               "AUROC turned/inverted/corner (lowest)", "set coverage",
                               "mean set size"]
    assert "(nominal 0.90)" in t.loc["resnet18", "set coverage"]
    out = tmp_path / "out"
    report.save_metrics(ev.metrics, out)
    assert 'id="trust-table"' in report.build_report(out).read_text()


def test_the_app_warns_instead_of_calling_a_flagged_image(trained, demo_dir, demo_manifest,
                                                         tmp_path):
    p = app.Predictor([str(trained)], "cpu")
    Image.fromarray((ood_sets.non_radiographs()["text"] * 255).astype(np.uint8)).save(
        tmp_path / "text.png")
    text, _, table = p(str(tmp_path / "text.png"), "none", app.DEFAULT_LAYER)
    assert text.startswith("### Not a call") and "would say" in text
    assert "color: #9ca3af" in table.to_html()  # the probabilities, greyed
    row = demo_manifest[demo_manifest["split"] == "test"].iloc[0]
    text, _, table = p(str(demo_dir / row["path"]), "none", app.DEFAULT_LAYER)
    assert "Prediction set" in text and isinstance(table, pd.DataFrame)


def test_per_class_coverage_table():
    archs = {"m": {"prediction_sets": {"per_class": {
        "A": {"n": 10, "coverage": 0.9, "coverage_ci": [0.6, 0.98], "mean_size": 1.25}}}},
             "old": {}}
    t = tables.prediction_sets_by_class(archs)
    assert t.loc[("m", "A")].tolist() == [10, "0.900 [0.600, 0.980]", "1.25"]
    assert tables.prediction_sets_by_class({"old": {}}) is None


@pytest.mark.skipif(not (REALCXR := __import__("conftest").REALCXR).is_dir(),
                    reason="../shared/realcxr not present")
def test_real_radiographs_are_unfamiliar_to_a_phantom_model(trained):
    """A model trained on the synthetic demo meets real radiographs: they are not what it was
    trained on, and the flag says so for most of them."""
    model, meta = checkpoints.load_checkpoint(trained)
    files = sorted((REALCXR / "Normal").glob("*.png"))[:40]
    s = _scores(model, meta, [read_xray(f) for f in files])
    assert (s > 1).mean() >= 0.8


def test_tiny_feature_variance_keeps_every_statistic_finite():
    """VGG-16's pooled features vary by ~1e-3: their precision matrix exceeds float16's range
    (a demo run once stored inf and scored NaN); the scores stay finite."""
    rng = np.random.default_rng(4)
    train = rng.normal(size=(200, 96)) * 1e-3 + 0.1
    stats = fam.fit_gaussian(train, np.arange(200) % 4, k=64)
    assert all(torch.isfinite(v.float()).all() for v in stats.values() if torch.is_tensor(v))
    assert stats["precision"].dtype == torch.float32 and stats["basis"].dtype == torch.float16
    assert np.isfinite(fam.gaussian_scores(stats, rng.normal(size=(10, 96)) * 1e-3 + 0.1)).all()
