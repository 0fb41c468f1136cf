import numpy as np
import pytest
from PIL import Image

from conftest import REALCXR
from xray_io import read_xray


def test_modes_and_16_bit(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)   # 0..65520
    Image.fromarray(ramp).save(tmp_path / "a16.png")
    a = read_xray(tmp_path / "a16.png")
    assert a.dtype == np.float32 and a.shape == (64, 64)
    np.testing.assert_allclose(a, ramp / 65535.0, atol=1e-6)   # 16-bit precision kept
    g = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(g).convert("RGB").save(tmp_path / "rgb.PNG")
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(g).convert("P").save(tmp_path / "p.bmp")
    np.testing.assert_allclose(read_xray(tmp_path / "rgb.PNG"), g / 255.0, atol=1 / 255)
    assert read_xray(tmp_path / "g.jpg").shape == (64, 64)
    assert read_xray(tmp_path / "p.bmp").ndim == 2


def test_failures_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        read_xray(tmp_path / "bad.png")
    with pytest.raises(OSError, match="missing.png"):
        read_xray(tmp_path / "missing.png")
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="decompression bomb"):
        read_xray(tmp_path / "big.png", max_pixels=10_000)


@pytest.mark.skipif(not REALCXR.is_dir(), reason="../shared/realcxr not present")
def test_real_images_read_as_2d():
    files = [p for p in REALCXR.rglob("*") if p.is_file() and p.suffix.lower() in
             (".png", ".jpg", ".jpeg", ".dcm")]
    assert len(files) > 400
    for p in files:
        a = read_xray(p)
        assert a.ndim == 2 and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1, p


@pytest.mark.skipif(not (REALCXR / "dicom").is_dir(), reason="../shared/realcxr not present")
def test_monochrome1_is_inverse_of_monochrome2():
    import pydicom
    files = sorted((REALCXR / "dicom").iterdir())
    by_pi = {str(pydicom.dcmread(f, stop_before_pixels=True).PhotometricInterpretation): f
             for f in files}
    m1, m2 = read_xray(by_pi["MONOCHROME1"]), read_xray(by_pi["MONOCHROME2"])
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
