"""A dataset folder's layout: which files are images of which class, their masks, their sources.

Supported layouts (the COVID-19 Radiography Database as published over time, and any folder of
class subfolders)::

    DATA_DIR/<class>/<image files>                       # flat release / generic folders
    DATA_DIR/<class>/images/<f>, DATA_DIR/<class>/masks/<f>   # newer Kaggle release
    (DATA_DIR/<class>/lesion_masks/<f>: demo data's finding masks)

Files at the top level (metadata .xlsx, README) and OS junk (.DS_Store, Thumbs.db, __MACOSX,
hidden files) are ignored. Nothing here decodes an image or writes anything:
``split_dataset.py`` (the split) and ``external.py`` (an external set) both read folders with it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from xray_io import is_image_name

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", "@eadir"}
MASK_DIRS = {"masks": "mask_path", "lesion_masks": "lesion_mask_path"}


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


def _listdir(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not _is_junk(p.name)), key=lambda p: p.name)


def scan_dataset(data_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Find candidate images without decoding them.

    Returns ``(candidates, rejects)``: a DataFrame with ``path,label`` (+ mask columns when mask
    folders exist) sorted by path, and ``(path, reason)`` pairs for entries that look like images
    but cannot be (folders named like images, links that point nowhere, unsupported file types
    inside a class folder).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist (expected a folder of "
                                f"class subfolders, e.g. COVID/, Normal/)")
    rows, rejects = [], []

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    for class_dir in _listdir(root):
        if not class_dir.is_dir():
            continue  # metadata .xlsx, README.md.txt, ...
        label = class_dir.name
        entries = _listdir(class_dir)
        names = {p.name for p in entries}
        image_dir = class_dir / "images" if "images" in names and (class_dir / "images").is_dir() \
            else class_dir
        mask_dirs = {col: class_dir / d for d, col in MASK_DIRS.items()
                     if image_dir != class_dir and (class_dir / d).is_dir()}
        for p in _listdir(image_dir):
            if p.is_dir() and not p.is_symlink():
                if is_image_name(p.name):
                    rejects.append((rel(p), "a folder named like an image"))
                continue  # masks/, lesion_masks/ or other subfolders of a flat class folder
            if not is_image_name(p.name):
                rejects.append((rel(p), "not a supported image type "
                                        "(.png .jpg .jpeg .bmp .tif .tiff .dcm)"))
                continue
            if p.is_symlink() and not p.exists():
                rejects.append((rel(p), "a symbolic link that points nowhere"))
                continue
            row = {"path": rel(p), "label": label}
            for col, d in mask_dirs.items():
                m = d / p.name
                row[col] = rel(m) if m.is_file() else ""
            rows.append(row)
    cols = ["path", "label"] + sorted({c for r in rows for c in r} - {"path", "label"})
    cand = pd.DataFrame(rows, columns=cols).fillna("")
    if cand.empty:
        raise ValueError(f"no images found in {root}: expected class subfolders holding images "
                         f"(or images/ + masks/ subfolders), e.g. {root}/COVID/COVID-1.png")
    return cand.sort_values("path", kind="stable").reset_index(drop=True), rejects


def read_sources(data_dir: str | os.PathLike) -> dict[tuple[str, str], str]:
    """``(class, file stem lower-cased) -> source URL`` from Kaggle's ``<class>.metadata.xlsx``.

    The Kaggle files have columns ``FILE NAME`` (e.g. ``COVID-1`` or ``NORMAL-1``), ``FORMAT``,
    ``SIZE`` and ``URL`` (the source collection). Unreadable metadata files are skipped with a
    warning; a dataset without them yields ``{}``.
    """
    out: dict[tuple[str, str], str] = {}
    for x in sorted(Path(data_dir).glob("*.metadata.xlsx")):
        label = x.name[: -len(".metadata.xlsx")]
        try:
            meta = pd.read_excel(x, engine="openpyxl", dtype=str)
        except Exception as e:  # noqa: BLE001 - any unreadable workbook is only a warning
            warnings.warn(f"{x}: metadata not read ({type(e).__name__}: {e}); no source column "
                          f"for class {label!r}", stacklevel=2)
            continue
        cols = {c.strip().upper(): c for c in meta.columns}
        if "FILE NAME" not in cols or "URL" not in cols:
            warnings.warn(f"{x}: expected columns 'FILE NAME' and 'URL', found "
                          f"{list(meta.columns)}", stacklevel=2)
            continue
        for name, url in zip(meta[cols["FILE NAME"]], meta[cols["URL"]]):
            if isinstance(name, str) and isinstance(url, str):
                out[(label, Path(name.strip()).stem.lower())] = url.strip()
    return out
