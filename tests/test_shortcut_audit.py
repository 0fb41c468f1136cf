"""The shortcut audit (masking, CAM energy/peaks against the lungs, accuracy with the lungs shown
or removed), calibration in the checkpoint, and the demo's planted shortcut."""

import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import audit
import checkpoints
import demo_data
import phantoms
import inference
import metrics
import networks
import predict
import runtime
import split_dataset
import training
import utils

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


# --------------------------------------------------------------------------- masking
def test_lung_views_fill_the_removed_part_with_the_mean_of_the_kept_part():
    img = np.arange(100, dtype=np.uint8).reshape(10, 10) + 50       # values 50..149
    lungs = np.zeros((10, 10), bool)
    lungs[3:6, 3:7] = True                                           # 12 px
    x, m = torch.from_numpy(img)[None, None], torch.from_numpy(lungs)[None]
    assert audit.lung_view(x, m, "as_is") is x
    only = audit.lung_view(x, m, "lungs_only")[0, 0].numpy()
    assert (only[lungs] == img[lungs]).all()
    assert (only[~lungs] == round(img[lungs].mean())).all()          # 50 + 44.5 -> 94 or 95
    removed = audit.lung_view(x, m, "lungs_removed")[0, 0].numpy()
    assert (removed[~lungs] == img[~lungs]).all()
    assert (removed[lungs] == round(img[~lungs].mean())).all()
    # dilation by 1 px (a disc: the 4-neighbours of the rectangle join it, corners do not)
    grown = utils.dilate(lungs, 1)
    assert grown.sum() == 12 + 2 * 3 + 2 * 4
    removed1 = audit.lung_view(x, m, "lungs_removed", dilation=1)[0, 0].numpy()
    assert (removed1[grown] == round(img[~grown].mean())).all() and (removed1[~grown] == img[~grown]).all()
    assert audit.lung_view(x, m, "lungs_only").dtype == torch.uint8


def test_lung_view_refuses_a_missing_mask_and_a_bad_view():
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, 2:4, 2:4] = True
    assert audit.usable_lung_masks(m).tolist() == [True, False]
    with pytest.raises(ValueError, match="1 of 2 lung masks are empty"):
        audit.lung_view(x, m, "lungs_only")
    with pytest.raises(ValueError, match="cover the whole image"):
        audit.lung_view(x[:1], m[:1], "lungs_removed", dilation=8)
    with pytest.raises(ValueError, match="as_is, lungs_only, lungs_removed"):
        audit.lung_view(x, m, "no_lungs")


# --------------------------------------------------------------------------- CAM vs lungs
def test_lung_scores_against_hand_made_maps():
    lungs = np.zeros((3, 10, 10), bool)
    lungs[:, 2:8, 2:5] = True                                        # 18 px = 0.18 of the image
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 3, 3] = 1.0                                              # all inside, peak inside
    maps[1, 3, 3], maps[1, 0, 9] = 1.0, 3.0                          # 1/4 inside, peak outside
    maps[2] = 0.5                                                    # constant: no peak, skipped
    s = audit.lung_scores(maps, lungs)
    assert s["index"].tolist() == [0, 1]
    assert s["energy_in_lungs"].tolist() == pytest.approx([1.0, 0.25])
    assert s["peak_outside"].tolist() == [False, True]
    assert s["lung_area"].tolist() == pytest.approx([0.18, 0.18])
    # grown by 1 px: (0, 9) is still outside; the area is the grown mask's
    g = audit.lung_scores(maps, lungs, dilation=1)
    assert g["lung_area"].iloc[0] == pytest.approx(utils.dilate(lungs[0], 1).mean())
    summ = audit.summarize_lung_scores(s, n_boot=200, seed=0)
    assert summ["n"] == 2 and summ["energy_in_lungs"] == pytest.approx(0.625)
    assert summ["peaks_outside"] == pytest.approx(0.5)
    assert summ["energy_chance"] == pytest.approx(0.18) and summ["peaks_outside_chance"] == pytest.approx(0.82)
    lo, hi = summ["energy_in_lungs_ci"]
    assert 0.25 <= lo <= 0.625 <= hi <= 1.0
    empty = audit.summarize_lung_scores(s.iloc[:0])
    assert empty["n"] == 0 and empty["energy_in_lungs"] is None and empty["peaks_outside_chance"] is None


# --------------------------------------------------------------------------- what the model needs
S = 32


def _audit_images(tmp_path, n_per_class=6):
    """Images whose class shows twice: as the brightness of a 'lung' (rows 8..23, cols 6..25)
    and of a corner patch outside it (a planted shortcut); lung masks beside them."""
    rows = []
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(0)
    for k, label in enumerate(CLASSES):
        for i in range(n_per_class):
            img = rng.integers(95, 106, (S, S)).astype(np.uint8)     # a noisy mid-grey body
            img[8:24, 6:26] = 40 + 50 * k                            # the lungs carry the class
            img[0:4, 0:4] = 40 + 50 * k                              # ... and so does a corner mark
            mask = np.zeros((S, S), np.uint8)
            mask[8:24, 6:26] = 255
            name = f"{label}-{i}.png"
            cv2.imwrite(str(tmp_path / "img" / name), img)
            cv2.imwrite(str(tmp_path / "mask" / name), mask)
            rows.append({"path": f"img/{name}", "label": label, "split": "test", "mask_path": f"mask/{name}"})
    return pd.DataFrame(rows)


class RegionReader(nn.Module):
    """A 'model' that calls the class whose brightness (40 + 50 k) is nearest the mean of one
    region of channel 0 (undoing prepare_batch's normalisation)."""

    def __init__(self, rows, cols):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.centres = torch.tensor([40.0 + 50 * k for k in range(4)])

    def forward(self, x):
        raw = (x[:, 0] * utils.IMAGENET_STD[0] + utils.IMAGENET_MEAN[0]) * 255   # (N, S, S)
        v = raw[:, self.rows, self.cols].mean((1, 2))
        return -((v[:, None] - self.centres[None]) / 10) ** 2                   # (N, 4) logits


def test_lung_reliance_tells_a_lung_reader_from_a_shortcut_reader(tmp_path):
    df = _audit_images(tmp_path)
    loader = utils.eval_loader(df, tmp_path, CLASSES, S, 8, 0, mask_column="mask_path")
    cpu = torch.device("cpu")
    lung_reader = RegionReader(slice(10, 22), slice(8, 24))
    shortcut_reader = RegionReader(slice(0, 4), slice(0, 4))
    lung = audit.lung_reliance(lung_reader, loader, cpu, CLASSES, dilation=1)
    short = audit.lung_reliance(shortcut_reader, loader, cpu, CLASSES, dilation=1)
    assert lung["chance"] == short["chance"] == 0.25
    for a in (lung, short):
        assert a["as_is"]["accuracy"] == 1.0 and a["as_is"]["n"] == 24
    # the lung reader keeps its accuracy on the lungs alone and is at chance without them
    # (every fill is the body's grey, the same class for every image)
    assert lung["lungs_only"]["accuracy"] == 1.0
    assert lung["lungs_removed"]["accuracy"] == 0.25
    assert max(lung["lungs_removed"]["predicted"].values()) == 24
    assert lung["reads_outside_lungs"] is False
    # the shortcut reader is the other way round, and the audit says so
    # (with only the lungs shown its corner holds the lungs' mean, which here is the class too)
    assert short["lungs_removed"]["accuracy"] == 1.0
    assert short["reads_outside_lungs"] is True
    lo, hi = short["lungs_removed"]["accuracy_ci"]
    assert (lo, hi) == pytest.approx(metrics.wilson_interval(24, 24))


def test_images_without_a_usable_lung_mask_are_left_out_of_every_view(tmp_path):
    df = _audit_images(tmp_path, n_per_class=2)
    df.loc[0, "mask_path"] = ""                                      # no mask for the first image
    loader = utils.eval_loader(df, tmp_path, CLASSES, S, 8, 0, mask_column="mask_path")
    cpu = torch.device("cpu")
    a = audit.lung_reliance(RegionReader(slice(10, 22), slice(8, 24)), loader, cpu, CLASSES, 1)
    assert [a[v]["n"] for v in audit.LUNG_VIEWS] == [7, 7, 7]
    y, _, idx = audit.predict_view(RegionReader(slice(0, 4), slice(0, 4)), loader, cpu, "as_is")
    assert 0 not in idx.tolist() and len(y) == 7
    plain = utils.eval_loader(df, tmp_path, CLASSES, S, 8, 0)
    with pytest.raises(ValueError, match="mask_column='mask_path'"):
        audit.predict_view(RegionReader(slice(0, 4), slice(0, 4)), plain, cpu, "lungs_only")


# --------------------------------------------------------------------------- calibration
def test_calibrate_stores_the_temperature_in_the_checkpoint_and_predict_uses_it(tmp_path, demo_dir,
                                                                             demo_manifest):
    torch.manual_seed(0)
    model = networks.build_model("resnet18", 4, weights=None).eval()
    path = tmp_path / "m.pt"
    checkpoints.save_checkpoint(path, model, arch="resnet18", class_names=CLASSES, image_size=32)
    val = utils.eval_loader(demo_manifest[demo_manifest["split"] == "val"], demo_dir, CLASSES, 32, 8, 0)
    cal = inference.calibrate(model, val, torch.device("cpu"))
    y, p, _ = inference.predict_loader(model, val, torch.device("cpu"))
    assert cal["temperature"] == pytest.approx(metrics.fit_temperature(y, p))
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9 and cal["n"] == len(y)
    checkpoints.update_checkpoint_meta(path, temperature=2.5, calibration=cal)
    again, meta = checkpoints.load_checkpoint(path)
    assert meta["temperature"] == 2.5 and meta["calibration"]["n"] == len(y)
    assert meta["image_size"] == 32                                   # the rest of meta kept
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)                                      # weights untouched
    # predict.py divides the logits by it, and --uncalibrated does not
    out = {}
    for flag in ([], ["--uncalibrated"]):
        o = tmp_path / ("raw" if flag else "cal")
        assert predict.main([str(path), str(demo_dir / "COVID" / "images" / "COVID-1.png"),
                             "--out", str(o), "--cam", "none", *flag]) == 0
        out[bool(flag)] = pd.read_csv(o / "predictions.csv")[[f"m_{c}" for c in CLASSES]].to_numpy(float)[0]
    np.testing.assert_allclose(metrics.apply_temperature(out[True][None], 2.5)[0], out[False], atol=1e-6)
    assert not np.allclose(out[True], out[False], atol=1e-4)


def test_a_validation_split_without_errors_leaves_the_temperature_at_one():
    y = np.array([0, 1, 2, 0])
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    assert metrics.fit_temperature(y, p) == 1.0                       # no finite minimum: T -> 0
    p[3] = [0.4, 0.5, 0.1]                                           # one error: a real fit
    t = metrics.fit_temperature(y, p)
    assert t != 1.0 and math.isfinite(t)


# --------------------------------------------------------------------------- the planted shortcut
def test_shortcut_marks_lie_outside_the_grown_lungs_and_follow_the_class():
    grown_by = round(0.03 * 299)                                      # notebook 3's lung_margin
    for ci, label in enumerate(CLASSES):
        for i in range(25):
            img, lung, _ = phantoms.render_phantom(label, np.random.default_rng([9, ci, i]))
            grown = utils.dilate(lung > 0, grown_by)
            for source in demo_data.SOURCES:
                marked = demo_data.burn_source_mark(img.copy(), source) != img
                assert not (marked & grown).any(), (label, i, source)
                assert marked.any() == (demo_data.SOURCE_MARKS[source] != "none")
    n = 400
    with_cue = [[demo_data.source_of(3, ci, i, shortcut=True) for i in range(n)] for ci in range(4)]
    without = [[demo_data.source_of(3, ci, i) for i in range(n)] for ci in range(4)]
    for ci in range(4):
        own = np.mean([s == demo_data.SOURCES[ci] for s in with_cue[ci]])
        assert abs(own - demo_data.SHORTCUT_P) < 0.05                 # mostly its own source
        shares = pd.Series(without[ci]).value_counts(normalize=True)
        assert len(shares) == 4 and shares.max() < 0.33               # independent of the class


def test_shortcut_demo_writes_its_sources_and_leaves_the_anatomy_alone(tmp_path):
    counts = {c: 6 for c in CLASSES}
    plain = demo_data.generate(tmp_path / "plain", counts=counts, seed=4, workers=1, verbose=False)
    cued = demo_data.generate(tmp_path / "cued", counts=counts, seed=4, workers=1, verbose=False,
                              shortcut=True)
    assert plain["shortcut"] is False and cued["shortcut"] is True
    assert utils.dataset_info(tmp_path / "cued")["shortcut"] is True
    changed = 0
    for ci, label in enumerate(CLASSES):
        for i in range(1, 7):
            name = f"{label}/images/{label}-{i}.png"
            a, b = (cv2.imread(str(tmp_path / d / name), cv2.IMREAD_GRAYSCALE) for d in ("plain", "cued"))
            source = demo_data.source_of(4, ci, i, shortcut=True)
            assert np.array_equal(demo_data.burn_source_mark(a.copy(), source), b)
            changed += not np.array_equal(a, b)
            for sub in ("masks", "lesion_masks"):
                f = f"{label}/{sub}/{label}-{i}.png"
                assert (tmp_path / "plain" / f).is_file() == (label != "Normal") or sub == "masks"
                if (tmp_path / "plain" / f).is_file():
                    assert (tmp_path / "plain" / f).read_bytes() == (tmp_path / "cued" / f).read_bytes()
    assert changed > 12
    # split_dataset reads the Kaggle-style metadata into the manifest's source column
    m = split_dataset.make_split(tmp_path / "cued", val=1, test=1, seed=0, workers=1)
    numbers = [int(p.rsplit("-", 1)[1][:-len(".png")]) for p in m["path"]]
    expect = [demo_data.SOURCE_URL + demo_data.source_of(4, CLASSES.index(lab), i, True)
              for lab, i in zip(m["label"], numbers)]
    assert m["source"].tolist() == expect


@pytest.mark.slow
@pytest.mark.parametrize("shortcut", [True, False])
def test_a_model_trained_on_the_shortcut_demo_is_caught_and_one_trained_without_is_not(
        tmp_path, shortcut):
    """Both directions end to end on small data: ResNet-18 trained briefly on the demo (64 px,
    40 images per class) reads the planted marks when they are there (still right with the
    lungs removed) and falls to about chance with the lungs removed when they are not."""
    d = tmp_path / "demo"
    demo_data.generate(d, counts={c: 40 for c in CLASSES}, seed=5, size=128, workers=1,
                       verbose=False, shortcut=shortcut)
    m = split_dataset.make_split(d, val=5, test=15, seed=0, workers=1)
    loaders = utils.make_loaders(m, d, CLASSES, 64, 16, 0, 0)
    cfg = training.TrainConfig(epochs=6, batch_size=16, image_size=64, num_workers=0, seed=0,
                               patience=100, lr=1e-3, augment=False, amp=False)
    runtime.seed_everything(0)
    model = networks.build_model("resnet18", 4, weights=None)
    training.fit(model, loaders, "resnet18", CLASSES, cfg, torch.device("cpu"), tmp_path / "m",
                 tmp_path / "h", resume=False, progress=False)
    test = utils.eval_loader(m[m["split"] == "test"], d, CLASSES, 64, 32, 0, mask_column="mask_path")
    a = audit.lung_reliance(model, test, torch.device("cpu"), CLASSES, dilation=2)
    assert a["as_is"]["n"] == 60 and a["chance"] == 0.25
    assert a["as_is"]["accuracy"] >= 0.5                          # it learned (chance 0.25)
    if shortcut:
        assert a["lungs_removed"]["accuracy"] >= 0.6 and a["reads_outside_lungs"] is True
    else:
        assert a["lungs_removed"]["accuracy"] <= 0.4
