"""Running a trained model over a loader: class probabilities, and the calibration temperature
fitted on them. Training (validation, calibration after fitting), the shortcut audit and the
evaluation use these; nothing here trains or writes files.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import metrics
import utils
from runtime import autocast


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
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
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
