"""Synthetic chest radiograph phantoms for an offline demo of the whole study.

THIS IS NOT MEDICAL DATA. The images are drawn from simple geometric anatomy (body outline, lungs,
heart/mediastinum, ribs, clavicles, spine, diaphragm) plus a class "finding" that loosely follows
radiology:

- ``Lung_Opacity``: multifocal dense consolidation, one large blob and one or two smaller ones,
  at least one in each lung, any zone;
- ``COVID``: bilateral, peripheral, lower-zone ground-glass opacity covering roughly a quarter to
  a half of each lower lung;
- ``Viral Pneumonia``: bilateral perihilar interstitial opacity (haze and radiating streaks);
- ``Normal``: no finding.

Every finding is drawn visible at 64-128 px and comes with its lesion mask. Nuisance variation
(patient size, position, rotation, exposure, contrast, noise, blur, an L/R marker and corner
text) is drawn independently of the class. Each image is finally rescaled to a mean and standard
deviation drawn independently of the class (measured outside the finding, so the finding does
not change how the rest of the image looks), so global image statistics do not separate the
classes and a model has to look at the findings. Results on this data say that the pipeline
works, nothing about COVID-19.

Layout written (the newest Kaggle release's, so the demo and real data share one code path)::

    OUT/README.txt, OUT/demo_dataset.json        # "this is synthetic" marker + parameters
    OUT/<class>/images/<class>-<i>.png           # 299x299 8-bit grayscale
    OUT/<class>/masks/<class>-<i>.png            # lung mask, 0/255 (like Kaggle's masks/)
    OUT/<class>/lesion_masks/<class>-<i>.png     # finding mask, 0/255 (not for Normal)

Each image also has a *source* (the hospital or collection it came from), written like Kaggle's
metadata to ``OUT/<class>.metadata.xlsx`` (columns FILE NAME, FORMAT, SIZE, URL), so
``split_dataset.py`` gives the demo a ``source`` column the way it does the real database. In the
normal demo the source is drawn independently of the class and leaves no trace in the image.
``--shortcut`` plants the real database's flaw instead: each class comes mostly (``SHORTCUT_P``)
from its own source, and each source burns its own mark into the image outside the lungs
(bright left and right borders, a dark band at the bottom, a bright bar at the right edge, or
nothing), the way a source hospital's borders and labels run through the real collage. A model can then reach
high accuracy without looking at the lungs; notebook 3's shortcut audit is there to catch it.

CLI: ``python demo_data.py OUT [--scale 0.1] [--seed 0] [--size 299] [--shortcut] [--force]`` (a
folder that already holds the same dataset is kept).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from xray_io import process_pool

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
# Class sizes of the COVID-19 Radiography Database (Kaggle release with 21,165 images).
REAL_COUNTS = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
MARKER_FILE = "demo_dataset.json"
# Bumped whenever the drawing changes, so an older demo folder is redrawn rather than reused.
GENERATOR_VERSION = 3
# Demo sources (hospitals/collections) and the mark each burns in outside the lungs under
# --shortcut; with --shortcut, class i comes from SOURCES[i] with probability SHORTCUT_P (else
# from one of the others), the way all Viral Pneumonia images of the real database come from one
# paediatric hospital.
SOURCES = ("site-A", "site-B", "site-C", "site-D")
SOURCE_MARKS = {"site-A": "bright left and right borders", "site-B": "dark band at the bottom",
                "site-C": "bright bar at the right edge", "site-D": "none"}
SHORTCUT_P = 0.95
SOURCE_URL = "https://demo.invalid/"
EXTERNAL_STREAM = 7_000_001  # the external site's images draw from their own random streams


def scaled_counts(scale: float) -> dict[str, int]:
    """The real database's class sizes times ``scale`` (at least 1 image per class)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return {c: max(1, int(round(n * scale))) for c, n in REAL_COUNTS.items()}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise (size, size) float32, made by upsampling a grid."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2*size, 2*size) white-noise field; random crops of it are each image's quantum
    noise (drawing fresh Gaussian noise per image was the generator's single slowest step)."""
    return np.random.default_rng(20200301).standard_normal((2 * size, 2 * size), dtype=np.float32)


def _add_blob(canvas: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float,
              rng: np.random.Generator, lobes: int = 4) -> None:
    """Max a soft irregular blob in [0, 1] into ``canvas`` in place: a few overlapping filled
    ellipses, blurred. Drawn in a small window around the centre (most of the image stays 0)."""
    h, w = canvas.shape
    pad = int(2.2 * max(rx, ry)) + 2
    x0, y0 = max(0, int(cx) - pad), max(0, int(cy) - pad)
    x1, y1 = min(w, int(cx) + pad), min(h, int(cy) + pad)
    if x1 <= x0 or y1 <= y0:
        return
    m = np.zeros((y1 - y0, x1 - x0), np.float32)
    for _ in range(lobes):
        ox, oy = rng.normal(0, 0.35 * rx), rng.normal(0, 0.35 * ry)
        s = rng.uniform(0.55, 1.0)
        cv2.ellipse(m, (int(cx + ox) - x0, int(cy + oy) - y0),
                    (max(1, int(rx * s)), max(1, int(ry * s))),
                    angle + rng.uniform(-30, 30), 0, 360, 1.0, -1)
    k = max(3, int(0.6 * min(rx, ry)) | 1)
    np.maximum(canvas[y0:y1, x0:x1], cv2.GaussianBlur(m, (k, k), 0), out=canvas[y0:y1, x0:x1])


@dataclass(frozen=True)
class Site:
    """How a site acquires its radiographs: everything after the patient is posed. The findings
    and the anatomy are the same everywhere; a second site differs in what its equipment and
    habits add (the exposure curve, blur, noise, collimation, markers, image size, file type)."""
    name: str
    curve: str = "gamma"                     # "gamma" (power law) or "film" (sigmoid response)
    curve_range: tuple = (0.8, 1.25)         # gamma exponent, or the film curve's slope
    blur: tuple = (0.3, 1.4)                 # Gaussian blur sigma, px at 299
    noise: tuple = (0.005, 0.025)            # quantum noise amplitude
    target_std: tuple = (0.17, 0.23)         # display windowing: target std and mean
    target_mean: tuple = (0.42, 0.55)
    collimation: tuple = (0.0, 0.0)          # dark shutter band per side, fraction of the side
    marker: str = "letter"                   # "letter" (L/R in a corner) or "boxed" (site label)
    size: int = 299
    image_format: str = ".png"               # file type written (masks follow it)


SITE_A = Site("site A")
# The external demo site: a film-like exposure curve, more blur and noise, collimator shutters,
# a boxed site label, larger JPEG images. Its class folders have other names (EXTERNAL_FOLDERS),
# and it has a class the models never saw (pleural effusion).
SITE_B = Site("site B", curve="film", curve_range=(5.0, 7.5), blur=(0.8, 2.0),
              noise=(0.02, 0.04), target_std=(0.19, 0.26), target_mean=(0.36, 0.48),
              collimation=(0.02, 0.07), marker="boxed", size=400, image_format=".jpg")
SITES = {"A": SITE_A, "external": SITE_B}
EXTERNAL_FOLDERS = {"COVID": "covid19", "Lung_Opacity": "consolidation", "Normal": "No Finding",
                    "Viral Pneumonia": "viral_pneumonia", "Effusion": "Effusion"}


def _anatomy(rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient in a canonical frame (upright, centred): ``(image float32, lung mask bool,
    body float32)`` (S, S); soft tissue, lungs with vascular texture, heart, bones."""
    u = S / 299.0  # all geometry below is in 299-px units
    img = np.full((S, S), 0.04, np.float32)  # air around the patient

    # Body outline: torso ellipse + neck + shoulders (soft tissue).
    body = np.zeros((S, S), np.float32)
    cv2.ellipse(body, (S // 2, int(175 * u)), (int(rng.uniform(128, 142) * u), int(170 * u)),
                0, 0, 360, 1.0, -1)
    cv2.rectangle(body, (int(120 * u), 0), (int(179 * u), int(40 * u)), 1.0, -1)
    cv2.ellipse(body, (S // 2, int(45 * u)), (int(145 * u), int(35 * u)), 0, 0, 360, 1.0, -1)

    # Lungs: two ellipses clipped by domed hemidiaphragms (image left = patient's right).
    lungs = np.zeros((S, S), np.float32)
    ly = rng.uniform(128, 138) * u
    for side, cx in ((-1, 96), (1, 203)):
        rx = rng.uniform(44, 50) * u
        ry = rng.uniform(88, 96) * u
        cv2.ellipse(lungs, (int(cx * u), int(ly)), (int(rx), int(ry)), side * -6, 0, 360, 1.0, -1)
    x = np.arange(S, dtype=np.float32)
    dome_r = rng.uniform(212, 222) * u  # the right hemidiaphragm sits a little higher
    dome_l = dome_r + rng.uniform(4, 10) * u
    right = x < S / 2
    dome = np.where(right, dome_r, dome_l) - 0.0025 / u * (x - np.where(right, 96, 203) * u) ** 2
    lungs[np.arange(S, dtype=np.float32)[:, None] > dome[None, :]] = 0  # (S, S) below the domes
    # Heart/mediastinum: a bright shape, central and to the patient's left (image right).
    heart = np.zeros((S, S), np.float32)
    cv2.ellipse(heart, (int(rng.uniform(160, 170) * u), int(rng.uniform(182, 190) * u)),
                (int(rng.uniform(42, 50) * u), int(rng.uniform(38, 44) * u)), -20, 0, 360, 1.0, -1)
    cv2.rectangle(heart, (int(135 * u), int(50 * u)), (int(165 * u), int(180 * u)), 1.0, -1)
    lungs[heart > 0] = 0
    lung_mask = lungs > 0
    # Soft tissue, aerated lung with vascular texture, heart: one density map, blurred once.
    anatomy = 0.50 * body + 0.10 * heart - lungs * (0.33 - 0.03 * _smooth_noise(rng, S, 24))
    img += cv2.GaussianBlur(anatomy, (0, 0), 2.5 * u)

    # Bones: spine, ribs (posterior arcs), clavicles.
    bones = np.zeros((S, S), np.float32)
    cv2.rectangle(bones, (int(141 * u), 0), (int(158 * u), S), 0.5, -1)
    for k in range(9):
        y0 = (62 + 19 * k) * u
        for side in (-1, 1):
            cv2.ellipse(bones, (int(S / 2 + side * 8 * u), int(y0)), (int(88 * u), int(26 * u)), 0,
                        (0, 90)[side == -1] + 10, (90, 180)[side == -1] - 10 + 0, 0.45,
                        max(1, int(5 * u)))
    for side in (-1, 1):
        cv2.line(bones, (int(S / 2 + side * 12 * u), int(52 * u)),
                 (int(S / 2 + side * 105 * u), int(rng.uniform(34, 44) * u)), 0.6, max(1, int(7 * u)))
    img += 0.16 * cv2.GaussianBlur(bones, (0, 0), 1.2 * u) * body
    return img, lung_mask, body


# The findings: sized and dense enough that a radiologist would call them visible (and a CNN
# trained from scratch at 64-128 px can see them), placed where the disease puts them. Each takes
# the lung mask as float32 (S, S) and returns the finding's density (S, S), before it is clipped
# to the lungs.
def _lung_opacity(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Multifocal dense consolidation: one large lobar/segmental blob and one or two smaller
    ones, at least one in each lung (so "one lung is clear" does not give the class away), any
    zone, nearly as dense as soft tissue."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    first = rng.choice((96, 203))
    for i in range(rng.integers(2, 4)):
        side = first if i == 0 else (299 - first if i == 1 else rng.choice((96, 203)))
        for _ in range(8):  # redraw a blob that would sit mostly behind the heart
            blob = np.zeros((S, S), np.float32)
            cx = (side + rng.uniform(-20, 20)) * u
            cy = rng.uniform(75, 190) * u
            r = rng.uniform(24, 34) * u if i == 0 else rng.uniform(14, 22) * u
            _add_blob(blob, cx, cy, r, r * rng.uniform(0.8, 1.3), rng.uniform(0, 180), rng)
            if (blob * lm).sum() >= 0.7 * blob.sum():
                break
        np.maximum(finding, blob, out=finding)
    return finding * 0.34


def _covid(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground glass: patchy, hazy (vessels and ribs still show
    through), covering roughly a quarter to a half of each lower lung."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    for cx0 in (96, 203):
        lateral = -1 if cx0 < 150 else 1
        for _ in range(rng.integers(4, 7)):
            cx = (cx0 + lateral * rng.uniform(18, 40)) * u
            cy = rng.uniform(140, 210) * u
            _add_blob(finding, cx, cy, rng.uniform(16, 24) * u, rng.uniform(20, 32) * u, 0, rng)
    return finding * (0.22 * (1 + 0.35 * _smooth_noise(rng, S, 12)))


def _viral_pneumonia(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Bilateral perihilar interstitial opacity: a haze around each hilum with streaks radiating
    outwards (peribronchial cuffing), sparing the periphery."""
    u = S / 299.0
    streaks = np.zeros((S, S), np.float32)
    for hx in (118, 181):
        lateral = -1 if hx < 150 else 1
        hy = rng.uniform(118, 135)
        for _ in range(rng.integers(10, 15)):
            ang = rng.uniform(-70, 70) * np.pi / 180
            ln = rng.uniform(30, 55)
            ex, ey = hx + lateral * ln * np.cos(ang), hy + ln * np.sin(ang)
            cv2.line(streaks, (int(hx * u), int(hy * u)), (int(ex * u), int(ey * u)), 1.0,
                     max(1, int(3 * u)))
        haze = np.zeros((S, S), np.float32)
        _add_blob(haze, (hx + lateral * 20) * u, hy * u, 26 * u, 36 * u, 0, rng)
        streaks += 0.7 * haze
    return 0.26 * cv2.GaussianBlur(np.clip(streaks, 0, 1), (0, 0), 1.5 * u)


def _effusion(rng: np.random.Generator, S: int, lm: np.ndarray) -> np.ndarray:
    """Pleural effusion (a class only the external demo site has): fluid filling the base of one
    lung, or of both, up to a meniscus that climbs towards the lateral chest wall, dense as soft
    tissue, blunting the costophrenic angle."""
    u = S / 299.0
    finding = np.zeros((S, S), np.float32)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32)
    sides = (96, 203) if rng.random() < 0.35 else (rng.choice((96, 203)),)
    for cx in sides:
        lateral = -1 if cx < 150 else 1
        level = rng.uniform(165, 195) * u                       # the fluid level at mid-lung
        rise = rng.uniform(25, 45) * u                          # how far the meniscus climbs
        edge = np.clip(lateral * (x - cx * u) / (50 * u), 0, 1)  # 0 medially, 1 at the wall
        top = level - rise * edge ** 2
        side = (lateral * (x - 150 * u)) > 0
        finding[side] = np.maximum(finding[side], np.clip((y - top) / (6 * u), 0, 1)[side])
    return 0.32 * cv2.GaussianBlur(finding, (0, 0), 2.0 * u)


FINDINGS = {"Lung_Opacity": _lung_opacity, "COVID": _covid, "Viral Pneumonia": _viral_pneumonia,
            "Effusion": _effusion}


def _pose(img: np.ndarray, lung_mask: np.ndarray, lesion: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient size, position and rotation: one random affine for image and masks (uint8 0/255
    masks out)."""
    S = img.shape[0]
    u = S / 299.0
    scale = rng.uniform(0.86, 1.08)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-7, 7), scale)
    M[:, 2] += rng.uniform(-14, 14, 2) * u
    warp = lambda a, interp: cv2.warpAffine(a, M, (S, S), flags=interp, borderValue=0)  # noqa: E731
    img = warp(img, cv2.INTER_LINEAR)
    img[img == 0] = 0.04
    return (img, warp(lung_mask.astype(np.uint8) * 255, cv2.INTER_NEAREST),
            warp(lesion.astype(np.uint8) * 255, cv2.INTER_NEAREST))


def _acquire(img: np.ndarray, lesion_out: np.ndarray, rng: np.random.Generator, site: Site
             ) -> np.ndarray:
    """What the site's equipment does to the posed patient: exposure curve, blur, quantum
    noise, windowing to a random mean and spread, collimation, then a marker and text. Returns
    the uint8 image."""
    S = img.shape[0]
    u = S / 299.0
    img = np.clip(img, 0, None)
    k = rng.uniform(*site.curve_range)
    if site.curve == "gamma":
        img = img ** k
    else:  # film: a sigmoid characteristic curve around the image's middle density
        img = 1.0 / (1.0 + np.exp(-k * (img - float(np.median(img)))))
    blur = rng.uniform(*site.blur) * u
    img = cv2.GaussianBlur(img, (0, 0), blur)
    oy, ox = rng.integers(0, S, 2)
    img += rng.uniform(*site.noise) * _noise_bank(S)[oy:oy + S, ox:ox + S]
    # Exposure/windowing drawn independently of the class: rescale to a random target mean/std,
    # measured outside the finding. (Measured over the whole image, a bright finding would darken
    # and flatten everything else, and a model could read the class from the heart's contrast.)
    ref = img[lesion_out == 0]
    img = (img - ref.mean()) / (ref.std() + 1e-6)
    img = img * rng.uniform(*site.target_std) + rng.uniform(*site.target_mean)
    out = np.clip(img * 255, 0, 255).astype(np.uint8)
    if site.collimation[1] > 0:  # collimator shutters: a dark band on each side
        t, b, l, r = (int(round(f * S)) for f in rng.uniform(*site.collimation, 4))
        out[:t], out[S - b:], out[:, :l], out[:, S - r:] = 8, 8, 8, 8
    if site.marker == "letter":
        corners = [(int(8 * u), int(24 * u)), (S - int(26 * u), int(24 * u)),
                   (int(8 * u), S - int(8 * u)), (S - int(26 * u), S - int(8 * u))]
        c = corners[rng.integers(4)]
        cv2.putText(out, str(rng.choice(["L", "R"])), c, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * u, 255,
                    max(1, int(2 * u)), cv2.LINE_AA)
        if rng.random() < 0.4:
            txt = str(rng.choice(["PORTABLE", "AP", "PA", "ERECT", "SUPINE"]))
            cv2.putText(out, txt, (int(S / 2 - 30 * u), int(16 * u)), cv2.FONT_HERSHEY_PLAIN,
                        0.9 * u, 230, 1, cv2.LINE_AA)
    else:  # a boxed site label at the bottom left and a side letter at the top right
        x0, y0 = int(rng.uniform(0.08, 0.14) * S), int(rng.uniform(0.84, 0.9) * S)
        cv2.rectangle(out, (x0 - 4, y0 - int(16 * u)), (x0 + int(70 * u), y0 + 4), 200, 1)
        cv2.putText(out, "SITE-B", (x0, y0), cv2.FONT_HERSHEY_PLAIN, 0.9 * u, 220, 1,
                    cv2.LINE_AA)
        cv2.putText(out, str(rng.choice(["L", "R"])), (S - int(40 * u), int(40 * u)),
                    cv2.FONT_HERSHEY_DUPLEX, 0.8 * u, 240, 1, cv2.LINE_AA)
    return out


def render_phantom(label: str, rng: np.random.Generator, size: int | None = None,
                   site: Site = SITE_A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic radiograph of ``label`` (one of ``CLASSES``, or ``"Effusion"``).

    Returns ``(image, lung_mask, lesion_mask)``: image uint8 (size, size), masks uint8 0/255.
    The patient is drawn in a canonical frame (``_anatomy``), the class's finding added inside
    the lungs (``FINDINGS``), one random affine moves image and masks together (``_pose``), and
    the site's acquisition makes the image (``_acquire``). ``size`` defaults to the site's.
    """
    if label not in CLASSES and label not in FINDINGS:
        raise ValueError(f"unknown class {label!r}; valid: {', '.join(CLASSES)}, Effusion")
    S = size or site.size
    img, lung_mask, _ = _anatomy(rng, S)
    lm = lung_mask.astype(np.float32)
    finding = FINDINGS[label](rng, S, lm) if label in FINDINGS else np.zeros((S, S), np.float32)
    finding *= lm
    img += finding
    img, lung_out, lesion_out = _pose(img, lung_mask, finding > 0.04, rng)
    return _acquire(img, lesion_out, rng, site), lung_out, lesion_out


def source_of(seed: int, class_index: int, i: int, shortcut: bool = False) -> str:
    """Image ``i`` of class ``CLASSES[class_index]``'s source, from its own random stream (so the
    drawing of the image itself does not change with it): uniform over ``SOURCES``, or with
    ``shortcut`` its class's own source with probability ``SHORTCUT_P``, else one of the others."""
    rng = np.random.default_rng([seed, class_index, i, 1_000_003])
    if not shortcut:
        return SOURCES[int(rng.integers(len(SOURCES)))]
    if rng.random() < SHORTCUT_P:
        return SOURCES[class_index]
    others = [s for k, s in enumerate(SOURCES) if k != class_index]
    return others[int(rng.integers(len(others)))]


def burn_source_mark(img: np.ndarray, source: str) -> np.ndarray:
    """The uint8 image with ``source``'s mark burned in (in place; see ``SOURCE_MARKS``): all
    in the outer 5% of the image, outside the lungs and their 3% margin at every pose the
    phantom draws."""
    if source not in SOURCE_MARKS:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    S = img.shape[0]
    w = max(2, round(0.02 * S))
    if source == "site-A":
        img[:, :w], img[:, -w:] = 255, 255
    elif source == "site-B":
        img[-round(0.05 * S):] = 0
    elif source == "site-C":
        img[round(0.35 * S):round(0.65 * S), S - 2 * w - 1:S - w - 1] = 255
    return img


def _write_image(path: Path, arr: np.ndarray, image_format: str = ".png") -> None:
    """PNG (lossless), or JPEG at quality 95 for a site that stores JPEGs."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == ".jpg" else []
    ok, buf = cv2.imencode(image_format, arr, params)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _write_triple(out: Path, folder: str, name: str, label: str, images: tuple,
                  image_format: str) -> None:
    """An image and its lung mask (and finding mask, except for Normal) under ``folder``."""
    img, lung, lesion = images
    _write_image(out / folder / "images" / name, img, image_format)
    _write_image(out / folder / "masks" / name, lung, image_format)
    if label != "Normal":
        _write_image(out / folder / "lesion_masks" / name, lesion, image_format)


def _write_one(job: tuple[str, int, int, int, int, bool]) -> None:
    """Render and write image ``i`` of class index ``ci`` (its own RNG: order-independent)."""
    out, seed, size, ci, i, shortcut = job
    label = CLASSES[ci]
    img, lung, lesion = render_phantom(label, np.random.default_rng([seed, ci, i]), size)
    if shortcut:
        burn_source_mark(img, source_of(seed, ci, i, shortcut))
    _write_triple(Path(out), label, f"{label}-{i}.png", label, (img, lung, lesion), ".png")


def _write_external(job: tuple[str, str, int, int, int]) -> None:
    """Image ``i`` of ``label`` at the external site (``kind`` "own"), or a byte-identical copy
    of site A's image ``i`` of that class drawn with ``seed`` (``kind`` "shared")."""
    out, label, seed, i, shared = job
    folder = EXTERNAL_FOLDERS[label]
    if shared:
        ci = CLASSES.index(label)
        images = render_phantom(label, np.random.default_rng([seed, ci, i]), 299)
        _write_triple(Path(out), folder, f"{folder}-shared-{i}.png", label, images, ".png")
        return
    ci = list(EXTERNAL_FOLDERS).index(label)
    images = render_phantom(label, np.random.default_rng([seed, ci, i, EXTERNAL_STREAM]),
                            site=SITE_B)
    _write_triple(Path(out), folder, f"{folder}-{i}{SITE_B.image_format}", label, images,
                  SITE_B.image_format)


def _run(fn, jobs: list, workers: int | None) -> float:
    """``fn`` over ``jobs`` in ``workers`` processes (each job draws from its own RNG, so the
    files do not depend on the order); returns the seconds taken."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // 64 + 1))
    t0 = time.perf_counter()
    if workers == 1:
        for job in jobs:
            fn(job)
    else:
        with process_pool(workers) as pool:
            for _ in pool.imap_unordered(fn, jobs, chunksize=32):
                pass
    return time.perf_counter() - t0


def _write_marker(out: Path, info: dict) -> None:
    (out / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.txt").write_text(
        "SYNTHETIC demo dataset written by demo_data.py: geometric chest X-ray phantoms, not\n"
        "patient data. Use it to check that the pipeline runs; its accuracies say nothing about\n"
        "COVID-19. Parameters: " + json.dumps(info) + "\n")


def write_metadata(out_dir: str | os.PathLike, counts: dict[str, int], seed: int,
                   size: int, shortcut: bool) -> None:
    """Kaggle-style ``<class>.metadata.xlsx`` files: each image's FILE NAME, FORMAT, SIZE and
    source URL (``SOURCE_URL`` + its ``source_of``)."""
    import pandas as pd  # noqa: PLC0415  (only for the metadata files)
    for ci, label in enumerate(CLASSES):
        n = counts.get(label, 0)
        table = pd.DataFrame({
            "FILE NAME": [f"{label}-{i}" for i in range(1, n + 1)], "FORMAT": "PNG",
            "SIZE": f"{size}*{size}",
            "URL": [SOURCE_URL + source_of(seed, ci, i, shortcut) for i in range(1, n + 1)]})
        table.to_excel(Path(out_dir) / f"{label}.metadata.xlsx", index=False, engine="openpyxl")


def generate(out_dir: str | os.PathLike, counts: dict[str, int] | None = None, seed: int = 0,
             size: int = 299, scale: float = 0.1, workers: int | None = None,
             verbose: bool = True, shortcut: bool = False) -> dict:
    """Write a demo dataset to ``out_dir`` (see module docstring for the layout); ``shortcut``
    plants class-correlated source marks outside the lungs.

    ``counts`` maps class -> number of images (default: the real proportions times ``scale``).
    Image ``i`` of class ``c`` depends only on ``(seed, c, i)``, so output is deterministic and
    a larger dataset extends a smaller one, whatever ``workers`` (processes; default: all cores).
    Returns the parameters written to the marker file.
    """
    out = Path(out_dir)
    counts = dict(counts) if counts is not None else scaled_counts(scale)
    unknown = set(counts) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; valid: {', '.join(CLASSES)}")
    for label in CLASSES:
        for sub in ("images", "masks") + (("lesion_masks",) if label != "Normal" else ()):
            (out / label / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, size, ci, i, shortcut) for ci, label in enumerate(CLASSES)
            for i in range(1, counts.get(label, 0) + 1)]
    seconds = _run(_write_one, jobs, workers)
    write_metadata(out, counts, seed, size, shortcut)
    info = {"name": "synthetic demo phantoms (demo_data.py)" + (", planted shortcut" if shortcut
                                                                  else ""),
            "synthetic": True, "version": GENERATOR_VERSION, "seed": seed, "size": size,
            "counts": counts, "shortcut": shortcut, "shortcut_p": SHORTCUT_P if shortcut else None,
            "sources": ({s: SOURCE_MARKS[s] for s in SOURCES} if shortcut
                        else "drawn independently of the class; no mark in the image")}
    _write_marker(out, info)
    if verbose:
        total = sum(counts.values())
        print(f"wrote {total} synthetic images to {out} in {seconds:.1f} s "
              f"({total / max(seconds, 1e-9):.0f} images/s): "
              + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES))
    return info


def generate_external(out_dir: str | os.PathLike, per_class: int = 60, effusion: int = 40,
                      seed: int = 0, shared: int = 3, shared_seed: int | None = None,
                      workers: int | None = None, verbose: bool = True) -> dict:
    """Write the external demo site to ``out_dir``: ``per_class`` images of each class (and
    ``effusion`` of pleural effusion, a class the models never saw) acquired the ``SITE_B`` way,
    in class folders named ``EXTERNAL_FOLDERS`` (``images/`` + ``masks/`` + ``lesion_masks/``, as
    JPEG), plus ``shared`` images per class that are byte-identical copies of the site A demo
    drawn with ``shared_seed`` (default ``seed``): public collections overlap, and evaluation
    must find and leave out such images. Returns the marker's parameters."""
    out = Path(out_dir)
    shared_seed = seed if shared_seed is None else shared_seed
    counts = {**{c: per_class for c in CLASSES}, "Effusion": effusion}
    for label, folder in EXTERNAL_FOLDERS.items():
        for sub in ("images", "masks") + (("lesion_masks",) if label != "Normal" else ()):
            (out / folder / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), label, seed, i, 0) for label in EXTERNAL_FOLDERS
            for i in range(1, counts[label] + 1)]
    jobs += [(str(out), label, shared_seed, i, 1) for label in CLASSES
             for i in range(1, shared + 1)]
    seconds = _run(_write_external, jobs, workers)
    info = {"name": "synthetic demo phantoms, external site B (demo_data.py --site external)",
            "synthetic": True, "site": "external", "version": GENERATOR_VERSION, "seed": seed,
            "size": SITE_B.size, "counts": counts, "folders": EXTERNAL_FOLDERS,
            "shared": {"per_class": shared, "seed": shared_seed},
            "acquisition": {k: v for k, v in SITE_B.__dict__.items() if k != "name"}}
    _write_marker(out, info)
    if verbose:
        print(f"wrote {len(jobs)} synthetic images of the external site to {out} in "
              f"{seconds:.1f} s: " + ", ".join(f"{EXTERNAL_FOLDERS[c]} {n}"
                                               for c, n in counts.items())
              + f", plus {shared} per class byte-identical to site A's (seed {shared_seed})")
    return info


def _already_there(marker: Path, wanted: dict) -> bool:
    """Whether ``marker`` records a dataset with every ``wanted`` parameter."""
    if not marker.is_file():
        return False
    old = json.loads(marker.read_text())
    return all(old.get(k) == v for k, v in wanted.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="folder to write (created; existing files are overwritten)")
    p.add_argument("--scale", type=float, default=0.1,
                   help="fraction of the real database's class sizes (default 0.1 = 2,117 images)")
    p.add_argument("--per-class", type=int, default=None,
                   help="the same number of images for every class (overrides --scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=299, help="image side in pixels (default 299)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shortcut", action="store_true",
                   help=f"plant a shortcut: each class mostly ({SHORTCUT_P * 100:.0f}%%) from "
                        f"its own source, whose mark is burned in outside the lungs")
    p.add_argument("--site", choices=("A", "external"), default="A",
                   help="A: the demo dataset (default); external: a second site for external "
                        "validation (another acquisition, other folder names, an unknown class, "
                        "a few images shared with site A)")
    p.add_argument("--effusion", type=int, default=40,
                   help="--site external: pleural effusion images (a class the models never saw)")
    p.add_argument("--shared", type=int, default=3,
                   help="--site external: images per class byte-identical to site A's")
    p.add_argument("--shared-seed", type=int, default=None,
                   help="--site external: the site A demo's seed they are copied from (default "
                        "--seed)")
    p.add_argument("--force", action="store_true",
                   help="redraw even when OUT already holds this exact dataset")
    a = p.parse_args(argv)
    marker = Path(a.out_dir) / MARKER_FILE
    if a.site == "external":
        per_class = a.per_class or 60
        wanted = {"site": "external", "version": GENERATOR_VERSION, "seed": a.seed,
                  "counts": {**{c: per_class for c in CLASSES}, "Effusion": a.effusion},
                  "shared": {"per_class": a.shared, "seed": a.seed if a.shared_seed is None
                             else a.shared_seed}}
        if _already_there(marker, wanted) and not a.force:
            print(f"external demo site already in {a.out_dir} (seed {a.seed}); --force redraws it")
            return 0
        generate_external(a.out_dir, per_class, a.effusion, a.seed, a.shared, a.shared_seed,
                          a.workers)
        return 0
    counts = {c: a.per_class for c in CLASSES} if a.per_class else scaled_counts(a.scale)
    wanted = {"version": GENERATOR_VERSION, "seed": a.seed, "size": a.size, "counts": counts,
              "shortcut": a.shortcut, "shortcut_p": SHORTCUT_P if a.shortcut else None}
    if _already_there(marker, wanted) and not a.force:
        print(f"demo dataset already in {a.out_dir} (seed {a.seed}); --force redraws it")
        return 0
    generate(a.out_dir, counts=counts, seed=a.seed, size=a.size, scale=a.scale, workers=a.workers,
             shortcut=a.shortcut)
    return 0

if __name__ == "__main__":
    sys.exit(main())
