import json

import numpy as np
from PIL import Image

import demo_data


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
        img, lung, lesion = demo_data.render_phantom(c, rng)
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
            img = demo_data.render_phantom(c, np.random.default_rng([9, i]))[0] / 255.0
            stats[c].append((img.mean(), img.std()))
    arr = {c: np.array(v) for c, v in stats.items()}
    for k in (0, 1):
        means = [a[:, k].mean() for a in arr.values()]
        spread = np.mean([a[:, k].std() for a in arr.values()])
        assert (max(means) - min(means)) < 0.6 * spread, (k, means, spread)


def test_scaled_counts_follow_real_proportions():
    c = demo_data.scaled_counts(0.1)
    assert c == {"COVID": 362, "Lung_Opacity": 601, "Normal": 1019, "Viral Pneumonia": 134}
