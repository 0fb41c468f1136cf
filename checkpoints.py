"""What a checkpoint is: writing, reading and amending one, and what it was trained on.

A checkpoint is one ``torch.save`` file ``{"model_state": state dict on the CPU, "meta": dict}``
that rebuilds its model alone (as nanoGPT's carries ``model_args``) and loads with
``weights_only=True``. ``META`` below is the one description of what ``meta`` holds. Training
writes two files per model, both named and written only here: ``<arch>.pt`` (``best_path``: the
best epoch, a checkpoint) and ``<arch>_last.pt`` (``resume_path``: the last epoch with the
optimizer, schedule, scaler and early-stopping state, ``save_resume_state`` /
``read_resume_state``). No other module opens either file's dict.

What a model was trained on is recorded by content, not by file stamps: the SHA-256 of every
training and validation image with its path relative to the dataset folder, and its
near-duplicate fingerprint (``near_duplicates.fingerprint``: 64 x 64 uint8, 4 KiB an image, one
uint8 tensor ``(M, 64, 64)`` in the record; ``trained_on_record``). A copied, moved or
re-downloaded dataset keeps its digests, so the same split evaluates anywhere; a test set that
holds any of those images byte for byte is refused (``check_trained_on``), one that holds
resized, re-encoded, cropped or re-windowed copies of them has those left out, and an external
set's copies of either kind are found (``training_overlap``: ``kind`` exact or near, with the
near-duplicate score) and left out of its metrics. Checkpoints written before fingerprints were
recorded match exact copies only (``has_fingerprints``), and the outputs say so.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pickle
import warnings
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import near_duplicates
import networks
import utils
from runtime import library_versions
from files import atomic_write

# What ``meta`` holds. Required: arch, class_names. Written by training: the rest but
# temperature/calibration/familiarity/conformal, which training adds after fitting them on the
# validation split (familiarity.py's CLI adds the last two to an older checkpoint).
META = {
    "arch": "the architecture name (networks.build_model rebuilds it)",
    "class_names": "class names in output order",
    "image_size": "the side, in pixels, of the square input the model was trained on",
    "mean": "normalisation mean per channel (ImageNet's)",
    "std": "normalisation standard deviation per channel",
    "epoch": "the epoch whose weights these are (the best on the validation loss)",
    "val_loss": "validation loss at that epoch",
    "val_acc": "validation accuracy at that epoch",
    "seed": "the training seed",
    "config": "training.TrainConfig as a dict",
    "numeric_path": "what training computed in: bf16, fp16 or fp32 (training.training_path)",
    "numeric_path_reason": "why, in words (on a CPU: whether it has native bf16 and the timed "
                           "probe's speed-up)",
    "dataset": "utils.dataset_info of the training data (name, synthetic, shortcut)",
    "data": "image_cache.split_fingerprint of the manifest (what a resume must match)",
    "trained_on": "trained_on_record: content digests and near-duplicate fingerprints of the "
                  "training and validation images",
    "temperature": "calibration temperature fitted on the validation split (absent: none)",
    "calibration": "inference.calibrate's report of that fit",
    "familiarity": "familiarity.fit_familiarity: the out-of-distribution score's statistics and "
                   "threshold (absent in older checkpoints: no flag)",
    "conformal": "familiarity.fit_conformal: the prediction sets' alpha and quantile",
    "versions": "library versions that wrote the file",
}
TRAINED_SPLITS = ("train", "val")  # images a model was fitted on or selected and calibrated on
RESUME_SUFFIX = "_last.pt"


def best_path(models_dir: str | os.PathLike, arch: str) -> Path:
    """The best epoch's checkpoint of ``arch``: ``models_dir/<arch>.pt``."""
    return Path(models_dir) / f"{arch}.pt"


def resume_path(models_dir: str | os.PathLike, arch: str) -> Path:
    """The resumable training state of ``arch``: ``models_dir/<arch>_last.pt``."""
    return Path(models_dir) / f"{arch}{RESUME_SUFFIX}"


@dataclasses.dataclass
class ResumeState:
    """What ``<arch>_last.pt`` holds: the last epoch's weights, the optimizer, schedule and
    GradScaler states, the early-stopping state (``progress``) and the run's ``meta``."""
    model_state: dict
    optimizer_state: dict
    scheduler_state: dict
    scaler_state: dict
    progress: dict
    meta: dict


def save_resume_state(path: str | os.PathLike, model: nn.Module, optimizer, scheduler, scaler,
                      progress: dict, meta: dict, world_size: int = 1) -> None:
    """Write the resumable state of an epoch atomically (``ResumeState``; ``meta`` gets the
    library versions and the number of processes)."""
    save_state({"model_state": cpu_state(model), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                "state": progress, "meta": {**meta, "versions": library_versions(),
                                            "world_size": world_size}}, path)


def read_resume_state(path: str | os.PathLike) -> ResumeState:
    """``save_resume_state``'s file as a ``ResumeState``."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    return ResumeState(d["model_state"], d["optimizer_state"], d["scheduler_state"],
                       d["scaler_state"], d["state"], d["meta"])


def read_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's ``meta`` without reading its weights into memory (memory-mapped)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"]


def save_state(obj, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (temp file + fsync + rename): a kill leaves the old file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def cpu_state(model: nn.Module) -> dict:
    """The model's state dict copied to the CPU (a checkpoint never holds device tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module | dict, **meta) -> None:
    """Write ``{"model_state", "meta"}`` atomically; ``model`` is the model or a ``cpu_state``
    of it. ``meta`` (see ``META``) needs ``arch`` and ``class_names``; ImageNet ``mean``/``std``
    and library ``versions`` are added. Values must be plain Python types or tensors, so the
    file loads with ``weights_only=True``."""
    for key in ("arch", "class_names"):
        if key not in meta:
            raise ValueError(f"save_checkpoint needs meta[{key!r}]; got keys {sorted(meta)}")
    meta = {"mean": list(utils.IMAGENET_MEAN), "std": list(utils.IMAGENET_STD), **meta,
            "versions": library_versions()}
    state = model if isinstance(model, dict) else cpu_state(model)
    save_state({"model_state": state, "meta": meta}, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by ``save_checkpoint`` from the file alone; returns
    ``(model in eval mode on device, meta)``. Loads with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (train it with notebook 2 / "
                                f"training.fit / train.py first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by checkpoints.save_checkpoint")
    meta = ckpt["meta"]
    model = networks.build_model(meta["arch"], len(meta["class_names"]), weights=None,
                                 image_size=meta.get("image_size"))
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), meta


def update_checkpoint_meta(path: str | os.PathLike, **meta) -> None:
    """Add or replace ``meta`` entries of a checkpoint (atomically; the weights are untouched),
    e.g. ``temperature`` after calibration. Training calls it; evaluation never does."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["meta"] = {**ckpt["meta"], **meta}
    save_state(ckpt, path)


def best_epoch_files(paths: list[str], say=print) -> list[str]:
    """``paths`` without the resumable training states (``<arch>_last.pt``: the last epoch, not
    the best) whose best-epoch file (``<arch>.pt``) is among them, saying so: ``models/*.pt``
    then means the best epoch of each model."""
    names = {Path(p).name for p in paths}
    kept = []
    for p in paths:
        name = Path(p).name
        best = best_path("", name[:-len(RESUME_SUFFIX)]).name
        if name.endswith(RESUME_SUFFIX) and best in names:
            say(f"note: skipping {p}, a resumable training state; its best epoch is {best}")
        else:
            kept.append(p)
    return kept


def load_models(paths: list[str | os.PathLike], device: torch.device
                ) -> dict[str, tuple[nn.Module, dict]]:
    """``{name: (model, meta)}`` from checkpoints (name = file stem, made unique), for scoring
    or predicting several models together. Raises ValueError naming the file when one is
    missing or not a checkpoint, or when the class lists differ."""
    models: dict[str, tuple[nn.Module, dict]] = {}
    for p in paths:
        try:
            model, meta = load_checkpoint(p, device)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        except (ValueError, RuntimeError, KeyError, TypeError, OSError, EOFError,
                pickle.UnpicklingError) as e:
            raise ValueError(f"{p}: not a model checkpoint written by notebook 2 / train.py "
                             f"(expected a dict with 'model_state' and 'meta'; "
                             f"{type(e).__name__}: {e})") from None
        name, k = Path(p).stem, 2
        while name in models:
            name, k = f"{Path(p).stem}-{k}", k + 1
        first = next(iter(models.values()), None)
        if first is not None and meta["class_names"] != first[1]["class_names"]:
            raise ValueError(f"{p} predicts {meta['class_names']} but {paths[0]} predicts "
                             f"{first[1]['class_names']}: models scored together need one "
                             f"class list")
        models[name] = (model, meta)
    return models


# --------------------------------------------------------------------------- trained on
def trained_on_record(manifest: pd.DataFrame, digests: list[str],
                      fingerprints: np.ndarray | None = None, fingerprint_ok=None) -> dict:
    """What a model trains on, for its checkpoint: the manifest's ``TRAINED_SPLITS`` rows as
    parallel lists ``path`` (relative to the dataset folder), ``split`` and ``sha256``
    (``digests`` holds one per manifest row, ``image_cache.content_digests``), and with
    ``fingerprints`` (uint8 ``(N, 64, 64)``, one per manifest row; ``fingerprint_ok`` marks the
    usable ones) a ``fingerprints`` dict: ``version``, ``images`` (uint8 tensor of the kept
    rows) and ``ok``."""
    if len(digests) != len(manifest):
        raise ValueError(f"{len(digests)} digests for {len(manifest)} manifest rows")
    keep = manifest["split"].isin(TRAINED_SPLITS).to_numpy()
    rows = manifest[keep]
    rec = {"algorithm": "sha256", "path": rows["path"].tolist(),
           "split": rows["split"].tolist(),
           "sha256": [d for d, k in zip(digests, keep) if k]}
    if fingerprints is not None:
        ok = np.ones(len(manifest), bool) if fingerprint_ok is None else np.asarray(fingerprint_ok)
        rec["fingerprints"] = {"version": near_duplicates.FINGERPRINT_VERSION,
                               "images": torch.from_numpy(np.ascontiguousarray(
                                   np.asarray(fingerprints, np.uint8)[keep])),
                               "ok": ok[keep].tolist()}
    return rec


def has_fingerprints(meta: dict) -> bool:
    """Whether the checkpoint records near-duplicate fingerprints this version can compare
    (else only byte-identical copies of its training images can be found)."""
    fp = (meta.get("trained_on") or {}).get("fingerprints")
    return bool(fp) and fp.get("version") == near_duplicates.FINGERPRINT_VERSION


OVERLAP_COLUMNS = ["path", "trained_path", "trained_split", "kind", "score"]


def training_overlap(meta: dict, paths: list[str], digests: list[str],
                     fingerprints: np.ndarray | None = None, fingerprint_ok=None,
                     cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The images among ``paths`` (with their content ``digests``) that are copies of one this
    model was trained or validated on: columns ``path``, ``trained_path``, ``trained_split``,
    ``kind`` (``exact``: byte-identical; ``near``: ``near_duplicates.match`` on
    ``fingerprints``, one per path) and ``score`` (1 for exact). Empty when none, or when the
    checkpoint records nothing (see ``has_trained_on``); near copies only when both sides have
    fingerprints (``has_fingerprints``). Files without a digest (unreadable) never match.
    ``cache_dir``: near-duplicate scores verified there before are read, not verified again
    (``near_duplicates.ScoreStore``)."""
    rec = meta.get("trained_on")
    if not rec:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    known = {d: (p, s) for p, s, d in zip(rec["path"], rec["split"], rec["sha256"])}
    rows = [(p, *known[d], "exact", 1.0) for p, d in zip(paths, digests) if d and d in known]
    if fingerprints is not None and has_fingerprints(meta) and len(paths):
        exact = {r[0] for r in rows}
        ok = np.ones(len(paths), bool) if fingerprint_ok is None else np.array(fingerprint_ok)
        ok &= np.array([p not in exact and bool(d) for p, d in zip(paths, digests)])
        ref_ok, ref, ref_keys, ref_digest = _reference(rec["fingerprints"])
        found = _match(np.asarray(fingerprints), ok, ref, ref_keys, ref_digest, cache_dir)
        for q, r, score in zip(found["query"], found["reference"], found["score"]):
            k = int(ref_ok[r])
            rows.append((paths[q], rec["path"][k], rec["split"][k], "near", float(score)))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


_MATCHES: collections.OrderedDict = collections.OrderedDict()  # content digest -> match table
_MATCHES_KEPT = 8


def _match(query: np.ndarray, ok: np.ndarray, ref: np.ndarray, ref_keys: tuple,
           ref_digest: bytes, cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """``near_duplicates.match(query, ref, ok)``, remembered for the last few contents: the
    models of one run record the same training images, so scoring a split or an external set
    with all of them matches those images once rather than once per model. Keyed by the bytes
    of the query fingerprints, their mask and the reference (``ref_digest``), so any change of
    either is a new match."""
    key = _digest(query, ok, start=ref_digest)
    if key not in _MATCHES:
        _MATCHES[key] = near_duplicates.match(query, ref, ok, reference_keys=ref_keys,
                                              cache_dir=cache_dir)
        while len(_MATCHES) > _MATCHES_KEPT:
            _MATCHES.popitem(last=False)
    _MATCHES.move_to_end(key)
    return _MATCHES[key]


def _digest(*arrays: np.ndarray, start: bytes = b"") -> bytes:
    """A digest of the arrays' dtypes, shapes and bytes (after ``start``)."""
    h = hashlib.blake2b(start, digest_size=20)
    for a in arrays:
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.digest()


_REFERENCES: dict[int, tuple] = {}  # id(fingerprint tensor) -> (weak reference to it, value)


def _reference(fp: dict) -> tuple[np.ndarray, np.ndarray, tuple, bytes]:
    """A record's usable training fingerprints: ``(their row indices, uint8 (M, 64, 64), their
    near_duplicates.search_keys, a digest of their bytes)``, made once per loaded checkpoint
    (``predict.py`` matches every batch against them) and forgotten with it. Keyed by the
    tensor's identity (a tensor's ``==`` compares elements, so it cannot key a dictionary
    itself)."""
    key = fp["images"]
    hit = _REFERENCES.get(id(key))
    if hit is None or hit[0]() is not key:
        ok = np.flatnonzero(np.asarray(fp["ok"], bool))
        images = key.numpy()[ok]
        _REFERENCES[id(key)] = (weakref.ref(key, lambda _, k=id(key): _REFERENCES.pop(k, None)),
                                (ok, images, near_duplicates.search_keys(images),
                                 _digest(images)))
        hit = _REFERENCES[id(key)]
    return hit[1]


def has_trained_on(meta: dict) -> bool:
    return bool(meta.get("trained_on"))


def check_trained_on(meta: dict, rows: pd.DataFrame, digests: list[str], name: str = "",
                     fingerprints: np.ndarray | None = None, fingerprint_ok=None,
                     cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Refuse to score a model on ``rows`` (a manifest's test split, say; ``digests`` one per
    row) that hold images it was trained or validated on byte for byte: ValueError naming how
    many and a few. Also refuses another class list. Returns the near copies
    (``training_overlap`` rows of kind ``near``; ``fingerprints`` one per row), which the caller
    leaves out of the scores. A checkpoint that records no training images (older checkpoints,
    other tools) passes with a warning: nothing can be checked."""
    name = name or meta.get("arch", "the model")
    names = utils.class_names_from(rows)
    if not set(names) <= set(meta["class_names"]):
        raise ValueError(f"{name} was trained on classes {meta['class_names']}; these images "
                         f"are labelled {names}")
    if not has_trained_on(meta):
        warnings.warn(f"{name}: the checkpoint records no training images (trained_on); cannot "
                      f"check that none of them is among the images scored", stacklevel=2)
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    found = training_overlap(meta, rows["path"].tolist(), digests, fingerprints, fingerprint_ok,
                             cache_dir)
    leaked = found[found["kind"] == "exact"]
    if len(leaked):
        few = "; ".join(f"{r.path} = {r.trained_split} image {r.trained_path}"
                        for r in leaked.head(3).itertuples())
        raise ValueError(
            f"{name} was trained on {len(leaked)} of these {len(rows)} images (byte-identical "
            f"files; e.g. {few}): its score on them would not be a test. Evaluate it with the "
            f"manifest it was trained with (split_dataset.py with the same seed), or retrain "
            f"on this split (notebook 2 / train.py)")
    return found[found["kind"] == "near"].reset_index(drop=True)
