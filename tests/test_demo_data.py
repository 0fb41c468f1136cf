import json

import numpy as np
import pytest
from PIL import Image

import demo_data
import exploration
import phantoms
import split_dataset


def test_layout_and_marker(demo_dir):
    for c in demo_data.CLASSES:
        imgs = sorted((demo_dir / c / "images").iterdir())
        assert len(imgs) == 12
        assert (demo_dir / c / "masks" / imgs[0].name).is_file()
        assert (demo_dir / c / "lesion_masks").is_dir() == (c != "Normal")
        with Image.open(imgs[0]) as im:
            assert im.mode == "L" and im.size == (299, 299)
    info = json.loads((demo_dir / demo_data.MARKER_FILE).read_text())
    assert info["synthetic"] is True


def test_deterministic_and_order_independent(tmp_path):
    counts = {c: 3 for c in demo_data.CLASSES}
    demo_data.generate(tmp_path / "a", counts=counts, seed=5, workers=1, verbose=False)
    demo_data.generate(tmp_path / "b", counts={c: 5 for c in demo_data.CLASSES}, seed=5,
                       workers=2, verbose=False)
    for p in (tmp_path / "a").rglob("*.png"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
    demo_data.generate(tmp_path / "c", counts=counts, seed=6, workers=1, verbose=False)
    a = (tmp_path / "a" / "COVID" / "images" / "COVID-1.png").read_bytes()
    assert a != (tmp_path / "c" / "COVID" / "images" / "COVID-1.png").read_bytes()


def test_findings_inside_lungs_and_masks_binary():
    rng = np.random.default_rng(0)
    for c in demo_data.CLASSES:
        img, lung, lesion = phantoms.render_phantom(c, rng)
        assert img.dtype == np.uint8 and img.shape == (299, 299)
        assert set(np.unique(lung)) <= {0, 255} and set(np.unique(lesion)) <= {0, 255}
        assert 0.1 < (lung > 0).mean() < 0.5
        if c == "Normal":
            assert not lesion.any()
        else:
            assert lesion.any()
            assert ((lesion > 0) & (lung > 0)).sum() / (lesion > 0).sum() > 0.9


def test_no_global_brightness_cue():
    """Class means of per-image mean/std differ by far less than their spread."""
    stats = {c: [] for c in demo_data.CLASSES}
    for c in demo_data.CLASSES:
        for i in range(30):
            img = phantoms.render_phantom(c, np.random.default_rng([9, i]))[0] / 255.0
            stats[c].append((img.mean(), img.std()))
    arr = {c: np.array(v) for c, v in stats.items()}
    for k in (0, 1):
        means = [a[:, k].mean() for a in arr.values()]
        spread = np.mean([a[:, k].std() for a in arr.values()])
        assert (max(means) - min(means)) < 0.6 * spread, (k, means, spread)


def test_scaled_counts_follow_real_proportions():
    c = demo_data.scaled_counts(0.1)
    assert c == {"COVID": 362, "Lung_Opacity": 601, "Normal": 1019, "Viral Pneumonia": 134}


def _geometry(label, n=24, seed=5):
    """Per image: lesion share of the lung, lesion contrast (mean inside lesion minus the rest of
    the lung, intensities in [0, 1]), lesion in both lungs, mean vertical position of the lesion
    in the lung (0 apex, 1 base), mean distance from the midline (0 midline, 1 lateral edge)."""
    rows = []
    for i in range(n):
        img, lung, les = phantoms.render_phantom(label, np.random.default_rng([seed, i]))
        img, lung, les = img / 255.0, lung > 0, les > 0
        ys, xs = np.nonzero(lung)
        mid, half = (xs.min() + xs.max()) / 2, (xs.max() - xs.min()) / 2
        ly, lx = np.nonzero(les)
        rows.append({"share": les.sum() / lung.sum(),
                     "contrast": img[les & lung].mean() - img[lung & ~les].mean(),
                     "both": (lx < mid).any() and (lx > mid).any(),
                     "vertical": ((ly - ys.min()) / (ys.max() - ys.min())).mean(),
                     "lateral": (np.abs(lx - mid) / half).mean()})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("label", ["COVID", "Lung_Opacity", "Viral Pneumonia"])
def test_findings_are_visible_sized_and_where_the_disease_puts_them(label):
    g = _geometry(label)
    assert (g["contrast"] > 0.1).all(), g["contrast"].min()     # >= 25 grey levels brighter
    assert (g["share"] > 0.15).all() and (g["share"] < 0.5).all(), g["share"]
    assert g["both"].all()                                      # all three are bilateral here
    if label == "COVID":      # peripheral, lower zone
        assert (g["vertical"] > 0.55).all() and (g["lateral"] > 0.65).all()
    if label == "Viral Pneumonia":  # perihilar: central, mid zone
        assert (g["lateral"] < 0.65).all() and (abs(g["vertical"] - 0.45) < 0.15).all()
    if label == "Lung_Opacity":     # any zone: positions spread over the lung
        assert np.ptp(g["vertical"]) > 0.25


@pytest.mark.slow
def test_no_statistic_of_notebook_1_gives_the_class_away(tmp_path):
    """Notebook 1's shortcut table (exploration.class_differences) flags nothing on the demo data."""
    demo_data.generate(tmp_path / "d", counts={c: 40 for c in demo_data.CLASSES}, seed=3,
                       workers=1, verbose=False)
    manifest = split_dataset.make_split(tmp_path / "d", val=4, test=4, seed=0, workers=1)
    stats = exploration.image_statistics(manifest, tmp_path / "d", per_class=40, seed=0)
    assert len(stats) == 160
    diffs = exploration.class_differences(stats).set_index("statistic")
    assert not diffs["flag"].any(), diffs
    numeric = diffs.loc[["mean", "std", "p05", "p95", "border_mean"], "difference"]
    assert (numeric < 0.8).all(), numeric


def test_cli_keeps_an_identical_dataset_and_redraws_another(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_data.main([str(out), "--per-class", "2", "--seed", "4", "--workers", "1"]) == 0
    first = (out / "COVID" / "images" / "COVID-1.png").stat().st_mtime_ns
    assert demo_data.main([str(out), "--per-class", "2", "--seed", "4", "--workers", "1"]) == 0
    assert "already in" in capsys.readouterr().out
    assert (out / "COVID" / "images" / "COVID-1.png").stat().st_mtime_ns == first
    assert demo_data.main([str(out), "--per-class", "2", "--seed", "5", "--workers", "1"]) == 0
    info = json.loads((out / demo_data.MARKER_FILE).read_text())
    assert info["seed"] == 5 and info["version"] == demo_data.GENERATOR_VERSION
    # the same folder with --shortcut is another dataset: redrawn, and the marker says so
    capsys.readouterr()
    assert demo_data.main([str(out), "--per-class", "2", "--seed", "5", "--workers", "1",
                           "--shortcut"]) == 0
    assert "already in" not in capsys.readouterr().out
    info = json.loads((out / demo_data.MARKER_FILE).read_text())
    assert info["shortcut"] is True and info["shortcut_p"] == demo_data.SHORTCUT_P
    assert sorted(p.name for p in out.glob("*.metadata.xlsx")) == sorted(
        f"{c}.metadata.xlsx" for c in demo_data.CLASSES)


def test_external_site_differs_in_acquisition_and_shares_a_few_images(tmp_path):
    main, ext = tmp_path / "main", tmp_path / "ext"
    demo_data.generate(main, counts={c: 3 for c in demo_data.CLASSES}, seed=4, workers=1,
                       verbose=False)
    info = demo_data.generate_external(ext, per_class=4, effusion=3, seed=4, shared=2, workers=1,
                                       verbose=False)
    assert info["synthetic"] and info["site"] == "external"
    cand, rejects = split_dataset.scan_dataset(ext)
    assert not rejects
    assert cand.groupby("label").size().to_dict() == {
        "covid19": 6, "consolidation": 6, "No Finding": 6, "viral_pneumonia": 6, "Effusion": 3}
    own = cand[~cand["path"].str.contains("shared")]
    assert own["path"].str.endswith(".jpg").all() and (own["mask_path"] != "").all()
    with Image.open(ext / own["path"].iloc[0]) as im:
        assert im.size == (400, 400) and im.format == "JPEG"
    # the shared images are the main demo's, byte for byte (image and masks)
    for label, folder in demo_data.EXTERNAL_FOLDERS.items():
        if label == "Effusion":
            continue
        for i in (1, 2):
            for sub in ("images", "masks"):
                assert (ext / folder / sub / f"{folder}-shared-{i}.png").read_bytes() == \
                    (main / label / sub / f"{label}-{i}.png").read_bytes()
    # collimator shutters: every own image has dark bands at its edges, the main demo none
    for rel in own["path"]:
        a = np.asarray(Image.open(ext / rel).convert("L"), float)
        assert min(a[:2].mean(), a[-2:].mean(), a[:, :2].mean(), a[:, -2:].mean()) < 20, rel
    first = np.asarray(Image.open(main / "Normal" / "images" / "Normal-1.png"), float)
    assert first[:, :2].mean() > 20


def test_effusion_sits_at_a_lung_base_inside_its_mask():
    for i in range(6):
        img, lung, lesion = phantoms.render_phantom("Effusion", np.random.default_rng([3, i]))
        les, lg = lesion > 0, lung > 0
        assert les.sum() > 0.03 * lg.sum() and (les & lg).sum() / les.sum() > 0.9
        rows = np.nonzero(les.any(1))[0]
        lung_rows = np.nonzero(lg.any(1))[0]
        assert rows.mean() > np.percentile(lung_rows, 60)      # the base, not the apex
    with pytest.raises(ValueError, match="valid: COVID, Effusion, Lung_Opacity, Normal"):
        phantoms.render_phantom("Tuberculosis", np.random.default_rng(0))
