"""Data, training and evaluation helpers for the study (no plotting, no hooks, no architectures).

Contents, in data-flow order: configuration and seeding, device choice, the X-ray reader and
transforms, the Dataset over a split manifest, the weighted sampler and loaders, the training loop
with early stopping and resumable checkpoints, prediction, and checkpoint I/O. Metrics live in
``metrics.py`` (``classification_report`` is re-exported here).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import hashlib
import math
import os
import platform
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

import networks
from split_dataset import write_csv_atomic
from metrics import classification_report  # noqa: F401  (public name, see DESIGN.md)
from xray_io import (atomic_write, load_resized, load_resized_or_reason, process_pool,  # noqa: F401
                     read_xray)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LR_PRETRAINED = 3e-5  # the study's Adam learning rate for ImageNet-initialised models
# From random initialisation: networks.scratch_lr(arch) (1e-3; 1e-4 for VGG, which has no batch
# norm). 3e-5 barely moves a random network within a demo budget.


# --------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Every training knob in one place; saved into each checkpoint (``dataclasses.asdict``)."""
    epochs: int = 25            # upper bound; early stopping usually ends sooner
    batch_size: int = 32
    lr: float | None = None     # None: LR_PRETRAINED if pretrained, else networks.scratch_lr
    weight_decay: float = 0.0
    patience: int = 5           # epochs without val-loss improvement > min_delta before stopping
    min_delta: float = 1e-3
    image_size: int = 224
    num_workers: int = 2
    seed: int = 42
    amp: bool = True            # CUDA only: bf16 autocast where supported, else fp16 + GradScaler
    channels_last: bool = True  # CUDA only
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    compile: bool = False       # torch.compile the model for training (CUDA; minutes to warm up)
    weights: str | None = None  # "imagenet", a path, or None (random init); recorded for lr
    max_per_class: int | None = None  # cap on training images per class (quick runs)
    schedule: str = "cosine"    # "cosine" (to lr/100 over ``epochs``) or "constant"

    def resolved_lr(self, arch: str) -> float:
        if self.lr is not None:
            return self.lr
        return networks.scratch_lr(arch) if self.weights is None else LR_PRETRAINED


def per_arch(value, arch: str):
    """``value[arch]`` when ``value`` is a dict (per-architecture settings), else ``value``."""
    if isinstance(value, dict):
        if arch not in value:
            raise ValueError(f"no setting for {arch!r} in {value}; give one per architecture")
        return value[arch]
    return value


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def choose_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given ("cpu", "cuda", "cuda:1", "mps"), else cuda > mps > cpu."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}


def dataset_info(data_dir: str | os.PathLike) -> dict:
    """``{"name", "synthetic"}`` for a dataset folder (the demo generator leaves a marker)."""
    marker = Path(data_dir) / "demo_dataset.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        return {"name": info.get("name", "synthetic demo"), "synthetic": True}
    return {"name": Path(data_dir).resolve().name, "synthetic": False}


# --------------------------------------------------------------------------- images
def load_mask(path: str | os.PathLike, size: int) -> np.ndarray:
    """A mask image as bool ``(size, size)`` (nearest-neighbour resize; nonzero = inside)."""
    a = read_xray(path)
    return cv2.resize((a > 0.5).astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def augment_batch(x: torch.Tensor, max_rotate: float = 7.0, max_translate: float = 0.06,
                  scale: tuple[float, float] = (0.92, 1.08), brightness: float = 0.2,
                  contrast: float = 0.2) -> torch.Tensor:
    """Random augmentation of a batch of radiographs, on whatever device ``x`` is on.

    ``x``: float ``(N, 1, S, S)`` in [0, 1]; returns the same shape. Per image: a small rotation,
    translation and scale (patient positioning; one ``grid_sample``, zeros outside), then
    brightness and contrast around the image mean (exposure). Random numbers come from torch's
    global CPU generator, so a seeded run augments identically on CPU and GPU.
    No horizontal flip: chest radiographs are not left-right symmetric (the heart sits on the
    patient's left, L/R markers are printed), so a flip makes anatomically impossible images.
    """
    n = x.shape[0]
    r = torch.rand(n, 6, dtype=torch.float32)                     # all randomness, (N, 6)
    if x.device.type == "cuda":   # one pinned, asynchronous copy: no host-device sync per batch
        r = r.pin_memory()
    r = r.to(x.device, non_blocking=True)
    angle = (r[:, 0] * 2 - 1) * math.radians(max_rotate)
    s = scale[0] + r[:, 1] * (scale[1] - scale[0])
    t = (r[:, 2:4] * 2 - 1) * max_translate * 2                   # grid units span [-1, 1]
    b = 1 + (r[:, 4] * 2 - 1) * brightness
    c = 1 + (r[:, 5] * 2 - 1) * contrast
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1),
                         torch.stack([sin, cos, t[:, 1]], 1)], 1)             # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * b.view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c.view(n, 1, 1, 1) + mean
    return x.clamp_(0, 1)


def prepare_batch(x: torch.Tensor, device: torch.device, augment: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """Loader batch -> model input on ``device``.

    ``x``: uint8 ``(N, 1, S, S)`` as ``XrayDataset`` yields it (4x fewer bytes to copy than
    float). Copied non-blocking (pin the loader's memory on CUDA), scaled to [0, 1], augmented
    (``augment_batch``) if asked, expanded to 3 ImageNet-normalised channels: float
    ``(N, 3, S, S)``, channels-last on CUDA when ``channels_last``.
    """
    x = x.to(device, non_blocking=True).float().div_(255)
    if augment:
        x = augment_batch(x)
    x = normalize(x)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@functools.lru_cache(maxsize=16)
def _norm_constants(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype):
    # Made once per device: building them per batch would copy (and sync) host -> GPU each time.
    s = 1 / torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    m = -torch.tensor(mean, dtype=torch.float64).view(3, 1, 1) * s
    return m.to(device, dtype), s.to(device, dtype)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Gray ``(..., 1, S, S)`` in [0, 1] -> 3-channel ImageNet-normalised ``(..., 3, S, S)``,
    in one pass: ``x / std_c - mean_c / std_c`` broadcast over the three channels."""
    m, s = _norm_constants(tuple(mean), tuple(std), x.device, x.dtype)
    return torch.addcmul(m, x, s)


# --------------------------------------------------------------------------- dataset
def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Load a manifest written by split_dataset.py (empty mask cells stay empty strings)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a split manifest; missing columns {sorted(missing)} "
                         f"(expected path,label,split[,group,mask_path,...])")
    return df


def class_names_from(manifest: pd.DataFrame) -> list[str]:
    """Class names in label-index order: sorted folder names (fixed by the manifest)."""
    return sorted(manifest["label"].unique())


def cap_per_class(df: pd.DataFrame, max_per_class: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` rows of each label, drawn with ``seed`` (order kept)."""
    if not max_per_class:
        return df
    keep = df.sample(frac=1.0, random_state=seed).groupby("label").head(max_per_class)
    return df.loc[sorted(keep.index)]


def _file_stamp(path: Path) -> str:
    """``"<bytes>\\0<mtime_ns>"`` of a file, or ``"missing"``: what changes when it is replaced
    or touched."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}\0{st.st_mtime_ns}"


def _cache_key(df: pd.DataFrame, data_dir: Path, size: int) -> str:
    """Content key of a decoded cache: data folder, image size, and every listed file's path,
    byte size and modification time (a replaced or touched file gives a new key)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{data_dir.resolve()}\n{size}\n".encode())
    for rel in df["path"]:
        h.update(f"{rel}\0{_file_stamp(data_dir / rel)}\n".encode())
    return h.hexdigest()


def data_fingerprint(manifest: pd.DataFrame, data_dir: str | os.PathLike) -> str:
    """A key that changes when the split or any listed file changes: every row's path, label and
    split with the file's byte size and modification time. ``fit`` stores it in the checkpoint
    and resumes only on the same key (a re-split or redrawn data never reuses a model)."""
    data_dir = Path(data_dir)
    h = hashlib.blake2b(digest_size=12)
    for rel, label, split in sorted(zip(manifest["path"], manifest["label"], manifest["split"])):
        h.update(f"{rel}\0{label}\0{split}\0{_file_stamp(data_dir / rel)}\n".encode())
    return h.hexdigest()


def _decode_all(paths: list[str], size: int, workers: int | None, progress: bool):
    """Decode + resize every path (process pool for many files); yields (image|None, reason)."""
    jobs = [(p, size) for p in paths]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // 256 + 1))
    if workers == 1:
        it = map(load_resized_or_reason, jobs)
        yield from tqdm(it, total=len(jobs), desc="decoding", disable=not progress, leave=False)
        return
    with process_pool(workers) as pool:
        it = pool.imap(load_resized_or_reason, jobs, chunksize=64)
        yield from tqdm(it, total=len(jobs), desc="decoding", disable=not progress, leave=False)


def decoded_images(df: pd.DataFrame, data_dir: str | os.PathLike, size: int,
                   cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
    """Every image of ``df`` decoded once (``read_xray``) and resized to uint8 ``(N, S, S)``.

    Returns ``(images, ok, skipped)``: ``ok`` bool ``(N,)`` marks readable files, ``skipped``
    lists ``(path, reason)`` for the others (their rows are zeros). With ``cache_dir`` the array
    is a memory-mapped file ``decoded-<key>-<S>px.u8`` there, keyed by ``_cache_key``: later
    epochs, runs and DataLoader workers read it instead of decoding; a changed manifest, file or
    size gives a new key. The file is written under a temporary name and renamed when complete.
    Falls back to RAM (with a warning) when the cache folder lacks space or cannot be written.
    """
    data_dir = Path(data_dir)
    n = len(df)
    paths = [str(data_dir / p) for p in df["path"]]
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        stem = cache_dir / f"decoded-{_cache_key(df, data_dir, size)}-{size}px"
        data_file, info_file = stem.with_suffix(".u8"), stem.with_suffix(".json")
        if data_file.is_file() and info_file.is_file():
            info = json.loads(info_file.read_text())
            images = np.memmap(data_file, np.uint8, "r", shape=(n, size, size))
            return images, np.array(info["ok"], bool), [tuple(x) for x in info["skipped"]]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(cache_dir).free
            if free < n * size * size * 1.1 + 2**28:
                raise OSError(f"{free / 2**30:.1f} GiB free in {cache_dir}, need "
                              f"{n * size * size / 2**30:.1f} GiB")
            tmp = data_file.with_suffix(f".u8.tmp{os.getpid()}")
            images = np.memmap(tmp, np.uint8, "w+", shape=(n, size, size))
        except OSError as e:
            warnings.warn(f"decoded-image cache not used ({e}); decoding into memory",
                          stacklevel=2)
            cache_dir = None
    if cache_dir is None:
        images = np.zeros((n, size, size), np.uint8)
    ok, skipped = np.ones(n, bool), []
    for i, (img, reason) in enumerate(_decode_all(paths, size, workers, progress)):
        if img is None:
            ok[i] = False
            skipped.append((df["path"].iloc[i], reason))
        else:
            images[i] = img
    for rel, reason in skipped:
        warnings.warn(f"skipping unreadable image: {reason}", stacklevel=2)
    if cache_dir is not None:
        images.flush()
        del images
        os.replace(tmp, data_file)
        write_json_atomic({"ok": ok.tolist(), "skipped": skipped, "size": size, "n": n},
                          info_file)
        images = np.memmap(data_file, np.uint8, "r", shape=(n, size, size))
    return images, ok, skipped


class XrayDataset(Dataset):
    """Images listed in a manifest DataFrame (already filtered to one split).

    Item ``i``: ``(image uint8 (1, S, S), label int64, i)`` and, when ``mask_column`` is set, a
    4th element: bool ``(S, S)`` mask (all False where the row has no mask). Scaling,
    augmentation and normalisation happen per batch on the device (``prepare_batch``).
    ``preload=True`` decodes every image once up front (``decoded_images``; on disk under
    ``cache_dir`` if given, else in RAM); unreadable files are then dropped and listed in
    ``self.skipped``. Without preload a file that fails to read is skipped with a warning: the
    item is ``None`` (dropped by ``collate_skip_none``), never a crash.
    """

    def __init__(self, df: pd.DataFrame, data_dir: str | os.PathLike, class_names: list[str],
                 image_size: int, preload: bool = False, mask_column: str | None = None,
                 cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                 progress: bool = False):
        unknown = set(df["label"]) - set(class_names)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not in class_names {class_names}")
        self.df = df.reset_index(drop=True)
        self.data_dir = Path(data_dir)
        self.class_names = list(class_names)
        self.image_size = image_size
        self.mask_column = mask_column
        self.skipped: list[tuple[str, str]] = []
        self.images: np.ndarray | None = None
        self.rows = np.arange(len(self.df))        # item -> row of the decoded array
        if preload:
            self.images, ok, self.skipped = decoded_images(self.df, self.data_dir, image_size,
                                                           cache_dir, workers, progress)
            self.rows = np.flatnonzero(ok)
            self.df = self.df.iloc[self.rows].reset_index(drop=True)
        self.labels = torch.tensor([self.class_names.index(c) for c in self.df["label"]],
                                   dtype=torch.long)

    def __len__(self) -> int:
        return len(self.df)

    def image_uint8(self, i: int) -> np.ndarray:
        """The resized uint8 ``(S, S)`` image of item ``i`` (decoded array or disk)."""
        if self.images is not None:
            return np.array(self.images[self.rows[i]])  # a copy: the memmap is read-only
        return load_resized(self.data_dir / self.df.at[i, "path"], self.image_size)

    def __getitems__(self, indices: list[int]) -> list:
        """Batched fetch (the DataLoader calls this with a whole batch of indices): one fancy
        index into the decoded array instead of one read per image."""
        if self.images is None or self.mask_column:
            return [self[i] for i in indices]
        idx = np.asarray(indices)
        imgs = torch.from_numpy(np.asarray(self.images[self.rows[idx]])).unsqueeze(1)  # (N,1,S,S)
        return [(imgs[k], self.labels[i], int(i)) for k, i in enumerate(indices)]

    def __getitem__(self, i: int):
        try:
            img = self.image_uint8(i)
        except (ValueError, OSError) as e:
            warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
            return None
        item = (torch.from_numpy(img).unsqueeze(0), self.labels[i], i)
        if self.mask_column:
            rel = self.df.at[i, self.mask_column] if self.mask_column in self.df else ""
            m = (load_mask(self.data_dir / rel, self.image_size) if rel
                 else np.zeros((self.image_size,) * 2, bool))
            item = item + (torch.from_numpy(m),)
        return item


def collate_skip_none(batch: list):
    """Default collation after dropping items that failed to load (``None``)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.utils.data.default_collate(batch)


def weighted_sampler(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None
                     ) -> WeightedRandomSampler:
    """Weighted random oversampling: weight 1/frequency of the sample's class, with replacement,
    ``num_samples = len(labels)``, so each epoch sees the classes about equally often."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=generator)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32  # set per worker by the loader from its generator
    np.random.seed(s)
    random.seed(s)


def eval_loader(df: pd.DataFrame, data_dir: str | os.PathLike, class_names: list[str],
                image_size: int, batch_size: int = 64, num_workers: int = 2,
                preload: bool = True, mask_column: str | None = None, pin_memory: bool = False,
                cache_dir: str | os.PathLike | None = None, progress: bool = False) -> DataLoader:
    """Loader over ``df`` in its order (evaluation, prediction, Grad-CAM); no augmentation."""
    ds = XrayDataset(df, data_dir, class_names, image_size, preload=preload,
                     mask_column=mask_column, cache_dir=cache_dir, progress=progress)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skip_none, worker_init_fn=_seed_worker,
                      pin_memory=pin_memory)


def make_loaders(manifest: pd.DataFrame, data_dir: str | os.PathLike, class_names: list[str],
                 image_size: int, batch_size: int = 32, num_workers: int = 2, seed: int = 42,
                 preload: bool = True, max_per_class: int | None = None,
                 pin_memory: bool = False, splits: Iterable[str] = ("train", "val", "test"),
                 cache_dir: str | os.PathLike | None = None, progress: bool = False
                 ) -> dict[str, DataLoader]:
    """One DataLoader per split present in the manifest (images decoded once, see
    ``decoded_images``; ``cache_dir`` keeps them on disk across runs).

    ``train``: the weighted sampler (seeded generator), capped by ``max_per_class``; ``fit``
    augments its batches on the device. Other splits: ``eval_loader``. Workers are seeded from
    the loader's generator.
    """
    loaders = {}
    for split in splits:
        df = manifest[manifest["split"] == split]
        if df.empty:
            continue
        if split != "train":
            loaders[split] = eval_loader(df, data_dir, class_names, image_size, batch_size,
                                         num_workers, preload, pin_memory=pin_memory,
                                         cache_dir=cache_dir, progress=progress)
            continue
        df = cap_per_class(df, max_per_class, seed)
        ds = XrayDataset(df, data_dir, class_names, image_size, preload=preload,
                         cache_dir=cache_dir, progress=progress)
        g = torch.Generator().manual_seed(seed)
        loaders[split] = DataLoader(
            ds, batch_size=batch_size, sampler=weighted_sampler(ds.labels, len(class_names), g),
            num_workers=num_workers, collate_fn=collate_skip_none, worker_init_fn=_seed_worker,
            generator=g, pin_memory=pin_memory)
    return loaders


def sample_rows(manifest: pd.DataFrame, per_class: int, split: str | None = None,
                seed: int = 0) -> pd.DataFrame:
    """``per_class`` rows of each class (seeded), optionally from one split, class-ordered."""
    df = manifest if split is None else manifest[manifest["split"] == split]
    return (df.sample(frac=1.0, random_state=seed).groupby("label").head(per_class)
              .sort_values(["label", "path"]))


def image_statistics(manifest: pd.DataFrame, data_dir: str | os.PathLike, per_class: int = 100,
                     seed: int = 0) -> pd.DataFrame:
    """Per-image file and intensity statistics for a seeded sample of each class.

    Columns: ``path, label, width, height, mode`` (as stored), and ``mean, std, p05, p95,
    border_mean`` of the decoded [0, 1] image (``border_mean``: the outer 8% frame, where
    markers, text and collimation live).
    """
    from PIL import Image
    rows = []
    for r in sample_rows(manifest, per_class, seed=seed).itertuples():
        p = Path(data_dir) / r.path
        try:
            a = read_xray(p)
            with Image.open(p) as im:
                mode = im.mode
        except (ValueError, OSError):
            continue
        h, w = a.shape
        b = max(1, int(0.08 * min(h, w)))
        frame = np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[:, :b].ravel(), a[:, -b:].ravel()])
        rows.append({"path": r.path, "label": r.label, "width": w, "height": h, "mode": mode,
                     "mean": float(a.mean()), "std": float(a.std()),
                     "p05": float(np.percentile(a, 5)), "p95": float(np.percentile(a, 95)),
                     "border_mean": float(frame.mean())})
    return pd.DataFrame(rows)


def class_differences(stats: pd.DataFrame, threshold: float = 0.8) -> pd.DataFrame:
    """How much each statistic differs between classes: a shortcut check.

    Numeric columns: the largest gap between class means divided by the pooled within-class
    standard deviation (a Cohen's-d-like effect size); categorical columns (size, mode): 1 minus
    the overlap of the classes' value sets. ``flag`` marks values above ``threshold``: a model
    could separate those classes without looking at the lungs.
    """
    out = []
    stats = stats.assign(size=stats["width"].astype(str) + "x" + stats["height"].astype(str))
    for col in ("mean", "std", "p05", "p95", "border_mean"):
        g = stats.groupby("label")[col]
        pooled = float(np.sqrt(g.var(ddof=1).fillna(0).mean())) or 1e-9
        gap = float(g.mean().max() - g.mean().min())
        out.append({"statistic": col, "difference": gap / pooled,
                    "by_class": ", ".join(f"{k}: {v:.3f}" for k, v in g.mean().items())})
    for col in ("size", "mode"):
        sets = stats.groupby("label")[col].agg(lambda v: set(v))
        common = set.intersection(*sets) if len(sets) else set()
        union = set.union(*sets) if len(sets) else set()
        out.append({"statistic": col, "difference": 1 - len(common) / max(len(union), 1),
                    "by_class": ", ".join(f"{k}: {'/'.join(sorted(v))}" for k, v in sets.items())})
    df = pd.DataFrame(out)
    df["flag"] = df["difference"] > threshold
    return df


# --------------------------------------------------------------------------- checkpoints
def _atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **meta) -> None:
    """Write ``{"model_state", "meta"}`` atomically (temp file + rename).

    ``meta`` must let the model be rebuilt from the file alone: ``arch`` and ``class_names`` are
    required; by convention also ``image_size``, ``mean``, ``std``, ``epoch``, ``val_loss``,
    ``val_acc``, ``seed``, ``config`` (a dict). Library versions are added. Values must be plain
    Python types or tensors, so the file loads with ``weights_only=True``.
    """
    for key in ("arch", "class_names"):
        if key not in meta:
            raise ValueError(f"save_checkpoint needs meta[{key!r}]; got keys {sorted(meta)}")
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta,
            "versions": library_versions()}
    _atomic_torch_save({"model_state": _cpu_state(model), "meta": meta}, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by ``save_checkpoint`` from the file alone; returns
    ``(model in eval mode on device, meta)``. Loads with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (train it with notebook 2 / "
                                f"utils.fit first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by utils.save_checkpoint")
    meta = ckpt["meta"]
    model = networks.build_model(meta["arch"], len(meta["class_names"]), weights=None)
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- training
def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16) when ``enabled``; elsewhere a
    no-op context (CPU and MPS run fp32)."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
             channels_last: bool = True) -> dict:
    """Mean cross-entropy loss and accuracy over ``loader`` (``n`` = images actually read)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in loader:
        if batch is None:
            continue
        x, y = prepare_batch(batch[0], device, False, channels_last), batch[1].to(device)
        with autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "n": n}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
            channels_last: bool = True, progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true int64 (N,), y_prob float64 (N, C) softmax, index int64 (N,))``; ``index`` gives
    each row's position in ``loader.dataset`` (files that failed to load are absent)."""
    model.eval()
    ys, ps, idx = [], [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        if batch is None:
            continue
        with autocast(device, amp):
            logits = model(prepare_batch(batch[0], device, False, channels_last))
        ps.append(torch.softmax(logits.float(), 1).cpu().double())
        ys.append(batch[1])
        idx.append(batch[2])
    if not ys:
        raise ValueError("no image of the loader could be read")
    return torch.cat(ys).numpy(), torch.cat(ps).numpy(), torch.cat(idx).numpy()


def train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool = True,
                channels_last: bool = True, desc: str = "train", progress: bool = False,
                nan_hint: str = "", check_every: int = 20) -> dict:
    """One pass over ``loader`` with on-device augmentation (``prepare_batch``).

    Returns ``{"loss", "acc", "seen"}`` averaged over the samples actually seen. Loss and
    accuracy accumulate on the device; the host syncs every ``check_every`` steps to check the
    loss is finite (raising FloatingPointError with ``nan_hint``) and to update the bar.
    """
    model.train()
    loss_sum = torch.zeros((), device=device,  # MPS has no float64
                           dtype=torch.float32 if device.type == "mps" else torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for step, batch in enumerate(bar, start=1):
        if batch is None:
            continue
        x = prepare_batch(batch[0], device, augment=True, channels_last=channels_last)
        y = batch[1].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if step % check_every == 0 or step == len(loader):
            mean = loss_sum.item() / seen
            if not math.isfinite(mean):
                raise FloatingPointError(
                    f"training loss became {mean} (after {seen} samples). {nan_hint}. Lower "
                    f"the learning rate (now {opt.param_groups[0]['lr']:.2e}) or check the "
                    f"inputs.")
            bar.set_postfix(loss=f"{mean:.4f}", acc=f"{correct.item() / seen:.3f}")
    n = max(seen, 1)
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n, "seen": seen}


HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "train_seen")


def _reseed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """All randomness of an epoch derives from (seed, epoch): a resumed run replays it exactly."""
    s = seed * 10_007 + epoch
    seed_everything(s)
    for g in (loader.generator, getattr(loader.sampler, "generator", None)):
        if g is not None:
            g.manual_seed(s)


def _config_key(cfg: dict) -> dict:
    """The config entries that must match for a checkpoint to be resumed."""
    return {k: v for k, v in cfg.items() if k not in ("epochs", "num_workers", "patience")}


def fit(model: nn.Module, loaders: dict[str, DataLoader], arch: str, class_names: list[str],
        config: TrainConfig, device: torch.device, models_dir: str | os.PathLike = "models",
        history_dir: str | os.PathLike = "outputs/CSVs", resume: bool = True,
        progress: bool = True, extra_meta: dict | None = None) -> pd.DataFrame:
    """Train ``model`` on ``loaders["train"]`` with early stopping on ``loaders["val"]`` loss.

    Adam (``config.resolved_lr(arch)``), cross-entropy, cosine LR decay over ``config.epochs`` down
    to lr/100 (or a constant LR with ``schedule="constant"``). After every epoch: a row appended to ``history_dir/<arch>.csv``
    (``HISTORY_COLUMNS``; losses and accuracies averaged over the samples actually seen), the
    resumable ``models_dir/<arch>_last.pt`` (model, optimizer, scheduler, scaler, epoch,
    early-stopping state), and ``models_dir/<arch>.pt`` (``save_checkpoint`` format) when the
    validation loss improved by more than ``min_delta``. Training stops after ``patience``
    epochs without improvement and the best weights are restored into ``model``.

    With ``resume=True`` a matching ``<arch>_last.pt`` (same config, class names and
    ``extra_meta``, e.g. a ``data_fingerprint``) continues where it stopped (a finished run is
    not retrained). A NaN/inf training loss raises FloatingPointError; the checkpoints of
    the last good epoch stay. Returns the history DataFrame.
    """
    cfg = dataclasses.asdict(config)
    models_dir, history_dir = Path(models_dir), Path(history_dir)
    best_path, last_path = models_dir / f"{arch}.pt", models_dir / f"{arch}_last.pt"
    hist_path = history_dir / f"{arch}.csv"
    if "train" not in loaders or "val" not in loaders:
        raise ValueError(f"fit needs 'train' and 'val' loaders, got {sorted(loaders)}")
    seed_everything(config.seed, config.deterministic)
    cl = config.channels_last and device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    lr = config.resolved_lr(arch)
    # Fused Adam: one kernel for all parameters; on a CPU it makes VGG-16's step (138M
    # parameters) ~6x cheaper than the per-tensor loop.
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    if config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs),
                                                           eta_min=lr / 100)
    elif config.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: cosine, constant")
    use_amp = config.amp and device.type == "cuda"
    fp16 = use_amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    meta = {"arch": arch, "class_names": list(class_names), "image_size": config.image_size,
            "seed": config.seed, "config": cfg, **(extra_meta or {})}
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "finished": False}

    if resume and last_path.is_file():
        last = torch.load(last_path, map_location="cpu", weights_only=True)
        same_data = all(last["meta"].get(k) == v for k, v in (extra_meta or {}).items())
        if _config_key(last["meta"]["config"]) == _config_key(cfg) and same_data and \
                last["meta"]["class_names"] == list(class_names):
            model.load_state_dict(last["model_state"])
            opt.load_state_dict(last["optimizer_state"])
            sched.load_state_dict(last["scheduler_state"])
            scaler.load_state_dict(last["scaler_state"])
            state = last["state"]
            if state["finished"] and state["epoch"] >= 1:
                print(f"{arch}: already trained ({state['epoch']} epochs, best epoch "
                      f"{state['best_epoch']}); delete {last_path} to retrain")
            else:
                print(f"{arch}: resuming after epoch {state['epoch']}")
        else:
            print(f"{arch}: {last_path} was trained with another config or other data; "
                  f"starting afresh")
    history = _read_history(hist_path, upto=state["epoch"])
    _write_history(history, hist_path)
    rows = history.to_dict("records")

    # A compiled wrapper shares the parameters; checkpoints always save the plain module.
    step_model = torch.compile(model) if config.compile else model
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["finished"]:
            break
        t0 = time.perf_counter()
        _reseed_epoch(loaders["train"], config.seed, epoch)
        tr = train_epoch(step_model, loaders["train"], opt, scaler, device, use_amp, cl,
                         desc=f"{arch} epoch {epoch}/{config.epochs}", progress=progress,
                         nan_hint=f"{arch} epoch {epoch}: the last good checkpoints are "
                                  f"{last_path} and {best_path}")
        val = evaluate(step_model, loaders["val"], device, use_amp, cl)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
               "val_loss": val["loss"], "val_acc": val["acc"], "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0, "train_seen": tr["seen"]}
        sched.step()
        improved = val["loss"] < state["best_loss"] - config.min_delta
        if improved:
            state.update(best_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
            save_checkpoint(best_path, model, **meta, epoch=epoch, val_loss=val["loss"],
                            val_acc=val["acc"])
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["finished"] = state["bad_epochs"] >= config.patience or epoch == config.epochs
        _atomic_torch_save({"model_state": _cpu_state(model), "optimizer_state": opt.state_dict(),
                            "scheduler_state": sched.state_dict(),
                            "scaler_state": scaler.state_dict(), "state": state,
                            "meta": {**meta, "versions": library_versions()}}, last_path)
        _append_history(row, hist_path)
        rows.append(row)
        if progress:
            print(f"{arch} epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc "
                  f"{row['val_acc']:.3f} | {row['seconds']:.1f} s" + (" *" if improved else ""))
        if state["finished"] and epoch < config.epochs:
            print(f"{arch}: early stop at epoch {epoch}; best epoch {state['best_epoch']} "
                  f"(val loss {state['best_loss']:.4f})")
    if best_path.is_file():
        best, _ = load_checkpoint(best_path)
        model.load_state_dict(best.state_dict())
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def _read_history(path: Path, upto: int) -> pd.DataFrame:
    if upto <= 0 or not path.is_file():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    h = pd.read_csv(path)
    return h[h["epoch"] <= upto].reset_index(drop=True)


def _write_history(history: pd.DataFrame, path: Path) -> None:
    write_csv_atomic(history.reindex(columns=list(HISTORY_COLUMNS)), path)


def _append_history(row: dict, path: Path) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow([row[c] for c in HISTORY_COLUMNS])
        f.flush()
        os.fsync(f.fileno())


def summarize_history(history: pd.DataFrame) -> dict:
    """Best epoch (lowest validation loss), its validation loss/accuracy, mean seconds/epoch."""
    best = history.loc[history["val_loss"].idxmin()]
    return {"best_epoch": int(best["epoch"]), "val_loss": float(best["val_loss"]),
            "val_acc": float(best["val_acc"]), "epochs_run": int(history["epoch"].max()),
            "seconds_per_epoch": float(history["seconds"].mean())}


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """``json.dump`` (indented, NaN written as null) via a temp file + rename."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=2) + "\n")
