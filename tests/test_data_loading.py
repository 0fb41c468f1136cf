import shutil

import numpy as np
import pytest
import torch

import exploration
import image_cache
import runtime
import utils


def test_dataset_items_and_masks(demo_dir, demo_manifest):
    names = utils.class_names_from(demo_manifest)
    assert names == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    df = demo_manifest[demo_manifest["split"] == "test"]
    for preload in (False, True):
        ds = utils.XrayDataset(df, demo_dir, names, 48, preload=preload,
                               mask_column="lesion_mask_path")
        x, y, i, m = ds[0]
        assert x.shape == (1, 48, 48) and x.dtype == torch.uint8
        assert int(y) == names.index(df.iloc[0]["label"]) and i == 0
        assert m.shape == (48, 48) and m.dtype == torch.bool
    xb = utils.prepare_batch(x[None], torch.device("cpu"))
    assert xb.shape == (1, 3, 48, 48) and xb.dtype == torch.float32
    mean = torch.tensor(utils.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(utils.IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(xb[0] * std + mean, (x.float() / 255).expand(3, -1, -1))
    normal = [k for k in range(len(ds)) if ds.df.at[k, "label"] == "Normal"][0]
    assert not ds[normal][3].any()   # no lesion mask -> empty


def test_loaders_shapes_and_cap(demo_dir, demo_manifest):
    names = utils.class_names_from(demo_manifest)
    L = utils.make_loaders(demo_manifest, demo_dir, names, 32, batch_size=8, num_workers=0,
                           max_per_class=4)
    assert set(L) == {"train", "val", "test"}
    assert len(L["train"].dataset) == 16
    x, y, idx = next(iter(L["train"]))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert [len(b[1]) for b in L["val"]] == [8, 4]


def test_weighted_sampler_balances_classes():
    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)
    s = utils.WeightedEpochSampler(labels, 3, seed=0, batch_size=32)
    assert len(s) == len(labels)
    draws = torch.cat([labels[list(s)] for s.epoch in range(10)])
    freq = torch.bincount(draws, minlength=3).double() / len(draws)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)


def test_bad_file_at_training_time_is_skipped(demo_dir, demo_manifest, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(demo_dir, d)
    df = demo_manifest[demo_manifest["split"] == "val"]
    victim = d / df.iloc[0]["path"]
    victim.write_bytes(b"broken after the split")
    (d / df.iloc[1]["path"]).unlink()
    names = utils.class_names_from(demo_manifest)
    loader = utils.eval_loader(df, d, names, 32, batch_size=64, num_workers=0, preload=False)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        batches = list(loader)
    assert sum(len(b[1]) for b in batches) == len(df) - 2
    with pytest.warns(UserWarning, match="skipping unreadable image") as caught:
        ds = utils.XrayDataset(df, d, names, 32, preload=True)
    assert len(ds) == len(df) - 2 and len(ds.skipped) == 2 and len(caught) == 2


def test_seeded_loaders_repeat(demo_dir, demo_manifest):
    names = utils.class_names_from(demo_manifest)

    def first_batch():
        L = utils.make_loaders(demo_manifest, demo_dir, names, 32, 8, 0, seed=3,
                               splits=("train",))
        torch.manual_seed(0)
        return next(iter(L["train"]))
    a, b = first_batch(), first_batch()
    assert torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])


def test_choose_device_and_image_statistics(demo_dir, demo_manifest):
    assert runtime.choose_device("cpu").type == "cpu"
    assert runtime.choose_device().type in ("cpu", "cuda", "mps")
    stats = exploration.image_statistics(demo_manifest, demo_dir, per_class=5)
    assert len(stats) == 20 and set(stats["mode"]) == {"L"}
    diffs = exploration.class_differences(stats)
    assert set(diffs["statistic"]) >= {"mean", "size", "mode"}
    assert not diffs.loc[diffs["statistic"].isin(["size", "mode"]), "flag"].any()
    assert utils.dataset_info(demo_dir)["synthetic"] is True


def test_augment_batch_is_mild_seeded_and_device_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 40, 40, generator=g)
    torch.manual_seed(1)
    a = utils.augment_batch(x.clone())
    torch.manual_seed(1)
    b = utils.augment_batch(x.clone())
    assert torch.equal(a, b) and a.shape == x.shape
    assert 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, x)
    # small: the mean absolute change stays well below the image's own variation
    assert (a - x).abs().mean() < 0.5 * (x - x.mean()).abs().mean() + 0.2
    same = utils.augment_batch(x.clone(), max_rotate=0, max_translate=0, scale=(1, 1),
                               brightness=0, contrast=0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


def test_decoded_cache_same_batches_invalidation_and_fallback(demo_dir, demo_manifest, tmp_path,
                                                              monkeypatch):
    import os
    import shutil
    names = utils.class_names_from(demo_manifest)
    df = demo_manifest[demo_manifest["split"] == "train"]
    plain = utils.XrayDataset(df, demo_dir, names, 40)                      # decode per item
    cached = utils.XrayDataset(df, demo_dir, names, 40, preload=True, cache_dir=tmp_path / "c")
    for i in range(len(df)):
        assert torch.equal(plain[i][0], cached[i][0])
    files = sorted((tmp_path / "c").glob("*.u8"))
    assert len(files) == 1 and files[0].stat().st_size == len(df) * 40 * 40
    # a second dataset reuses the file (no decoding: reading a broken decoder would fail)
    monkeypatch.setattr(image_cache, "load_resized_or_reason", None)
    again = utils.XrayDataset(df, demo_dir, names, 40, preload=True, cache_dir=tmp_path / "c")
    assert torch.equal(again[3][0], cached[3][0])
    monkeypatch.undo()
    # another size or a touched file gives a new cache file
    utils.XrayDataset(df, demo_dir, names, 32, preload=True, cache_dir=tmp_path / "c")
    victim = demo_dir / df.iloc[0]["path"]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    utils.XrayDataset(df, demo_dir, names, 40, preload=True, cache_dir=tmp_path / "c")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(list((tmp_path / "c").glob("*.u8"))) == 3
    # no space: falls back to RAM with a warning, same images
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.warns(UserWarning, match="cache not used"):
        ram = utils.XrayDataset(df, demo_dir, names, 40, preload=True, cache_dir=tmp_path / "d")
    assert isinstance(ram.images, np.ndarray) and not isinstance(ram.images, np.memmap)
    assert torch.equal(ram[5][0], plain[5][0])


def test_masks_stored_as_0_1_0_255_or_16_bit_agree(tmp_path):
    from PIL import Image
    inside = np.zeros((40, 40), bool)
    inside[10:30, 5:20] = True
    variants = {"01.png": Image.fromarray(inside.astype(np.uint8)),
                "0255.png": Image.fromarray(inside.astype(np.uint8) * 255),
                "16bit.png": Image.fromarray(inside.astype(np.uint16) * 65535)}
    for name, im in variants.items():
        im.save(tmp_path / name)
        got = utils.load_mask(tmp_path / name, 40)
        assert got.dtype == bool and np.array_equal(got, inside), name
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "empty.png")
    assert not utils.load_mask(tmp_path / "empty.png", 20).any()


def test_decoded_cache_keys_on_the_decoder_syncs_and_sweeps_crashed_builds(
        demo_dir, demo_manifest, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    df = demo_manifest[demo_manifest["split"] == "val"]
    c = tmp_path / "c"
    c.mkdir()
    # a build killed midway left its temporary file; a live process's build is left alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = c / f"decoded-abc-24px.u8.tmp{dead.pid}"
    stale.write_bytes(b"half")
    live = c / f"decoded-abc-24px.u8.tmp{os.getppid()}"
    live.write_bytes(b"half")
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    image_cache.decoded_images(df, demo_dir, 24, cache_dir=c, workers=1)
    assert not stale.exists() and live.exists()
    built = sorted(c.glob("*.u8"))
    assert len(built) == 1 and any(".u8.tmp" in p for p in synced)  # synced before the rename
    # another decoder version never reuses it; an edit outside the decoder keeps the version
    version = image_cache.decoder_version()
    image_cache.decoder_version.cache_clear()
    monkeypatch.setattr(image_cache.xray_io, "is_image_name", lambda name: False)
    monkeypatch.setattr(image_cache.files, "write_json_atomic", lambda obj, path: None)
    assert image_cache.decoder_version() == version
    image_cache.decoder_version.cache_clear()
    monkeypatch.setattr(image_cache.xray_io, "DECODER", (*image_cache.xray_io.DECODER[:-1],
                                                          utils.augment_batch))
    assert image_cache.decoder_version() != version
    try:
        image_cache.decoded_images(df, demo_dir, 24, cache_dir=c, workers=1)
    finally:
        image_cache.decoder_version.cache_clear()
    assert len(sorted(c.glob("*.u8"))) == 2


@pytest.mark.parametrize("draw", [0.0, 1.0])
def test_augment_batch_extreme_draws_are_the_documented_transform(draw, monkeypatch):
    """Every random number forced to its extreme: the rotation is exactly +-7 degrees, the scale
    0.92 or 1.08, the shift +-0.06 of the image, brightness and contrast +-20%; nothing more."""
    S = 101
    x = torch.zeros(1, 1, S, S)
    pts = np.array([[30.0, 40.0], [70.0, 60.0]])          # (x, y) pixel centres of two dots
    for px, py in pts:
        x[0, 0, int(py) - 1:int(py) + 2, int(px) - 1:int(px) + 2] = 0.5
    monkeypatch.setattr(torch, "rand", lambda *shape, **k: torch.full(shape, draw))
    out = utils.augment_batch(x.clone())[0, 0].numpy()
    monkeypatch.undo()
    got = []
    for px, py in pts:  # centroid of each dot in the output, searched near its expected place
        ys, xs = np.mgrid[0:S, 0:S]
        near = (np.hypot(xs - px, ys - py) < 18) & (out > out.mean() + 0.05)
        w = out * near
        got.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    got = np.array(got)
    sign = 1 if draw == 1.0 else -1
    angle, s, shift = np.radians(7.0) * sign, 1 + 0.08 * sign, 0.06 * 2 * sign
    # grid_sample: input = A @ output + t in [-1, 1] coordinates, A = R(angle) / s
    A = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / s
    norm = (pts + 0.5) / S * 2 - 1
    expected = (np.linalg.solve(A, (norm - shift).T).T + 1) / 2 * S - 0.5
    np.testing.assert_allclose(got, expected, atol=0.35)
    v_in, v_out = pts[1] - pts[0], got[1] - got[0]
    turned = np.degrees(np.arctan2(v_out[1], v_out[0]) - np.arctan2(v_in[1], v_in[0]))
    assert abs(abs(turned) - 7.0) < 0.5
    assert np.linalg.norm(v_out) / np.linalg.norm(v_in) == pytest.approx(s, abs=0.01)
    # exposure: brightness x(1 +- 0.2), then contrast x(1 +- 0.2) around the image mean
    flat = torch.full((1, 1, 8, 8), 0.5)
    monkeypatch.setattr(torch, "rand", lambda *shape, **k: torch.full(shape, draw))
    bright = utils.augment_batch(flat.clone(), max_rotate=0, max_translate=0, scale=(1, 1))
    assert bright[0, 0, 4, 4].item() == pytest.approx(0.5 * (1 + 0.2 * sign), abs=1e-4)


class _CountingLoader(torch.utils.data.DataLoader):
    passes = 0

    def __iter__(self):
        type(self).passes += 1
        return super().__iter__()


@pytest.mark.parametrize("progress", [True, False])
def test_a_progress_bar_starts_one_pass_of_the_loader(monkeypatch, progress):
    """In a Jupyter kernel tqdm.auto is tqdm.notebook, which calls ``iter()`` on what it gets
    and then iterates it again: given a loader, that started a second pass with its own worker
    processes, abandoned with batches in flight (the "can only test a child process"
    tracebacks of real-data runs). ``utils.progress_bar``, used by training and prediction,
    hands it the pass's iterator."""
    import inference
    from tqdm.asyncio import tqdm_asyncio   # the base of tqdm.notebook: iter() in __init__
    monkeypatch.setattr(utils, "tqdm", tqdm_asyncio)
    _CountingLoader.passes = 0
    loader = _CountingLoader(list(range(8)), batch_size=2)
    assert [b.tolist() for b in utils.progress_bar(loader, "x", progress)] == \
        [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _CountingLoader.passes == 1
    data = [(torch.rand(3, 8, 8), torch.tensor(k % 2), torch.tensor(k)) for k in range(6)]
    pairs = _CountingLoader(data, batch_size=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    y, p, idx = inference.predict_loader(model, pairs, torch.device("cpu"), progress=progress)
    assert _CountingLoader.passes == 2 and idx.tolist() == list(range(6))
