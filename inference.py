"""Running a model over a loader: class probabilities (``predict_loader``), the validation loss
and accuracy (``evaluate``, all-reduced under DDP), and the calibration temperature fitted on a
split. Training (validation, calibration after fitting), the shortcut audit and the evaluation
use these; nothing here trains or writes files.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import metrics
import utils
from runtime import all_reduce_sums, autocast


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
                   channels_last: bool = True, progress: bool = False,
                   batch_fn: Callable | None = None, what: str = ""
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true int64 (N,), y_prob float64 (N, C) softmax, index int64 (N,))``; ``index`` gives
    each row's position in ``loader.dataset`` (files that failed to load are absent).

    ``batch_fn(batch) -> (x, y, index) | None`` changes a loader batch before the model sees it
    (the shortcut audit's lung views; None skips the batch). Mixed precision only on CUDA
    (``runtime.amp_dtype``): CPU predictions stay fp32. ValueError when no image was read
    (``what`` says which images were wanted)."""
    model.eval()
    ys, ps, idx = [], [], []
    for batch in utils.progress_bar(loader, "predict", progress):
        if batch is None:
            continue
        if batch_fn is not None:
            batch = batch_fn(batch)
            if batch is None:
                continue
        x, y, i = batch[:3]
        with autocast(device, amp):
            logits = model(utils.prepare_batch(x, device, False, channels_last))
        ps.append(torch.softmax(logits.float(), 1).cpu().double())
        ys.append(y)
        idx.append(i)
    if not ys:
        raise ValueError("no image of the loader could be read" + what)
    return torch.cat(ys).numpy(), torch.cat(ps).numpy(), torch.cat(idx).numpy()


@torch.no_grad()
def validation_pass(model: nn.Module, loader: DataLoader, device: torch.device,
                    amp: bool = False, channels_last: bool = True) -> dict:
    """The validation pass of training: ``{"loss", "accuracy", "n"}``, the mean cross-entropy
    loss and the accuracy over ``loader`` (``n`` = images actually read; NaN loss and accuracy
    when none could be read). Under DDP each process passes its shard and the sums are
    all-reduced, so every process gets the same numbers. ``amp``: the device's mixed precision
    (``fit`` passes its own; CPU bf16 included), else fp32."""
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
        return {"loss": math.nan, "accuracy": math.nan, "n": 0}
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": int(n)}


def calibrate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Temperature scaling fitted on ``loader``'s images (the validation split): ``temperature``
    and the negative log-likelihood and ECE there before and after (``metrics``). Dividing the
    logits by T changes confidences, never the predicted class."""
    y, p, _ = predict_loader(model, loader, device)
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


def temperature(meta: dict, calibrated: bool = True) -> float:
    """A checkpoint's calibration temperature (1 when it has none or ``calibrated`` is off)."""
    t = float(meta.get("temperature", 1.0)) if calibrated else 1.0
    if not t > 0:
        raise ValueError(f"{meta.get('arch')}: checkpoint temperature must be > 0, got {t}")
    return t
