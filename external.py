"""External validation: score trained models on another collection's labelled images.

``evaluate_external`` reads every image under a folder's class folders (any layout
``split_dataset.py`` reads), maps the folder names onto the models' classes (``map_folders``:
loose name matching, or an explicit class map), counts and skips folders of other classes, lists
unreadable files, finds copies of a model's training or validation images, byte-identical or
resized, re-encoded, cropped and re-windowed (``training_duplicates``: public chest X-ray
collections re-publish each other), and leaves them out, then
scores the rest with ``evaluation.score_models``, exactly as the internal test is scored.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd
import torch

import checkpoints
import dataset_folder
import image_cache
import near_duplicates
import utils
import xray_io
from evaluation import (EvalConfig, Evaluation, Models, header, merge_overlaps, now,
                        score_models)


class NothingToScore(ValueError):
    """No image of the set could be read and scored (``evaluate.py`` exits 1)."""


def _norm(name: str) -> str:
    """A folder or class name compared loosely: case, spaces, ``_`` and ``-`` ignored."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def map_folders(folders: dict[str, int], class_names: list[str],
                class_map: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """Which class each folder's images belong to: ``(folder -> class scored, folder -> image
    count skipped)``. ``class_map`` (``{folder: class}``, classes matched loosely) wins; a
    folder named like a class (``_norm``: case, spaces, ``_`` and ``-`` ignored) maps to it
    without a flag; any other folder is skipped, never scored and never silently dropped.
    ValueError when the map names a class the models do not know or a folder that is not there."""
    by_norm = {_norm(c): c for c in class_names}
    mapped: dict[str, str] = {}
    for folder, cls in (class_map or {}).items():
        if _norm(cls) not in by_norm:
            raise ValueError(f"--class-map {folder}={cls}: the models have no class {cls!r}; "
                             f"valid: {', '.join(class_names)}")
        if folder not in folders:
            raise ValueError(f"--class-map {folder}={cls}: there is no class folder {folder!r}; "
                             f"the folders are: {', '.join(sorted(folders)) or '(none)'}")
        mapped[folder] = by_norm[_norm(cls)]
    skipped = {}
    for folder, n in folders.items():
        if folder not in mapped:
            if _norm(folder) in by_norm:
                mapped[folder] = by_norm[_norm(folder)]
            else:
                skipped[folder] = n
    return mapped, skipped


def external_rows(data_dir, class_names: list[str], class_map: dict[str, str] | None = None
                  ) -> tuple[pd.DataFrame, dict]:
    """Every image under ``data_dir``'s class folders (any layout ``split_dataset.py`` reads:
    flat class folders, or ``images/`` + ``masks/`` [+ ``lesion_masks/``] per class, masks used
    where present; ``source`` from Kaggle-style metadata files), labelled by ``map_folders``.
    Returns ``(rows path/label/folder/[mask_path, lesion_mask_path, source], info)``; ``info``
    holds ``found`` (images in class folders), ``class_map``, ``skipped_folders`` and
    ``not_read`` (files inside class folders that are not images, with the reason)."""
    cand, rejects = dataset_folder.scan_dataset(data_dir)
    folders = cand.groupby("label").size().to_dict()
    mapped, skipped = map_folders(folders, class_names, class_map)
    if not mapped:
        raise ValueError(f"no class folder of {data_dir} is one of the models' classes "
                         f"({', '.join(class_names)}); found {', '.join(sorted(folders))}: map "
                         f"them with --class-map FOLDER=CLASS")
    rows = cand[cand["label"].isin(mapped)].rename(columns={"label": "folder"})
    rows.insert(1, "label", rows["folder"].map(mapped))
    sources = dataset_folder.read_sources(data_dir)
    if sources:
        rows["source"] = [sources.get((f, Path(p).stem.lower()), "")
                          for f, p in zip(rows["folder"], rows["path"])]
    info = {"found": int(len(cand)), "class_map": mapped, "skipped_folders": skipped,
            "not_read": [[p, r] for p, r in rejects]}
    return rows.reset_index(drop=True), info


def training_duplicates(models: Models, rows: pd.DataFrame, digests: list[str],
                        fingerprints=None, fingerprint_ok=None, cache_dir: str | None = None
                        ) -> tuple[pd.DataFrame, list[str]]:
    """Images of ``rows`` that are copies of an image any model was trained or validated on
    (``checkpoints.training_overlap``: byte-identical, or near copies by fingerprint):
    ``(path, trained_path, trained_split, kind, score, models)`` rows, and the names of models
    whose checkpoints record nothing to compare with, or digests only (``"<name> (exact
    only)"``: checkpoints written before fingerprints were recorded). ``cache_dir``: where
    near-duplicate scores are kept between runs (``checkpoints.training_overlap``)."""
    found, unchecked = [], []
    for name, (_, meta) in models.items():
        if not checkpoints.has_trained_on(meta):
            unchecked.append(name)
            continue
        if not checkpoints.has_fingerprints(meta):
            unchecked.append(f"{name} (exact only)")
        found.append(checkpoints.training_overlap(meta, rows["path"].tolist(), digests,
                                                  fingerprints, fingerprint_ok, cache_dir
                                                  ).assign(models=name))
    return merge_overlaps(found), unchecked


def twin_tiles(models: Models, dup: pd.DataFrame, data_dir, n: int = 6) -> list:
    """Up to ``n`` left-out copies beside their training twin, for the report: ``(image (128 px),
    the twin's fingerprint, caption)``; the twin is shown as its checkpoint recorded it."""
    tiles = []
    for r in dup.head(n).itertuples():
        meta = models[r.models.split(", ")[0]][1]
        fp = (meta["trained_on"].get("fingerprints") or {})
        if not fp:
            continue
        k = meta["trained_on"]["path"].index(r.trained_path)
        try:
            img = xray_io.resize_uint8(xray_io.read_xray(Path(data_dir) / r.path), 128)
        except (ValueError, OSError):
            continue
        tiles.append((img, fp["images"][k].numpy(),
                      f"{Path(r.path).name}\n= {r.trained_split} {Path(r.trained_path).name}\n"
                      f"{r.kind}, score {r.score:.3f}"))
    return tiles


def evaluate_external(models: Models, data_dir, cfg: EvalConfig, device: torch.device,
                      class_map: dict[str, str] | None = None, name: str | None = None
                      ) -> Evaluation:
    """Score every model on another collection's labelled images (``external_rows``), leaving
    out images byte-identical to training images (``training_duplicates``). ``metrics`` holds
    the dataset-independent header and ``external[name]`` (default: the folder's name): the
    set's ``images`` account (found, scored per class, skipped folders, files not read with the
    reason, training duplicates, models that could not be checked) and per model the same
    results as the internal test, under the key ``"external"``. ``NothingToScore`` when no
    image could be read; ValueError for a bad class map."""
    class_names = list(next(iter(models.values()))[1]["class_names"])
    name = name or Path(data_dir).resolve().name
    rows, info = external_rows(data_dir, class_names, class_map)
    digests = image_cache.content_digests(rows, data_dir, cfg.cache_dir)
    fps, fp_ok, _ = near_duplicates.fingerprint_files([Path(data_dir) / p for p in rows["path"]],
                                                      cfg.cache_dir)
    dup, unchecked = training_duplicates(models, rows, digests, fps, fp_ok, cfg.cache_dir)
    keep = rows[~rows["path"].isin(set(dup["path"]))].reset_index(drop=True)
    size = next(iter(models.values()))[1]["image_size"]
    with warnings.catch_warnings():  # each unreadable file is listed in the result instead
        warnings.filterwarnings("ignore", "skipping unreadable image", UserWarning)
        _, ok, unreadable = image_cache.decoded_images(keep, data_dir, size, cfg.cache_dir)
    if not ok.any():
        raise NothingToScore(f"none of the {len(keep)} images of {data_dir} in the mapped "
                             f"folders could be read" + (" (the rest are training images)"
                                                         if len(dup) else "") +
                             "".join(f"\n  {p}: {r}" for p, r in unreadable[:5]))
    scored = keep[ok]  # the same rows when all are readable: the decoded cache is reused
    ev = score_models(models, scored, data_dir, class_names, cfg, device, split="external")
    ev.figures["training_twins"] = twin_tiles(models, dup, data_dir)
    info.update(scored=int(len(scored)),
                scored_by_class=scored["label"].value_counts().sort_index().to_dict(),
                not_read=info["not_read"] + [list(u) for u in unreadable],
                training_duplicates=dup.to_dict(orient="records"),
                unchecked_models=unchecked)
    trained = next(iter(models.values()))[1].get("dataset") or {
        "name": "unknown (the checkpoint does not say)", "synthetic": False, "shortcut": False}
    ev.metrics = {**header(trained, class_names, models),
                  "external": {name: {
                      "data_dir": str(Path(data_dir).resolve()), "dataset":
                      utils.dataset_info(data_dir), "created": now(), "images": info,
                      "archs": ev.metrics["archs"]}}}
    ev.figures["prefix"] = f"external/{name}/"
    return ev
