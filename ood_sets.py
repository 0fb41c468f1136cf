"""Pictures a chest X-ray model should call unfamiliar, made offline, for evaluating its
out-of-distribution flag (``evaluation.familiarity_of``).

- ``turned``: a radiograph turned 90 degrees, upside down, inverted (a negative), or cropped to
  its top-left corner (40% of each side): a radiograph still, but not as the model knows them.
- ``non_radiographs``: what is not a chest radiograph at all: photographs, an MR slice and two
  terrain maps from matplotlib's sample data (already installed), and drawn ones: a CT-like
  cross-section, noise, a gradient, a checkerboard, text, a drawing. Gray float images in [0, 1].
"""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

TURNS = ("rot90", "upside_down", "inverted", "corner")


def turned(image: np.ndarray) -> dict[str, np.ndarray]:
    """``{kind: image}`` for each of ``TURNS``."""
    h, w = image.shape
    return {"rot90": np.ascontiguousarray(np.rot90(image)),
            "upside_down": np.ascontiguousarray(image[::-1]), "inverted": 1.0 - image,
            "corner": np.ascontiguousarray(image[:h * 2 // 5, :w * 2 // 5])}


def _unit(a) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(2)
    a = a - a.min()
    return a / max(float(a.max()), 1e-6)


def _matplotlib_samples() -> dict[str, np.ndarray]:
    import matplotlib
    d = Path(matplotlib.get_data_path()) / "sample_data"
    out = {}
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (d / name).is_file():
            out[f"photo/drawing {name}"] = _unit(Image.open(d / name).convert("RGB"))
    if (d / "s1045.ima.gz").is_file():
        mr = np.frombuffer(gzip.open(d / "s1045.ima.gz").read(), ">u2").reshape(256, 256)
        out["MR slice s1045"] = _unit(mr)
    for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        if (d / name).is_file():
            with np.load(d / name) as z:
                out[f"terrain {name}"] = _unit(z[z.files[0]])
    return out


def _drawn(seed: int = 0) -> dict[str, np.ndarray]:
    s = 256
    yy, xx = np.mgrid[-1:1:s * 1j, -1:1:s * 1j]
    ct = np.zeros((s, s), np.float32)
    for a, b, x0, y0, v in ((.69, .92, 0, 0, 1), (.66, .87, 0, -.02, -.8), (.11, .31, .22, 0, -.2),
                            (.16, .41, -.22, 0, -.2), (.21, .25, 0, .35, .1)):
        ct[((xx - x0) / a) ** 2 + ((yy - y0) / b) ** 2 <= 1] += v
    text = np.full((s, s), 255, np.uint8)
    cv2.putText(text, "Hello", (20, 140), cv2.FONT_HERSHEY_SIMPLEX, 2.5, 0, 6)
    drawing = np.zeros((s, s), np.uint8)
    cv2.circle(drawing, (128, 128), 90, 255, -1)
    cv2.circle(drawing, (100, 110), 20, 0, -1)
    return {"CT-like cross-section": _unit(ct),
            "noise": np.random.default_rng(seed).random((s, s)).astype(np.float32),
            "gradient": np.tile(np.linspace(0, 1, s, dtype=np.float32), (s, 1)),
            "checkerboard": ((np.indices((s, s)) // 32).sum(0) % 2).astype(np.float32),
            "text": text / np.float32(255), "drawing": drawing / np.float32(255)}


def non_radiographs(seed: int = 0) -> dict[str, np.ndarray]:
    """``{name: gray float image}``: matplotlib's sample pictures (where installed) and drawn
    ones (``_drawn``), 12 in all with matplotlib's."""
    return {**_matplotlib_samples(), **_drawn(seed)}
