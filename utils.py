"""The data side of the study, as the study's ``utils.py`` held it: dataset metadata, masks,
transforms and on-device augmentation, the Dataset over a split manifest (reading the
decoded-image cache of ``image_cache.py``), the weighted sampler (shared out among DDP processes)
and the loaders. Notebook 1's image statistics are ``exploration.py``; training is
``training.py``; checkpoints ``checkpoints.py``; metrics ``metrics.py``; the image reader and
atomic writers ``xray_io.py`` (re-exported here).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from image_cache import decoded_images
from xray_io import load_resized, read_xray

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def progress_bar(loader: DataLoader, desc: str, progress: bool = True):
    """A progress bar over one pass of ``loader``. tqdm gets the pass's iterator, not the
    loader: in a Jupyter kernel ``tqdm.auto`` calls ``iter()`` on what it is given and then
    iterates it again, which started a second pass with its own worker processes, abandoned with
    batches in flight (extra work every epoch, and "Exception ignored ... can only test a child
    process" in the log when the next epoch's workers inherited it)."""
    return tqdm(iter(loader), total=len(loader), desc=desc, disable=not progress, leave=False)



def dataset_info(data_dir: str | os.PathLike) -> dict:
    """``{"name", "synthetic", "shortcut"}`` for a dataset folder (the demo generator leaves a
    marker; ``shortcut``: a demo drawn with ``demo_data.py --shortcut``)."""
    marker = Path(data_dir) / "demo_dataset.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        return {"name": info.get("name", "synthetic demo"), "synthetic": True,
                "shortcut": bool(info.get("shortcut", False))}
    return {"name": Path(data_dir).resolve().name, "synthetic": False, "shortcut": False}


# --------------------------------------------------------------------------- images
def binary_mask(a: np.ndarray) -> np.ndarray:
    """A mask image (from ``read_xray``) as bool: inside = above half its maximum, so 0/255,
    0/1 and 16-bit masks all work and JPEG ringing near 0 stays outside. All-zero: empty."""
    top = float(a.max()) if a.size else 0.0
    return a > top / 2 if top > 0 else np.zeros(a.shape, bool)


def load_mask(path: str | os.PathLike, size: int) -> np.ndarray:
    """A mask image as bool ``(size, size)`` (``binary_mask``, nearest-neighbour resize)."""
    return cv2.resize(binary_mask(read_xray(path)).astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Bool mask grown by ``pixels`` (a disc; 0 returns the mask unchanged)."""
    mask = np.asarray(mask, bool)
    if pixels <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


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
    ``(N, 3, S, S)``, channels-last (CUDA, CPU) when ``channels_last``.
    """
    x = x.to(device, non_blocking=True).float().div_(255)
    if augment:
        x = augment_batch(x)
    x = normalize(x)
    if channels_last and device.type in ("cuda", "cpu"):
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


class WeightedEpochSampler(Sampler[int]):
    """Weighted random oversampling (weight 1/frequency of the sample's class, with replacement),
    so each epoch sees the classes about equally often, drawn once per epoch from
    ``(seed, set_epoch(e))`` and optionally shared out among ``num_replicas`` processes.

    The epoch is one draw of ``len(labels)`` indices (rounded down to a multiple of
    ``num_replicas``, dropping fewer than ``num_replicas`` draws), cut into global batches of
    ``batch_size``; process ``rank`` takes its contiguous ``1/num_replicas`` of every global
    batch. So with a loader batch of ``batch_size // num_replicas``, the processes' batches of a
    step together are exactly the one-process batch of that step, and the epoch is the same
    sample multiset as one process's. ``batch_size`` must be a multiple of ``num_replicas``.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, seed: int = 0,
                 batch_size: int = 1, num_replicas: int = 1, rank: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank {rank} of "
                             f"{num_replicas}")
        if batch_size % num_replicas:
            raise ValueError(f"the global batch size ({batch_size}) must be a multiple of the "
                             f"number of processes ({num_replicas})")
        counts = torch.bincount(labels, minlength=num_classes).double()
        self.weights = 1.0 / counts[labels]
        self.seed, self.epoch = seed, 0
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.total = len(labels) - len(labels) % num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_draw(self) -> torch.Tensor:
        """The epoch's indices for all processes together, in step order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.multinomial(self.weights, self.total, replacement=True, generator=g)

    def __iter__(self):
        draw = self.global_draw()
        for start in range(0, self.total, self.batch_size):
            b = draw[start:start + self.batch_size]
            k = len(b) // self.num_replicas  # == share except in the last, shorter batch
            yield from b[self.rank * k:(self.rank + 1) * k].tolist()

    def __len__(self) -> int:
        return self.total // self.num_replicas


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32  # set per worker by the loader from its generator
    np.random.seed(s)
    random.seed(s)


def eval_loader(df: pd.DataFrame, data_dir: str | os.PathLike, class_names: list[str],
                image_size: int, batch_size: int = 64, num_workers: int = 2,
                preload: bool = True, mask_column: str | None = None, pin_memory: bool = False,
                cache_dir: str | os.PathLike | None = None, progress: bool = False,
                shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """Loader over ``df`` in its order (evaluation, prediction, Grad-CAM); no augmentation.
    ``shard=(rank, num_replicas)`` keeps every ``num_replicas``-th image from ``rank`` on (the
    whole ``df`` is decoded and cached, so every process shares one cache file)."""
    ds = XrayDataset(df, data_dir, class_names, image_size, preload=preload,
                     mask_column=mask_column, cache_dir=cache_dir, progress=progress)
    if shard[1] > 1:
        ds = Subset(ds, range(shard[0], len(ds), shard[1]))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skip_none, worker_init_fn=_seed_worker,
                      pin_memory=pin_memory)


def make_loaders(manifest: pd.DataFrame, data_dir: str | os.PathLike, class_names: list[str],
                 image_size: int, batch_size: int = 32, num_workers: int = 2, seed: int = 42,
                 preload: bool = True, max_per_class: int | None = None,
                 pin_memory: bool = False, splits: Iterable[str] = ("train", "val", "test"),
                 cache_dir: str | os.PathLike | None = None, progress: bool = False,
                 num_replicas: int = 1, rank: int = 0) -> dict[str, DataLoader]:
    """One DataLoader per split present in the manifest (images decoded once, see
    ``decoded_images``; ``cache_dir`` keeps them on disk across runs).

    ``train``: ``WeightedEpochSampler`` (seeded; ``training.fit`` sets its epoch), capped by
    ``max_per_class``; ``training.fit`` augments its batches on the device. Other splits:
    ``eval_loader``. Workers are seeded from the loader's generator. For process ``rank`` of
    ``num_replicas`` (DDP): ``batch_size`` is the global batch, each process loads its share of
    every training batch, and every ``num_replicas``-th row of the other splits.
    """
    loaders = {}
    for split in splits:
        df = manifest[manifest["split"] == split]
        if df.empty:
            continue
        if split != "train":
            loaders[split] = eval_loader(df, data_dir, class_names, image_size, batch_size,
                                         num_workers, preload, pin_memory=pin_memory,
                                         cache_dir=cache_dir, progress=progress,
                                         shard=(rank, num_replicas))
            continue
        df = cap_per_class(df, max_per_class, seed)
        ds = XrayDataset(df, data_dir, class_names, image_size, preload=preload,
                         cache_dir=cache_dir, progress=progress)
        sampler = WeightedEpochSampler(ds.labels, len(class_names), seed, batch_size,
                                       num_replicas, rank)
        loaders[split] = DataLoader(
            ds, batch_size=batch_size // num_replicas, sampler=sampler, num_workers=num_workers,
            collate_fn=collate_skip_none, worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
    return loaders
