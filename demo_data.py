"""The offline demo datasets: folders of synthetic phantoms (``phantoms.py``) in the layout of the
COVID-19 Radiography Database, and a second, external site for external validation.

THIS IS NOT MEDICAL DATA. Results on it say that the pipeline works, nothing about COVID-19.

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
nothing), the way a source hospital's borders and labels run through the real collage. A model
can then reach high accuracy without looking at the lungs; notebook 3's shortcut audit is there
to catch it.

``--site external`` writes the external demo site instead (``generate_external``): the same kinds
of findings acquired another way (``phantoms.EXTERNAL_SITE``), class folders named as another hospital
might name them (``EXTERNAL_FOLDERS``), a class the models never saw (pleural effusion), and a few
images byte-identical to the main demo's (public collections overlap).

CLI: ``python demo_data.py OUT [--scale 0.1] [--seed 0] [--size 299] [--shortcut] [--force]``,
``python demo_data.py OUT --site external [--per-class 60] [--seed 0]`` (a folder that already
holds the same dataset is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from phantoms import EXTERNAL_SITE, render_phantom
from files import process_pool

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


EXTERNAL_FOLDERS = {"COVID": "covid19", "Lung_Opacity": "consolidation", "Normal": "No Finding",
                    "Viral Pneumonia": "viral_pneumonia", "Effusion": "Effusion"}


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
    of the demo's image ``i`` of that class drawn with ``seed`` (``kind`` "shared")."""
    out, label, seed, i, shared = job
    folder = EXTERNAL_FOLDERS[label]
    if shared:
        ci = CLASSES.index(label)
        images = render_phantom(label, np.random.default_rng([seed, ci, i]), 299)
        _write_triple(Path(out), folder, f"{folder}-shared-{i}.png", label, images, ".png")
        return
    ci = list(EXTERNAL_FOLDERS).index(label)
    images = render_phantom(label, np.random.default_rng([seed, ci, i, EXTERNAL_STREAM]),
                            site=EXTERNAL_SITE)
    _write_triple(Path(out), folder, f"{folder}-{i}{EXTERNAL_SITE.image_format}", label, images,
                  EXTERNAL_SITE.image_format)


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
    ``effusion`` of pleural effusion, a class the models never saw) acquired the ``EXTERNAL_SITE`` way,
    in class folders named ``EXTERNAL_FOLDERS`` (``images/`` + ``masks/`` + ``lesion_masks/``, as
    JPEG), plus ``shared`` images per class that are byte-identical copies of the main demo
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
    info = {"name": "synthetic demo phantoms, external site (demo_data.py --site external)",
            "synthetic": True, "site": "external", "version": GENERATOR_VERSION, "seed": seed,
            "size": EXTERNAL_SITE.size, "counts": counts, "folders": EXTERNAL_FOLDERS,
            "shared": {"per_class": shared, "seed": shared_seed},
            "acquisition": {k: v for k, v in EXTERNAL_SITE.__dict__.items() if k != "name"}}
    _write_marker(out, info)
    if verbose:
        print(f"wrote {len(jobs)} synthetic images of the external site to {out} in "
              f"{seconds:.1f} s: " + ", ".join(f"{EXTERNAL_FOLDERS[c]} {n}"
                                               for c, n in counts.items())
              + f", plus {shared} per class byte-identical to the demo's (seed {shared_seed})")
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
    p.add_argument("--site", choices=("demo", "external"), default="demo",
                   help="demo: the demo dataset (default); external: a second site for external "
                        "validation (another acquisition, other folder names, an unknown class, "
                        "a few images shared with the main demo)")
    p.add_argument("--effusion", type=int, default=40,
                   help="--site external: pleural effusion images (a class the models never saw)")
    p.add_argument("--shared", type=int, default=3,
                   help="--site external: images per class byte-identical to the main demo's")
    p.add_argument("--shared-seed", type=int, default=None,
                   help="--site external: the main demo's seed they are copied from (default "
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
