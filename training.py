"""The training side of the study: configuration, seeding and device choice, the training loop
with early stopping and resumable checkpoints, evaluation and prediction, checkpoint I/O, and the
helpers that let the same loop run in one process or in N under ``torchrun`` (DDP).

The data side (transforms, the dataset over a manifest, the decoded-image cache, the sampler and
loaders) is ``utils.py``; metrics are ``metrics.py``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import metrics
import networks
import utils
from xray_io import atomic_write, write_csv_atomic

LR_PRETRAINED = 3e-5  # the study's Adam learning rate for ImageNet-initialised models
# From random initialisation: networks.scratch_lr(arch) (1e-3; 5e-5 for VGG, which has no batch
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
    amp: bool = True            # bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing)
    #                             and on CPUs with native bf16 (AVX512-BF16/AMX); else fp32
    channels_last: bool = True  # channels-last tensors on CUDA and CPU (faster oneDNN/cuDNN convs)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    compile: bool = False       # torch.compile the model for training (CUDA; minutes to warm up)
    weights: str | None = None  # "imagenet", a path, or None (random init); recorded for lr
    max_per_class: int | None = None  # cap on training images per class (quick runs)
    schedule: str = "cosine"    # "cosine" (to lr/100 over ``epochs``) or "constant"
    warmup_epochs: int = 0      # linear warm-up epochs before the schedule (see make_schedule)
    augment: bool = True        # on-device augmentation of training batches (utils.augment_batch)
    freeze_bn: bool = False     # batch norm in eval mode while training (frozen running stats)
    sync_bn: bool = False       # SyncBatchNorm across processes under torchrun on CUDA

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
    meta = {"mean": list(utils.IMAGENET_MEAN), "std": list(utils.IMAGENET_STD), **meta,
            "versions": library_versions()}
    _atomic_torch_save({"model_state": _cpu_state(model), "meta": meta}, path)


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
        raise ValueError(f"{path} is not a checkpoint written by training.save_checkpoint")
    meta = ckpt["meta"]
    model = networks.build_model(meta["arch"], len(meta["class_names"]), weights=None)
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), meta


def check_trained_on(meta: dict, manifest: pd.DataFrame, data_dir: str | os.PathLike) -> None:
    """Raise ValueError unless the checkpoint ``meta`` was trained on this manifest's classes,
    split and files (``utils.data_fingerprint``): scoring a model on another split can put its
    training images in the "test" set. Checkpoints without a fingerprint (other tools) pass
    with a warning."""
    names = utils.class_names_from(manifest)
    if meta["class_names"] != names:
        raise ValueError(f"{meta['arch']} was trained on classes {meta['class_names']}; the "
                         f"manifest has {names}")
    if "data" not in meta:
        warnings.warn(f"{meta['arch']}: the checkpoint records no data fingerprint; cannot "
                      f"check that its training images are not in this test split")
        return
    now = utils.data_fingerprint(manifest, data_dir)
    if meta["data"] != now:
        raise ValueError(f"{meta['arch']} was trained on another split or other files (data "
                         f"fingerprint {meta['data']}, this manifest and {data_dir} give {now}): "
                         f"its training images may be in this test split. Evaluate it with the "
                         f"manifest it was trained on, or retrain (notebook 2 / train.py)")


# --------------------------------------------------------------------------- training
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively in oneDNN (AVX512-BF16 or AMX). Without it CPU
    bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device, enabled: bool = True, cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype ``autocast`` uses, or None for fp32: on CUDA bf16 where supported,
    else fp16 (which needs a GradScaler); on a CPU with native bf16 only when ``cpu`` (training
    and validation: ~1.6-2x faster on 2 AVX512-BF16 cores; predictions stay fp32)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu and cpu_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """Mixed precision with ``amp_dtype(device, enabled, cpu)``; a no-op context for fp32."""
    dtype = amp_dtype(device, enabled, cpu)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
             channels_last: bool = True) -> dict:
    """Mean cross-entropy loss and accuracy over ``loader`` (``n`` = images actually read; NaN
    loss and accuracy when none could be read). Under DDP each process passes its shard and the
    sums are all-reduced, so every process gets the same numbers. ``amp``: the device's mixed
    precision (``fit`` passes its own; CPU bf16 included), else fp32."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in loader:
        if batch is None:
            continue
        x, y = utils.prepare_batch(batch[0], device, False, channels_last), batch[1].to(device)
        with autocast(device, amp, cpu=True):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = all_reduce_sums(loss_sum, correct, n, device=device)
    if n == 0:
        return {"loss": math.nan, "acc": math.nan, "n": 0}
    return {"loss": loss_sum / n, "acc": correct / n, "n": int(n)}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
            channels_last: bool = True, progress: bool = False, view: str | None = None,
            dilation: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true int64 (N,), y_prob float64 (N, C) softmax, index int64 (N,))``; ``index`` gives
    each row's position in ``loader.dataset`` (files that failed to load are absent).

    ``view`` (one of ``utils.LUNG_VIEWS``) is the shortcut audit's: the model sees the image as
    it is, only its lungs, or everything but them, lungs grown by ``dilation`` px
    (``utils.lung_view``). The loader must carry the lung masks (``utils.eval_loader(...,
    mask_column="mask_path")``); images without a usable mask are left out of every view."""
    model.eval()
    ys, ps, idx = [], [], []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        if batch is None:
            continue
        x, y, i = batch[:3]
        if view is not None:
            if len(batch) < 4:
                raise ValueError(f"view {view!r} needs the lung masks: build the loader with "
                                 f"mask_column='mask_path'")
            ok = utils.usable_lung_masks(batch[3])
            if not ok.any():
                continue
            x = utils.lung_view(x[ok], batch[3][ok], view, dilation)
            y, i = y[ok], i[ok]
        with autocast(device, amp):
            logits = model(utils.prepare_batch(x, device, False, channels_last))
        ps.append(torch.softmax(logits.float(), 1).cpu().double())
        ys.append(y)
        idx.append(i)
    if not ys:
        raise ValueError("no image of the loader could be read" + (
            "" if view is None else " with a usable lung mask"))
    return torch.cat(ys).numpy(), torch.cat(ps).numpy(), torch.cat(idx).numpy()


def lung_reliance(model: nn.Module, loader: DataLoader, device: torch.device,
                  class_names: list[str], dilation: int) -> dict:
    """What the model needs (the shortcut audit): accuracy with a 95% Wilson interval on each of
    ``utils.LUNG_VIEWS`` of the loader's images (lung masks grown by ``dilation`` px), how many
    images it called each class per view, and ``chance``: the largest class share, what a model
    that cannot see anything useful gets by calling one class. With the lungs removed a model
    that reads the lungs drops to about chance; one that stays well above it reads something
    else (``reads_outside_lungs``: the interval's lower end above chance)."""
    out = {"dilation_px": int(dilation)}
    for view in utils.LUNG_VIEWS:
        y, p, _ = predict(model, loader, device, view=view, dilation=dilation)
        correct = int((p.argmax(1) == y).sum())
        lo, hi = metrics.wilson_interval(correct, len(y))
        out[view] = {"accuracy": correct / len(y), "accuracy_ci": [float(lo), float(hi)],
                     "n": int(len(y)), "predicted": dict(zip(class_names, np.bincount(
                         p.argmax(1), minlength=len(class_names)).tolist()))}
    counts = np.bincount(y, minlength=len(class_names))
    out["chance"] = float(counts.max() / counts.sum())
    out["reads_outside_lungs"] = bool(out["lungs_removed"]["accuracy_ci"][0] > out["chance"])
    return out


def calibrate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Temperature scaling fitted on ``loader``'s images (the validation split): ``temperature``
    and the negative log-likelihood and ECE there before and after (``metrics``). Dividing the
    logits by T changes confidences, never the predicted class."""
    y, p, _ = predict(model, loader, device)
    t = metrics.fit_temperature(y, p)
    q = metrics.apply_temperature(p, t)
    separated = bool((p.argmax(1) == y).all())
    return {"temperature": t, "fitted_on": "val", "n": int(len(y)),
            "note": ("every validation image right: no finite temperature minimises the NLL, "
                     "T = 1 (left as trained)") if separated else "",
            "nll_before": metrics.negative_log_likelihood(y, p),
            "nll_after": metrics.negative_log_likelihood(y, q),
            "ece_before": metrics.expected_calibration_error(y, p),
            "ece_after": metrics.expected_calibration_error(y, q)}


def update_checkpoint_meta(path: str | os.PathLike, **meta) -> None:
    """Add or replace ``meta`` entries of a checkpoint written by ``save_checkpoint``
    (atomically; the weights are untouched), e.g. ``temperature`` after ``calibrate``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["meta"] = {**ckpt["meta"], **meta}
    _atomic_torch_save(ckpt, path)


def train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool = True,
                channels_last: bool = True, desc: str = "train", progress: bool = False,
                nan_hint: str = "", check_every: int = 20, augment: bool = True,
                freeze_bn: bool = False) -> dict:
    """One pass over ``loader`` with on-device augmentation (``utils.prepare_batch``).

    ``augment=False`` feeds the images as they are; ``freeze_bn`` keeps batch-norm layers in eval
    mode (running statistics frozen, their affine weights still trained). Under DDP the returned
    values are summed over all processes (the global epoch).

    Returns ``{"loss", "acc", "seen"}`` averaged over the samples actually seen. Loss and
    accuracy accumulate on the device; the host syncs every ``check_every`` steps to check the
    loss is finite (raising FloatingPointError with ``nan_hint``) and to update the bar.
    """
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    loss_sum = torch.zeros((), device=device,  # MPS has no float64
                           dtype=torch.float32 if device.type == "mps" else torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for step, batch in enumerate(bar, start=1):
        if batch is None:
            continue
        x = utils.prepare_batch(batch[0], device, augment=augment, channels_last=channels_last)
        y = batch[1].to(device, non_blocking=True)
        with autocast(device, amp, cpu=True):
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
    loss_sum, correct, seen = all_reduce_sums(loss_sum.item(), correct.item(), seen, device=device)
    n = max(seen, 1)
    return {"loss": loss_sum / n, "acc": correct / n, "seen": int(seen)}


HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "train_seen", "best")  # best: 1 where this epoch's weights became <arch>.pt


# --------------------------------------------------------------------------- distributed (DDP)
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless a process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(prefer_device: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` in the environment) and return this process's device: NCCL
    and ``cuda:LOCAL_RANK`` when CUDA is there (and ``prefer_device`` is not "cpu"), else gloo
    on the CPU. Without ``WORLD_SIZE`` > 1 it only returns ``choose_device(prefer_device)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return choose_device(prefer_device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (prefer_device or "cuda").startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (builds the decoded-image cache, downloads weights); the
    others wait, then run it (reading what rank 0 wrote)."""
    rank, size = world()
    if size > 1 and rank != 0:
        dist.barrier()
    yield
    if size > 1 and rank == 0:
        dist.barrier()


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    """Each value summed over all processes (float64; unchanged in one process)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    dev = device if device.type == "cuda" else torch.device("cpu")  # gloo: CPU tensors
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def check_replicas_agree(model: nn.Module, device: torch.device) -> None:
    """Under DDP, raise RuntimeError unless every process holds bit-identical parameters (a sum
    per tensor, gathered from all ranks): a guard against silently diverged replicas."""
    rank, size = world()
    if size == 1:
        return
    dev = device if device.type == "cuda" else torch.device("cpu")
    mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(dev)
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine)
    for r, theirs in enumerate(every):
        if not torch.equal(theirs, every[0]):
            diff = (theirs - every[0]).abs().max().item()
            raise RuntimeError(f"DDP replicas diverged: rank {r}'s parameters differ from rank "
                               f"0's (largest per-tensor sum difference {diff:.3g})")


# --------------------------------------------------------------------------- the loop
def _reseed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """All randomness of an epoch derives from (seed, epoch): a resumed run replays it exactly.
    The sampler's draw is the same in every process (``utils.WeightedEpochSampler``); the
    augmentation and dropout streams differ per rank (rank 0's is the one-process stream)."""
    s = seed * 10_007 + epoch
    seed_everything(s + 1_000_003 * world()[0])
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(s)
    if loader.generator is not None:
        loader.generator.manual_seed(s)


def _config_key(cfg: dict) -> dict:
    """The config entries that must match for a checkpoint to be resumed. ``epochs`` may change
    only with a constant learning rate: the cosine schedule's length is ``epochs``, so a
    resumed run with another ``epochs`` would splice two schedules."""
    free = ("num_workers", "patience", "compile")
    if cfg.get("schedule") == "constant":
        free += ("epochs",)
    return {k: v for k, v in cfg.items() if k not in free}


def make_schedule(opt: torch.optim.Optimizer, config: TrainConfig):
    """The per-epoch learning-rate schedule: ``warmup_epochs`` linear steps up to the lr (epoch
    ``e`` of the warm-up at ``e/(warmup+1)`` of it: Adam's first steps move every weight by about
    the lr, which can knock a network without batch norm such as VGG-16 into a dead plateau),
    then ``cosine`` decay towards lr/100 over the remaining epochs, or a ``constant`` lr."""
    w = config.warmup_epochs
    rest = max(1, config.epochs - w)
    if config.schedule == "cosine":
        lr = opt.param_groups[0]["lr"]
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=rest, eta_min=lr / 100)
    elif config.schedule == "constant":
        main = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: cosine, constant")
    if w <= 0:
        return main
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (e + 1) / (w + 1))
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[w])


def fit(model: nn.Module, loaders: dict[str, DataLoader], arch: str, class_names: list[str],
        config: TrainConfig, device: torch.device, models_dir: str | os.PathLike = "models",
        history_dir: str | os.PathLike = "outputs/CSVs", resume: bool = True,
        progress: bool = True, extra_meta: dict | None = None) -> pd.DataFrame:
    """Train ``model`` on ``loaders["train"]`` with early stopping on ``loaders["val"]`` loss.

    Adam (``config.resolved_lr(arch)``), cross-entropy, cosine LR decay over ``config.epochs`` down
    to lr/100 (or a constant LR with ``schedule="constant"``). After every epoch: a row appended
    to ``history_dir/<arch>.csv`` (``HISTORY_COLUMNS``; losses and accuracies averaged over the
    samples actually seen), ``models_dir/<arch>.pt`` (``save_checkpoint`` format) when the
    validation loss improved by more than ``min_delta`` (that row's ``best`` is 1: the one
    definition of the best epoch), and the resumable ``models_dir/<arch>_last.pt`` (model,
    optimizer, scheduler, scaler, epoch, early-stopping state), in that order, so a kill at any
    point loses no row. Training stops after ``patience`` epochs without improvement and the
    best weights are restored into ``model``.

    With ``resume=True`` a matching ``<arch>_last.pt`` (same config, class names and
    ``extra_meta``, e.g. a ``data_fingerprint``) continues where it stopped (a finished run is
    not retrained); otherwise training starts afresh and says why. A NaN/inf training loss
    raises FloatingPointError; the checkpoints of the last good epoch stay. A validation split
    with no readable image raises ValueError. Returns the history DataFrame.

    Under ``torchrun`` (``init_distributed`` called, loaders built with ``num_replicas``/``rank``)
    the model is wrapped in DistributedDataParallel: gradients are averaged over the processes,
    the loss, accuracy and validation numbers are all-reduced (every process stops at the same
    epoch), and only rank 0 writes files. ``config.batch_size`` is the global batch.
    """
    cfg = dataclasses.asdict(config)
    models_dir, history_dir = Path(models_dir), Path(history_dir)
    best_path, last_path = models_dir / f"{arch}.pt", models_dir / f"{arch}_last.pt"
    hist_path = history_dir / f"{arch}.csv"
    if "train" not in loaders or "val" not in loaders:
        raise ValueError(f"fit needs 'train' and 'val' loaders, got {sorted(loaders)}")
    rank, world_size = world()
    main = rank == 0
    seed_everything(config.seed, config.deterministic)
    cl = config.channels_last and device.type in ("cuda", "cpu")
    if config.sync_bn and world_size > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    lr = config.resolved_lr(arch)
    # Fused Adam: one kernel for all parameters; on a CPU it makes VGG-16's step (138M
    # parameters) ~6x cheaper than the per-tensor loop.
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay,
                           fused=device.type in ("cpu", "cuda"))
    sched = make_schedule(opt, config)
    precision = amp_dtype(device, config.amp, cpu=True)
    use_amp = precision is not None
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    meta = {"arch": arch, "class_names": list(class_names), "image_size": config.image_size,
            "seed": config.seed, "config": cfg, **(extra_meta or {})}
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "finished": False}

    if resume and last_path.is_file():
        last = torch.load(last_path, map_location="cpu", weights_only=True)
        same_data = all(last["meta"].get(k) == v for k, v in (extra_meta or {}).items())
        same_config = _config_key(last["meta"]["config"]) == _config_key(cfg)
        if same_config and same_data and last["meta"]["class_names"] == list(class_names):
            model.load_state_dict(last["model_state"])
            opt.load_state_dict(last["optimizer_state"])
            sched.load_state_dict(last["scheduler_state"])
            scaler.load_state_dict(last["scaler_state"])
            state = last["state"]
            if state["finished"] and state["bad_epochs"] < config.patience and \
                    state["epoch"] < config.epochs:
                state["finished"] = False  # ran out of epochs, not patience: more were asked
            if state["finished"] and state["epoch"] >= 1:
                if main:
                    print(f"{arch}: already trained ({state['epoch']} epochs, best epoch "
                          f"{state['best_epoch']}); delete {last_path} to retrain")
            elif main:
                print(f"{arch}: resuming after epoch {state['epoch']}")
        elif main:
            why = ("another config (e.g. epochs with a cosine schedule)" if not same_config
                   else "other data" if not same_data else "other classes")
            print(f"{arch}: {last_path} was trained with {why}; starting afresh")
    history = _read_history(hist_path, upto=state["epoch"])
    if main:
        _write_history(history, hist_path)
    rows = history.to_dict("records")

    # DDP (and a compiled wrapper) share the parameters; checkpoints always save the plain module.
    step_model = model
    if world_size > 1:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        step_model = torch.compile(step_model)
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["finished"]:
            break
        t0 = time.perf_counter()
        _reseed_epoch(loaders["train"], config.seed, epoch)
        tr = train_epoch(step_model, loaders["train"], opt, scaler, device, use_amp, cl,
                         desc=f"{arch} epoch {epoch}/{config.epochs}", progress=progress and main,
                         nan_hint=f"{arch} epoch {epoch}: the last good checkpoints are "
                                  f"{last_path} and {best_path}",
                         augment=config.augment, freeze_bn=config.freeze_bn)
        val = evaluate(model, loaders["val"], device, use_amp, cl)
        if val["n"] == 0:
            raise ValueError(f"{arch}: no validation image could be read "
                             f"({len(loaders['val'].dataset)} listed); early stopping needs them")
        improved = val["loss"] < state["best_loss"] - config.min_delta
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
               "val_loss": val["loss"], "val_acc": val["acc"], "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0, "train_seen": tr["seen"],
               "best": int(improved)}
        sched.step()
        if improved:
            state.update(best_loss=val["loss"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["finished"] = state["bad_epochs"] >= config.patience or epoch == config.epochs
        if main:
            # Order matters for a kill in between: the row first (a resume drops rows past the
            # resumable state and replays them), then the best weights, then the state.
            _append_history(row, hist_path)
            if improved:
                save_checkpoint(best_path, model, **meta, epoch=epoch, val_loss=val["loss"],
                                val_acc=val["acc"])
            _atomic_torch_save({"model_state": _cpu_state(model),
                                "optimizer_state": opt.state_dict(),
                                "scheduler_state": sched.state_dict(),
                                "scaler_state": scaler.state_dict(), "state": state,
                                "meta": {**meta, "versions": library_versions(),
                                         "world_size": world_size}}, last_path)
        barrier()
        rows.append(row)
        if progress and main:
            print(f"{arch} epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc "
                  f"{row['val_acc']:.3f} | {row['seconds']:.1f} s" + (" *" if improved else ""))
        if state["finished"] and epoch < config.epochs and main:
            print(f"{arch}: early stop at epoch {epoch}; best epoch {state['best_epoch']} "
                  f"(val loss {state['best_loss']:.4f})")
    check_replicas_agree(model, device)
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


def best_epoch(history: pd.DataFrame, min_delta: float = 1e-3) -> int:
    """The epoch whose weights ``fit`` saved as ``<arch>.pt``: the last row marked ``best``, i.e.
    the last validation loss that beat the best so far by more than ``min_delta``. Histories
    without the column are replayed with the same rule."""
    if "best" in history and history["best"].notna().all():
        marked = history.loc[history["best"].astype(int) == 1, "epoch"]
        if len(marked):
            return int(marked.iloc[-1])
    best_loss, best = math.inf, int(history["epoch"].iloc[0])
    for epoch, loss in zip(history["epoch"], history["val_loss"]):
        if loss < best_loss - min_delta:
            best_loss, best = loss, int(epoch)
    return best


def summarize_history(history: pd.DataFrame, min_delta: float = 1e-3) -> dict:
    """The saved best epoch (``best_epoch``), its validation loss/accuracy, epochs run, mean
    seconds per epoch."""
    best = history.loc[history["epoch"] == best_epoch(history, min_delta)].iloc[0]
    return {"best_epoch": int(best["epoch"]), "val_loss": float(best["val_loss"]),
            "val_acc": float(best["val_acc"]), "epochs_run": int(history["epoch"].max()),
            "seconds_per_epoch": float(history["seconds"].mean())}


def train_architecture(arch: str, manifest: pd.DataFrame, data_dir: str | os.PathLike,
                       config: TrainConfig, device: torch.device, weights="imagenet",
                       models_dir: str | os.PathLike = "models",
                       out_dir: str | os.PathLike = "outputs",
                       cache_dir: str | os.PathLike | None = None, resume: bool = True,
                       progress: bool = True) -> tuple[nn.Module, pd.DataFrame, dict]:
    """Notebook 2's and ``train.py``'s step for one architecture: loaders over the manifest's
    train/val splits, ImageNet/file/no weights (``networks.resolve_weights``), the model seeded
    from ``config.seed`` alone, then ``fit`` keyed on the data (``utils.data_fingerprint``), with
    the history in ``out_dir/CSVs/<arch>.csv`` and checkpoints in ``models_dir``.

    Under ``torchrun`` every process calls it; rank 0 decodes the images and fetches the
    weights first. Returns ``(model with the best weights, history, summary row)``; the row
    holds ``summarize_history`` plus the image size, weights, parameter count and learning rate.
    """
    rank, world_size = world()
    class_names = utils.class_names_from(manifest)
    with main_process_first():
        loaders = utils.make_loaders(manifest, data_dir, class_names, config.image_size,
                                     config.batch_size, config.num_workers, config.seed,
                                     max_per_class=config.max_per_class,
                                     pin_memory=device.type == "cuda", splits=("train", "val"),
                                     cache_dir=cache_dir, progress=progress and rank == 0,
                                     num_replicas=world_size, rank=rank)
        w = networks.resolve_weights(arch, weights)
        config = dataclasses.replace(config, weights=None if w is None else str(w))
        seed_everything(config.seed)  # the initial weights depend on the seed alone
        model = networks.build_model(arch, len(class_names), weights=w)
    if progress and rank == 0:
        print(f"== {arch}: {config.image_size} px, weights = {w or 'random init'}; "
              f"train {len(loaders['train'].dataset)} / val {len(manifest[manifest['split'] == 'val'])}"
              f" images" + (f"; {world_size} processes" if world_size > 1 else ""))
    extra = {"dataset": utils.dataset_info(data_dir),
             "data": utils.data_fingerprint(manifest, data_dir)}
    history = fit(model, loaders, arch, class_names, config, device, models_dir,
                  Path(out_dir) / "CSVs", resume=resume, progress=progress, extra_meta=extra)
    if rank == 0:  # temperature scaling on the validation split, kept in the checkpoint
        val = utils.eval_loader(manifest[manifest["split"] == "val"], data_dir, class_names,
                                config.image_size, config.batch_size, config.num_workers,
                                pin_memory=device.type == "cuda", cache_dir=cache_dir)
        cal = calibrate(model, val, device)
        update_checkpoint_meta(Path(models_dir) / f"{arch}.pt", temperature=cal["temperature"],
                               calibration=cal)
    barrier()
    row = {"arch": arch, "image_size": config.image_size, "weights": w or "random init",
           **summarize_history(history, config.min_delta),
           "parameters": networks.count_parameters(model), "lr": config.resolved_lr(arch)}
    return model, history, row
