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


def render_phantom(label: str, rng: np.random.Generator, size: int = 299
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic radiograph.

    Returns ``(image, lung_mask, lesion_mask)``: image uint8 (size, size), masks uint8 0/255.
    Drawing happens in a canonical frame (patient upright, centred), then one random affine
    transform (size/position/rotation) moves image and masks together.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; valid: {', '.join(CLASSES)}")
    S = size
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

    # The finding: sized and dense enough that a radiologist would call it visible (and a CNN
    # trained from scratch at 64-128 px can see it), placed where the disease puts it.
    finding = np.zeros((S, S), np.float32)
    lm = lung_mask.astype(np.float32)
    if label == "Lung_Opacity":
        # Multifocal dense consolidation: one large lobar/segmental blob and one or two smaller
        # ones, at least one in each lung (so "one lung is clear" does not give the class away),
        # any zone, nearly as dense as soft tissue.
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
        finding *= 0.34
    elif label == "COVID":
        # Bilateral, peripheral, lower-zone ground glass: patchy, hazy (vessels and ribs still
        # show through), covering roughly a quarter to a half of each lower lung.
        for cx0 in (96, 203):
            lateral = -1 if cx0 < 150 else 1
            for _ in range(rng.integers(4, 7)):
                cx = (cx0 + lateral * rng.uniform(18, 40)) * u
                cy = rng.uniform(140, 210) * u
                _add_blob(finding, cx, cy, rng.uniform(16, 24) * u, rng.uniform(20, 32) * u, 0,
                          rng)
        finding *= 0.22 * (1 + 0.35 * _smooth_noise(rng, S, 12))
    elif label == "Viral Pneumonia":
        # Bilateral perihilar interstitial opacity: a haze around each hilum with streaks
        # radiating outwards (peribronchial cuffing), sparing the periphery.
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
        finding = 0.26 * cv2.GaussianBlur(np.clip(streaks, 0, 1), (0, 0), 1.5 * u)
    finding *= lm
    img += finding
    lesion = finding > 0.04

    # Random affine: patient size/position/rotation (same for image and masks).
    scale = rng.uniform(0.86, 1.08)
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-7, 7), scale)
    M[:, 2] += rng.uniform(-14, 14, 2) * u
    warp = lambda a, interp: cv2.warpAffine(a, M, (S, S), flags=interp, borderValue=0)  # noqa: E731
    img = warp(img, cv2.INTER_LINEAR)
    img[img == 0] = 0.04
    lung_out = warp(lung_mask.astype(np.uint8) * 255, cv2.INTER_NEAREST)
    lesion_out = warp(lesion.astype(np.uint8) * 255, cv2.INTER_NEAREST)

    # Acquisition: exposure (gamma), blur, quantum noise, then a marker and text in corners.
    img = np.clip(img, 0, None) ** rng.uniform(0.8, 1.25)
    blur = rng.uniform(0.3, 1.4) * u
    img = cv2.GaussianBlur(img, (0, 0), blur)
    oy, ox = rng.integers(0, S, 2)
    img += rng.uniform(0.005, 0.025) * _noise_bank(S)[oy:oy + S, ox:ox + S]
    # Exposure/windowing drawn independently of the class: rescale to a random target mean/std,
    # measured outside the finding. (Measured over the whole image, a bright finding would darken
    # and flatten everything else, and a model could read the class from the heart's contrast.)
    ref = img[lesion_out == 0]
    img = (img - ref.mean()) / (ref.std() + 1e-6)
    img = img * rng.uniform(0.17, 0.23) + rng.uniform(0.42, 0.55)
    out = np.clip(img * 255, 0, 255).astype(np.uint8)
    corners = [(int(8 * u), int(24 * u)), (S - int(26 * u), int(24 * u)),
               (int(8 * u), S - int(8 * u)), (S - int(26 * u), S - int(8 * u))]
    c = corners[rng.integers(4)]
    cv2.putText(out, str(rng.choice(["L", "R"])), c, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * u, 255,
                max(1, int(2 * u)), cv2.LINE_AA)
    if rng.random() < 0.4:
        txt = str(rng.choice(["PORTABLE", "AP", "PA", "ERECT", "SUPINE"]))
        cv2.putText(out, txt, (int(S / 2 - 30 * u), int(16 * u)), cv2.FONT_HERSHEY_PLAIN,
                    0.9 * u, 230, 1, cv2.LINE_AA)
    return out, lung_out, lesion_out


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


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _write_one(job: tuple[str, int, int, int, int, bool]) -> None:
    """Render and write image ``i`` of class index ``ci`` (its own RNG: order-independent)."""
    out, seed, size, ci, i, shortcut = job
    label = CLASSES[ci]
    img, lung, lesion = render_phantom(label, np.random.default_rng([seed, ci, i]), size)
    if shortcut:
        burn_source_mark(img, source_of(seed, ci, i, shortcut))
    name = f"{label}-{i}.png"
    _write_png(Path(out, label, "images", name), img)
    _write_png(Path(out, label, "masks", name), lung)
    if label != "Normal":
        _write_png(Path(out, label, "lesion_masks", name), lesion)


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
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // 64 + 1))
    t0 = time.perf_counter()
    if workers == 1:
        for job in jobs:
            _write_one(job)
    else:
        with process_pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=32):
                pass
    write_metadata(out, counts, seed, size, shortcut)
    seconds = time.perf_counter() - t0
    info = {"name": "synthetic demo phantoms (demo_data.py)" + (", planted shortcut" if shortcut
                                                                  else ""),
            "synthetic": True, "version": GENERATOR_VERSION, "seed": seed, "size": size,
            "counts": counts, "shortcut": shortcut, "shortcut_p": SHORTCUT_P if shortcut else None,
            "sources": ({s: SOURCE_MARKS[s] for s in SOURCES} if shortcut
                        else "drawn independently of the class; no mark in the image")}
    (out / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.txt").write_text(
        "SYNTHETIC demo dataset written by demo_data.py: geometric chest X-ray phantoms, not\n"
        "patient data. Use it to check that the pipeline runs; its accuracies say nothing about\n"
        "COVID-19. Parameters: " + json.dumps(info) + "\n")
    if verbose:
        total = sum(counts.values())
        print(f"wrote {total} synthetic images to {out} in {seconds:.1f} s "
              f"({total / max(seconds, 1e-9):.0f} images/s): "
              + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES))
    return info


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
    p.add_argument("--force", action="store_true",
                   help="redraw even when OUT already holds this exact dataset")
    a = p.parse_args(argv)
    counts = {c: a.per_class for c in CLASSES} if a.per_class else scaled_counts(a.scale)
    marker = Path(a.out_dir) / MARKER_FILE
    if marker.is_file() and not a.force:
        old = json.loads(marker.read_text())
        if (old.get("version"), old.get("seed"), old.get("size"), old.get("counts"),
                old.get("shortcut", False), old.get("shortcut_p")) == (
                GENERATOR_VERSION, a.seed, a.size, counts, a.shortcut,
                SHORTCUT_P if a.shortcut else None):
            print(f"demo dataset already in {a.out_dir} (seed {a.seed}); --force redraws it")
            return 0
    generate(a.out_dir, counts=counts, seed=a.seed, size=a.size, scale=a.scale, workers=a.workers,
             shortcut=a.shortcut)
    return 0


if __name__ == "__main__":
    sys.exit(main())
