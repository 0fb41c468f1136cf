"""Odd-but-valid and broken inputs: one reader for all, clear rejects, nothing lost or written."""

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import split_dataset
import utils
from conftest import ROOT, tree_digest
from xray_io import read_xray

NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))
GRAY = (np.add.outer(np.arange(48), np.arange(40)) * 2 % 256).astype(np.uint8)  # (48, 40)


def _dicom(path, photometric, slope=1.0, intercept=0.0, window=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = GRAY.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = (GRAY.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _png_claiming(path, w, h):
    """A PNG whose header claims w x h pixels (a decompression bomb's first bytes)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def make_corpus(root):
    """Returns (valid relative paths, broken relative paths) written under root/<class>/."""
    a, b = root / "Normal", root / "COVID"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    im = Image.fromarray(GRAY)
    valid = {
        "Normal/plain.png": lambda p: im.save(p),
        "Normal/name with spaces, commas & accents é.png": lambda p: im.save(p),
        "Normal/sixteen.png": lambda p: Image.fromarray(GRAY.astype(np.uint16) * 257).save(p),
        "Normal/int32.tif": lambda p: im.convert("I").save(p),
        "Normal/UPPER.PNG": lambda p: im.convert("RGB").save(p),
        "Normal/rgba.png": lambda p: im.convert("RGBA").save(p),
        "Normal/la.png": lambda p: im.convert("LA").save(p),
        "Normal/palette.png": lambda p: im.convert("P").save(p),
        "Normal/bilevel.png": lambda p: im.convert("1").save(p),
        "Normal/cmyk.JPG": lambda p: im.convert("CMYK").save(p),
        "Normal/bitmap.bmp": lambda p: im.save(p),
        "COVID/sixteen.TIFF": lambda p: Image.fromarray(GRAY.astype(np.uint16) * 200).save(p),
        "COVID/mono2.dcm": lambda p: _dicom(p, "MONOCHROME2", 2.0, -10.0, (1000, 2000)),
        "COVID/mono1.dcm": lambda p: _dicom(p, "MONOCHROME1", 2.0, -10.0, (1000, 2000)),
        "COVID/rotated.jpg": lambda p: _exif_rotated(p),
    }
    broken = {
        "COVID/empty.png": lambda p: p.write_bytes(b""),
        "COVID/truncated.png": lambda p: p.write_bytes(_bytes(NOISE, "PNG")[:20000]),
        "COVID/half.jpg": lambda p: p.write_bytes(_bytes(im.resize((400, 400)), "JPEG")[:900]),
        "COVID/text.png": lambda p: p.write_text("404 Not Found"),
        "COVID/page.jpg": lambda p: p.write_text("<html><body>login</body></html>"),
        "COVID/bomb.png": lambda p: _png_claiming(p, 40000, 40000),
        "COVID/header_only.dcm": lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00"),
    }
    for rel, make in {**valid, **broken}.items():
        make(root / rel)
    (b / "folder.png").mkdir()
    (b / "dangling.png").symlink_to(root / "gone.png")
    return sorted(valid), sorted([*broken, "COVID/dangling.png", "COVID/folder.png"])


def _bytes(im, fmt):
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6                      # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(GRAY).save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    valid, broken = make_corpus(root)
    return root, valid, broken


def test_every_valid_file_reads_and_every_broken_one_names_itself(corpus):
    root, valid, broken = corpus
    for rel in valid:
        a = read_xray(root / rel)
        assert a.ndim == 2 and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1, rel
    assert read_xray(root / "Normal/plain.png").shape == (48, 40)
    assert read_xray(root / "COVID/rotated.jpg").shape == (40, 48)     # EXIF applied
    s16 = read_xray(root / "COVID/sixteen.TIFF")
    np.testing.assert_allclose(s16, GRAY.astype(np.uint16) * 200 / 65535.0, atol=1e-6)    # 16-bit kept
    for rel in broken:
        with pytest.raises((ValueError, OSError)) as e:
            read_xray(root / rel)
        assert rel.split("/")[-1] in str(e.value), (rel, str(e.value))


def test_dicom_monochrome_and_windowing(corpus):
    root, _, _ = corpus
    m1, m2 = read_xray(root / "COVID/mono1.dcm"), read_xray(root / "COVID/mono2.dcm")
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    # by hand: stored = GRAY * 16; modality LUT v = 2 * stored - 10; the DICOM linear window
    # (PS3.3 C.11.2.1.2) with centre 1000, width 2000 maps v <= 0 to the bottom, v > 1999 to the
    # top and ((v - 999.5) / 1999 + 0.5) = v / 1999 in between; min-max scaling keeps that
    v = 2.0 * GRAY.astype(np.float64) * 16 - 10
    expected = np.clip(v / 1999, 0, 1)
    assert expected.min() == 0 and expected.max() == 1 and ((expected > 0) & (expected < 1)).mean() > 0.1
    np.testing.assert_allclose(m2, expected, atol=1e-5)
    np.testing.assert_allclose(m1, 1 - expected, atol=1e-5)


def test_bomb_refused_before_allocating(corpus, tmp_path):
    root, _, _ = corpus
    tracemalloc.start()
    with pytest.raises(ValueError, match="bomb"):
        read_xray(root / "COVID/bomb.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6
    # 9000 x 9000 = 81M pixels: above our 60M limit, below the 2 x 89M at which PIL itself
    # raises, so only our own check can refuse it (and with our message)
    from PIL import Image
    assert 9000 * 9000 < 2 * Image.MAX_IMAGE_PIXELS
    _png_claiming(tmp_path / "big.png", 9000, 9000)
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"claims 9000x9000 = 81,000,000 pixels, more than the "
                                         r"limit of 60,000,000"):
        read_xray(tmp_path / "big.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6


def test_split_keeps_valid_rejects_broken_and_writes_nothing(corpus, tmp_path):
    root, valid, broken = corpus
    before = tree_digest(root)
    out = tmp_path / "m" / "manifest.csv"
    r = subprocess.run([sys.executable, str(ROOT / "split_dataset.py"), str(root), "--out",
                        str(out), "--val", "1", "--test", "1", "--workers", "1",
                        "--cache-dir", "none"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert tree_digest(root) == before
    m = pd.read_csv(out, keep_default_na=False)
    rej = pd.read_csv(split_dataset.rejects_path(out))
    assert sorted(m["path"]) == valid
    assert sorted(rej["path"]) == broken
    assert rej["reason"].str.len().gt(5).all()
    assert f"{len(broken)} rejected" in r.stdout


@pytest.mark.slow
def test_rerun_reuses_matching_manifest_and_notices_changes(corpus, tmp_path):
    root, _, _ = corpus
    out = tmp_path / "manifest.csv"
    cmd = [sys.executable, str(ROOT / "split_dataset.py"), str(root), "--out", str(out),
           "--val", "1", "--test", "1", "--workers", "1", "--cache-dir", "none"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert "reusing it" in r.stdout
    Image.fromarray(GRAY).save(root / "Normal" / "new.png")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert "re-splitting" in r.stdout and "new.png" in out.read_text()
    r = subprocess.run(cmd + ["--seed", "7"], capture_output=True, text=True, cwd=ROOT)
    assert "re-splitting" in r.stdout


def test_dataset_skips_files_that_break_after_the_split(corpus):
    root, valid, _ = corpus
    df = pd.DataFrame({"path": valid, "label": [v.split("/")[0] for v in valid]})
    (root / valid[0]).write_bytes(b"corrupted later")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        ds = utils.XrayDataset(df, root, ["COVID", "Normal"], 32, preload=True)
    assert len(ds) == len(valid) - 1 and ds.skipped[0][0] == valid[0]


def test_kaggle_metadata_becomes_source_column(demo_dir, tmp_path):
    import shutil
    d = tmp_path / "ds"
    shutil.copytree(demo_dir, d)
    for x in d.glob("*.metadata.xlsx"):  # the demo writes its own; only COVID's here
        x.unlink()
    names = [p.stem.upper() for p in sorted((d / "COVID" / "images").iterdir())]
    pd.DataFrame({"FILE NAME": names, "FORMAT": "PNG", "SIZE": "256*256",
                  "URL": ["https://a.example/x" if i % 2 else "https://b.example/y"
                          for i in range(len(names))]}).to_excel(
        d / "COVID.metadata.xlsx", index=False, engine="openpyxl")
    m = split_dataset.make_split(d, 3, 3, workers=1)
    assert "source" in m.columns
    cov = m[m["label"] == "COVID"]
    assert set(cov["source"]) == {"https://a.example/x", "https://b.example/y"}
    assert (m.loc[m["label"] != "COVID", "source"] == "").all()
