"""The training side of the study: the configuration, the learning-rate schedule, one epoch
(``train_epoch``), the loop with early stopping and resumable checkpoints (``fit``), history
files, and notebook 2's / ``train.py``'s step for one architecture (``train_architecture``).

The data side is ``utils.py``; checkpoints ``checkpoints.py``; seeding, devices, mixed precision
and the DDP helpers ``runtime.py``; running a trained model ``inference.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import checkpoints
import familiarity
import image_cache
import near_duplicates
import inference
import networks
import utils
from config import TrainConfig  # declared with every other setting, in config.py
from inference import validation_pass  # fit calls it through this name (tests replace it)
from runtime import (all_reduce_sums, amp_dtype, autocast, barrier, check_replicas_agree,
                     cpu_bf16_speedup, main_process_first, numeric_path, seed_everything, world)
from files import file_stamp, write_csv_atomic

LR_PRETRAINED = networks.PRETRAINED_LR  # the study's Adam learning rate for ImageNet weights
# From random initialisation: networks.scratch_lr(arch) (1e-3; 5e-5 for VGG, which has no batch
# norm). 3e-5 barely moves a random network within a demo budget.


# --------------------------------------------------------------------------- training
def train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool = True,
                channels_last: bool = True, desc: str = "train", progress: bool = False,
                nan_hint: str = "", check_every: int = 20, augment: bool = True,
                freeze_bn: bool = False, class_weight: torch.Tensor | None = None) -> dict:
    """One pass over ``loader`` with on-device augmentation (``utils.prepare_batch``).

    ``augment=False`` feeds the images as they are; ``freeze_bn`` keeps batch-norm layers in eval
    mode (running statistics frozen, their affine weights still trained); ``class_weight`` (one
    weight per class, ``class_weights``) weights the cross-entropy (a batch's loss is then the
    weighted mean). Under DDP the returned values are summed over all processes (the global
    epoch).

    Returns ``{"loss", "accuracy", "seen"}`` averaged over the samples actually seen. Loss and
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
    bar = utils.progress_bar(loader, desc, progress)
    for step, batch in enumerate(bar, start=1):
        if batch is None:
            continue
        x = utils.prepare_batch(batch[0], device, augment=augment, channels_last=channels_last)
        y = batch[1].to(device, non_blocking=True)
        with autocast(device, amp, cpu=True):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=class_weight)
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
    return {"loss": loss_sum / n, "accuracy": correct / n, "seen": int(seen)}


def class_weights(labels: torch.Tensor | None, n_classes: int, how: str | None
                  ) -> torch.Tensor | None:
    """The cross-entropy's class weights for training labels ``labels`` (class indices) under
    ``TrainConfig.class_weight``: None (unweighted) for None or "none"; for "balanced",
    ``n / (n_classes * count)`` per class (scikit-learn's "balanced"), 0 for a class with no
    training image (it has no loss to weight)."""
    if how is None or str(how).lower() == "none":
        return None
    if how != "balanced":
        raise ValueError(f'class_weight: expected "balanced" or "none", got {how!r}')
    if labels is None:
        raise ValueError('class_weight "balanced" needs the training labels (a dataset with a '
                         '"labels" attribute, as utils.XrayDataset has); none were given')
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=n_classes)
    if len(counts) > n_classes:
        raise ValueError(f"class_weights: a label is {len(counts) - 1}, but there are only "
                         f"{n_classes} classes (0-{n_classes - 1})")
    counts = counts.double()
    w = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0.0)
    return w.float()


HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "train_seen", "best")  # best: 1 where this epoch's weights became <arch>.pt


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
    free = ("num_workers", "patience", "compile", "checkpoint_every")
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


@dataclass
class EarlyStopping:
    """Early stopping on the validation loss, and the position of a run (what a resume needs):
    an epoch improves when its loss beats the best so far by more than ``min_delta``; the run is
    finished after ``patience`` epochs without improvement or at the last epoch."""
    patience: int
    min_delta: float
    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False

    STATE = ("epoch", "best_loss", "best_epoch", "bad_epochs", "finished")

    def update(self, epoch: int, val_loss: float, last_epoch: int) -> bool:
        """Record ``epoch``'s validation loss; returns whether it improved."""
        improved = val_loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.finished = self.bad_epochs >= self.patience or epoch == last_epoch
        return improved

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict, last_epoch: int) -> None:
        """Continue from a saved state. A run that ended by running out of epochs (not
        patience) is reopened when more epochs are asked for now."""
        for k in self.STATE:
            setattr(self, k, state[k])
        if self.finished and self.bad_epochs < self.patience and self.epoch < last_epoch:
            self.finished = False


@dataclass
class _Step:
    """What one training step needs besides the model: optimizer, schedule, gradient scaler,
    whether autocast is on, whether tensors are channels-last."""
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    amp: bool
    channels_last: bool


def training_path(model: nn.Module, config: TrainConfig, arch: str, device: torch.device
                  ) -> tuple[str, str]:
    """``runtime.numeric_path`` for training ``model``: on a CPU with native bf16 decided by a
    timed probe of this model at ``config``'s image size and batch (``cpu_bf16_speedup``,
    cached per CPU; under torchrun the processes' mean, so every process decides alike)."""
    def speedup() -> float:
        s = cpu_bf16_speedup(model, arch, config.image_size, config.batch_size)
        n = world()[1]
        return all_reduce_sums(s, device=device)[0] / n if n > 1 else s
    return numeric_path(device, config.amp, speedup)


def _prepare(model: nn.Module, config: TrainConfig, arch: str, device: torch.device,
             path: str) -> tuple[nn.Module, _Step]:
    """Seed, move the model (channels-last, SyncBatchNorm under DDP on CUDA) and build the
    optimizer, schedule and precision (``path``: ``training_path``'s) for ``config``."""
    seed_everything(config.seed, config.deterministic)
    cl = config.channels_last and device.type in ("cuda", "cpu")
    if config.sync_bn and world()[1] > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    # Fused Adam: one kernel for all parameters; on a CPU it makes VGG-16's step (138M
    # parameters) ~6x cheaper than the per-tensor loop.
    opt = torch.optim.Adam(model.parameters(), lr=config.resolved_lr(arch),
                           weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda"))
    precision = amp_dtype(device, path != "fp32", cpu=True)
    return model, _Step(opt, make_schedule(opt, config),
                        torch.amp.GradScaler("cuda", enabled=precision == torch.float16),
                        precision is not None, cl)


def _equal(a, b) -> bool:
    """``a == b`` for meta values that may hold tensors (the fingerprints of trained_on)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def try_resume(last_path: Path, model: nn.Module, step: _Step, stopper: EarlyStopping,
               meta: dict, extra_meta: dict | None, config: TrainConfig, say) -> None:
    """Load ``last_path`` (model, optimizer, schedule, scaler, early-stopping state) when it
    was trained with the same config (``_config_key``), data (``extra_meta``) and classes;
    otherwise leave everything as it is and say why training starts afresh."""
    arch = meta["arch"]
    last = checkpoints.read_resume_state(last_path)
    same_data = all(_equal(last.meta.get(k), v) for k, v in (extra_meta or {}).items())
    same_config = _config_key(last.meta["config"]) == _config_key(meta["config"])
    if not (same_config and same_data and last.meta["class_names"] == meta["class_names"]):
        why = ("another config (e.g. epochs with a cosine schedule)" if not same_config
               else "other data" if not same_data else "other classes")
        say(f"{arch}: {last_path} was trained with {why}; starting afresh")
        return
    model.load_state_dict(last.model_state)
    step.opt.load_state_dict(last.optimizer_state)
    step.sched.load_state_dict(last.scheduler_state)
    step.scaler.load_state_dict(last.scaler_state)
    stopper.load_state_dict(last.progress, config.epochs)
    if stopper.finished and stopper.epoch >= 1:
        say(f"{arch}: already trained ({stopper.epoch} epochs, best epoch {stopper.best_epoch}); "
            f"delete {last_path} to retrain")
    else:
        say(f"{arch}: resuming after epoch {stopper.epoch}")


class _Writer:
    """What epochs leave behind, in an order that survives a kill in between: each epoch's
    history row at once (a resume drops rows past the resumable state and replays them), then,
    once ``config.checkpoint_every`` seconds have passed since the last write and after the last
    epoch, the best weights (a copy kept in memory since their epoch) and the resumable state.
    VGG-16's pair is 2.1 GB: written after every epoch it cost 4-6 s an epoch on a 2-core box."""

    def __init__(self, every: float, meta: dict, paths: dict[str, Path]):
        self.every, self.meta, self.paths = every, meta, paths
        self.pending = None         # (cpu_state, row) of an improved epoch not yet written
        self.best_state = None      # the weights of the last best checkpoint this run wrote
        self.written = time.perf_counter()

    def epoch_done(self, row: dict, improved: bool, model: nn.Module, step: _Step,
                   stopper: EarlyStopping) -> None:
        _append_history(row, self.paths["history"])
        if improved:   # the weights written before are no longer the best
            self.pending, self.best_state = (checkpoints.cpu_state(model), row), None
        if not (stopper.finished or time.perf_counter() - self.written >= self.every):
            return
        if self.pending is not None:
            state, best = self.pending
            checkpoints.save_checkpoint(self.paths["best"], state, **self.meta,
                                        epoch=best["epoch"], val_loss=best["val_loss"],
                                        val_acc=best["val_acc"])
            self.pending, self.best_state = None, state
        checkpoints.save_resume_state(self.paths["last"], model, step.opt, step.sched,
                                      step.scaler, stopper.state_dict(), self.meta,
                                      world_size=world()[1])
        self.written = time.perf_counter()


def _wrap(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """The module the steps run: DDP under torchrun, compiled if asked. Both share the
    parameters with ``model``, which is what checkpoints save."""
    step_model = model
    if world()[1] > 1:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step_model) if config.compile else step_model


def fit(model: nn.Module, loaders: dict[str, DataLoader], arch: str, class_names: list[str],
        config: TrainConfig, device: torch.device, models_dir: str | os.PathLike = "models",
        history_dir: str | os.PathLike = "outputs/CSVs", resume: bool = True,
        progress: bool = True, extra_meta: dict | None = None) -> pd.DataFrame:
    """Train ``model`` on ``loaders["train"]`` with early stopping on ``loaders["val"]`` loss.

    Adam (``config.resolved_lr(arch)``), cross-entropy, cosine LR decay over ``config.epochs`` down
    to lr/100 (or a constant LR with ``schedule="constant"``). After every epoch a row is appended
    to ``history_dir/<arch>.csv`` (``HISTORY_COLUMNS``; losses and accuracies averaged over the
    samples actually seen); an epoch whose validation loss improved by more than ``min_delta``
    (that row's ``best`` is 1: the one definition of the best epoch) is kept in memory; once
    ``config.checkpoint_every`` seconds have passed since the last write, and after the last
    epoch, the best epoch's ``models_dir/<arch>.pt`` (``checkpoints.save_checkpoint``) and then
    the resumable ``models_dir/<arch>_last.pt`` (model, optimizer, scheduler, scaler, epoch,
    early-stopping state) are written, in that order (``_Writer``), so a kill at any point loses
    no row and at most ``checkpoint_every`` seconds of training. Training stops after
    ``patience`` epochs without improvement and the best weights are restored into ``model``.

    With ``resume=True`` a matching ``<arch>_last.pt`` (same config, class names and
    ``extra_meta``, e.g. a ``image_cache.split_fingerprint``) continues where it stopped (a finished run is
    not retrained); otherwise training starts afresh and says why. A NaN/inf training loss
    raises FloatingPointError; the checkpoints last written (good epochs) stay. A validation split
    with no readable image raises ValueError. Returns the history DataFrame.

    Under ``torchrun`` (``init_distributed`` called, loaders built with ``num_replicas``/``rank``)
    the model is wrapped in DistributedDataParallel: gradients are averaged over the processes,
    the loss, accuracy and validation numbers are all-reduced (every process stops at the same
    epoch), and only rank 0 writes files. ``config.batch_size`` is the global batch.
    """
    if "train" not in loaders or "val" not in loaders:
        raise ValueError(f"fit needs 'train' and 'val' loaders, got {sorted(loaders)}")
    main = world()[0] == 0
    say = print if main else (lambda *_: None)
    paths = {"best": checkpoints.best_path(models_dir, arch),
             "last": checkpoints.resume_path(models_dir, arch),
             "history": Path(history_dir) / f"{arch}.csv"}
    path, why = training_path(model, config, arch, device)
    model, step = _prepare(model, config, arch, device, path)
    meta = {"arch": arch, "class_names": list(class_names), "image_size": config.image_size,
            "seed": config.seed, "config": dataclasses.asdict(config), "numeric_path": path,
            "numeric_path_reason": why, **(extra_meta or {})}
    stopper = EarlyStopping(config.patience, config.min_delta)
    if resume and paths["last"].is_file():
        try_resume(paths["last"], model, step, stopper, meta, extra_meta, config, say)
    weight = class_weights(getattr(loaders["train"].dataset, "labels", None), len(class_names),
                           config.class_weight)
    if weight is not None:
        say(f"{arch}: class weights ({config.class_weight}) "
            + ", ".join(f"{c} {w:.3f}" for c, w in zip(class_names, weight.tolist())))
        weight = weight.to(device)
    history = _read_history(paths["history"], upto=stopper.epoch)
    if main:
        _write_history(history, paths["history"])
    rows = history.to_dict("records")
    writer = _Writer(config.checkpoint_every, meta, paths) if main else None
    step_model = _wrap(model, config, device)
    for epoch in range(stopper.epoch + 1, config.epochs + 1):
        if stopper.finished:
            break
        t0 = time.perf_counter()
        _reseed_epoch(loaders["train"], config.seed, epoch)
        tr = train_epoch(step_model, loaders["train"], step.opt, step.scaler, device, step.amp,
                         step.channels_last, desc=f"{arch} epoch {epoch}/{config.epochs}",
                         progress=progress and main,
                         nan_hint=f"{arch} epoch {epoch}: the last checkpoints written are "
                                  f"{paths['last']} and {paths['best']}",
                         augment=config.augment, freeze_bn=config.freeze_bn,
                         class_weight=weight)
        val = validation_pass(model, loaders["val"], device, step.amp, step.channels_last)
        if val["n"] == 0:
            raise ValueError(f"{arch}: no validation image could be read "
                             f"({len(loaders['val'].dataset)} listed); early stopping needs them")
        improved = stopper.update(epoch, val["loss"], config.epochs)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["accuracy"],
               "val_loss": val["loss"], "val_acc": val["accuracy"],
               "lr": step.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
               "train_seen": tr["seen"], "best": int(improved)}
        step.sched.step()
        if main:
            writer.epoch_done(row, improved, model, step, stopper)
        barrier()
        rows.append(row)
        if progress:
            say(f"{arch} epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                f"{row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc "
                f"{row['val_acc']:.3f} | {row['seconds']:.1f} s" + (" *" if improved else ""))
        if stopper.finished and epoch < config.epochs:
            say(f"{arch}: early stop at epoch {epoch}; best epoch {stopper.best_epoch} "
                f"(val loss {stopper.best_loss:.4f})")
    check_replicas_agree(model, device)
    if writer is not None and writer.best_state is not None:
        model.load_state_dict(writer.best_state)
    elif paths["best"].is_file():
        best, _ = checkpoints.load_checkpoint(paths["best"])
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
    from ``config.seed`` alone, then ``fit`` keyed on the data's content
    (``image_cache.split_fingerprint``), with the history in ``out_dir/CSVs/<arch>.csv`` and
    checkpoints in ``models_dir``. The checkpoint records the content digests and near-duplicate
    fingerprints of the training and validation images (``checkpoints.trained_on_record``; both
    cached in ``cache_dir``), so evaluation can refuse a test set that holds any of them,
    wherever the data was copied, and recognise their altered copies.

    Under ``torchrun`` every process calls it; rank 0 decodes the images and fetches the
    weights first. Returns ``(model with the best weights, history, summary row)``; the row
    holds ``summarize_history`` plus the image size, weights, parameter count, learning rate and
    numeric path (``runtime.numeric_path``: bf16, fp16 or fp32, also in the checkpoint).
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
        digests = image_cache.content_digests(manifest, data_dir, cache_dir)
        fps, fp_ok, _ = near_duplicates.fingerprint_files(
            [Path(data_dir) / p for p in manifest["path"]], cache_dir)
        w = networks.resolve_weights(arch, weights)
        config = dataclasses.replace(config, weights=None if w is None else str(w))
        seed_everything(config.seed)  # the initial weights depend on the seed alone
        model = networks.build_model(arch, len(class_names), weights=w,
                                     image_size=config.image_size, dropout=config.dropout)
    path, why = training_path(model, config, arch, device)
    if progress and rank == 0:
        print(f"== {arch}: {config.image_size} px, weights = {w or 'random init'}; "
              f"train {len(loaders['train'].dataset)} / val {len(manifest[manifest['split'] == 'val'])}"
              f" images; {path} ({why})" + (f"; {world_size} processes" if world_size > 1 else ""))
    extra = {"dataset": utils.dataset_info(data_dir),
             "data": image_cache.split_fingerprint(manifest, digests),
             "trained_on": checkpoints.trained_on_record(manifest, digests, fps, fp_ok)}
    best_path = checkpoints.best_path(models_dir, arch)
    before = file_stamp(best_path)
    history = fit(model, loaders, arch, class_names, config, device, models_dir,
                  Path(out_dir) / "CSVs", resume=resume, progress=progress, extra_meta=extra)
    # temperature scaling on the validation split, kept in the checkpoint; a run that found its
    # model already trained leaves models/ as it was
    calibrated = (before is not None and file_stamp(best_path) == before
                  and "calibration" in checkpoints.read_meta(best_path))
    if rank == 0 and not calibrated:
        val = utils.eval_loader(manifest[manifest["split"] == "val"], data_dir, class_names,
                                config.image_size, config.batch_size, config.num_workers,
                                pin_memory=device.type == "cuda", cache_dir=cache_dir)
        cal = inference.calibrate(model, val, device)
        fam, conf = familiarity.fit_for_checkpoint(
            model, manifest, data_dir, config.image_size, device, cal["temperature"],
            cache_dir, config.max_per_class, config.seed, config.batch_size)
        checkpoints.update_checkpoint_meta(best_path, temperature=cal["temperature"],
                                           calibration=cal, familiarity=fam, conformal=conf)
    barrier()
    row = {"arch": arch, "image_size": config.image_size, "weights": w or "random init",
           **summarize_history(history, config.min_delta),
           "parameters": networks.count_parameters(model), "lr": config.resolved_lr(arch),
           "numeric_path": path}
    return model, history, row


def write_summary(rows: list[dict], path: str | os.PathLike) -> pd.DataFrame:
    """Put these architectures' rows (``train_architecture``'s) into ``training_summary.csv``,
    replacing their old rows and keeping the other architectures'; returns the table."""
    new = pd.DataFrame(rows)
    if Path(path).is_file():
        old = pd.read_csv(path)
        new = pd.concat([old[~old["arch"].isin(new["arch"])], new], ignore_index=True)
    write_csv_atomic(new, path)
    return new
