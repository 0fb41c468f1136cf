"""Grad-CAM (and Grad-CAM++ / HiResCAM) with scoped hooks, batched; localization scores.

Usage::

    with GradCAM(model, networks.cam_target_layer(model, arch)) as cam:
        classes, maps = cam(images)            # maps: float32 (N, H, W) in [0, 1]

Hooks live only inside the ``with`` block: a forward hook on the target layer stores the
detached activation and registers a tensor hook that stores its gradient. Buffers are reset on
every call, the model's train/eval mode is restored, and parameters' ``.grad`` are left alone
(the backward pass is ``torch.autograd.grad`` to the activation only). A target layer whose
output is not a map (a ViT's tokens) carries ``cam_reshape``, a function to ``(N, K, h, w)``
that ``networks.cam_target_layer`` sets; it is applied to the activation and its gradient.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from metrics import bootstrap_means
from utils import dilate

METHODS = ("gradcam", "gradcam++", "hirescam")


class GradCAM:
    """Class activation maps for ``model`` at ``target_layer`` (see module docstring).

    ``method``: ``"gradcam"`` (ReLU of the gradient-mean-weighted sum of activation channels),
    ``"gradcam++"`` (second-order weights, Chattopadhay et al. 2018) or ``"hirescam"``
    (element-wise gradient x activation, Draelos & Carin 2020).
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module, method: str = "gradcam"):
        if method not in METHODS:
            raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(METHODS)}")
        self.model, self.target_layer, self.method = model, target_layer, method
        self._handles: list = []
        self._reset()

    def _reset(self) -> None:
        self.activation: torch.Tensor | None = None  # (N, K, h, w), detached
        self.gradient: torch.Tensor | None = None    # (N, K, h, w), detached
        self.logits: torch.Tensor | None = None      # (N, C), detached: the last call's outputs
        self._output: torch.Tensor | None = None      # live output, only during a call

    def _forward_hook(self, module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the CAM target layer must output a tensor, got {type(output)}")
        self.activation = output.detach()
        self._output = output
        if output.requires_grad:
            output.register_hook(self._save_gradient)

    def _save_gradient(self, grad: torch.Tensor) -> None:
        self.gradient = grad.detach()

    def __enter__(self) -> "GradCAM":
        if self._handles:
            raise RuntimeError("GradCAM is already active (nested 'with' on the same object)")
        self._handles.append(self.target_layer.register_forward_hook(self._forward_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._reset()

    def _targets(self, targets, logits: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape
        if targets is None:
            t = logits.argmax(1)
        elif isinstance(targets, (int, np.integer)):
            t = torch.full((n,), int(targets), dtype=torch.long)
        else:
            t = torch.as_tensor(targets, dtype=torch.long).flatten()
            if len(t) != n:
                raise ValueError(f"targets must be None, an int, or one class per image: got "
                                 f"{len(t)} targets for {n} images")
        if (t < 0).any() or (t >= c).any():
            raise ValueError(f"targets must be class indices in 0..{c - 1}, got {t.tolist()}")
        return t.to(logits.device)

    def __call__(self, images: torch.Tensor, targets: int | Sequence[int] | torch.Tensor | None
                 = None, normalize: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """CAMs for a batch ``images (N, 3, H, W)`` (on the model's device).

        ``targets``: None (each image's predicted class), an int (the same class for all) or one
        class per image. Returns ``(classes LongTensor (N,) on the CPU, cams float32 (N, H, W))``:
        min-max normalised per image to [0, 1] (all-zero maps stay 0 and warn), or the raw
        upsampled ReLU maps with ``normalize=False``. Works inside ``torch.no_grad()``. The
        model's outputs for the batch stay in ``self.logits`` (detached) until the next call.
        """
        if not self._handles:
            raise RuntimeError("use GradCAM as a context manager: with GradCAM(model, layer) as cam")
        self._reset()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x = images.detach().requires_grad_(True)  # a graph even if weights are frozen
                logits = self.model(x)
                classes = self._targets(targets, logits)
                logits_out = logits.detach()
                if self._output is None:
                    raise RuntimeError("the target layer was not run by the model's forward")
                score = logits.gather(1, classes[:, None]).sum()
                torch.autograd.grad(score, self._output)  # fills self.gradient via the hook
            A, G = self.activation.float(), self.gradient.float()
            reshape = getattr(self.target_layer, "cam_reshape", None)
            if reshape is not None:  # e.g. a ViT's tokens (N, 1 + h*w, K) -> (N, K, h, w)
                A, G = reshape(A), reshape(G)
            cams = self._combine(A, G)                                       # (N, h, w)
        finally:
            self._output = None
            self.model.train(was_training)
        self.logits = logits_out  # kept after the call: predictions need no second forward
        cams = F.interpolate(cams[:, None], size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]                          # (N, H, W)
        cams = cams.detach().cpu().numpy().astype(np.float32)
        if normalize:
            cams = normalize_maps(cams)
        return classes.cpu(), cams

    def _combine(self, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """CAM at feature resolution from activations/gradients ``(N, K, h, w)`` -> ``(N, h, w)``."""
        if self.method == "hirescam":
            return F.relu((G * A).sum(1))
        if self.method == "gradcam++":
            g2, g3 = G.pow(2), G.pow(3)
            alpha = g2 / (2 * g2 + A.sum((2, 3), keepdim=True) * g3 + 1e-6)  # eps as the paper code
            alpha = torch.where(G != 0, alpha, torch.zeros_like(alpha))
            w = (F.relu(G) * alpha).sum((2, 3))                    # (N, K)
        else:
            w = G.mean((2, 3))                                      # (N, K)
        return F.relu((w[:, :, None, None] * A).sum(1))


def normalize_maps(cams: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Per-map min-max to [0, 1] for ``(N, H, W)``; a constant map becomes 0 (with a warning)."""
    cams = np.asarray(cams, np.float32)
    lo = cams.min(axis=(1, 2), keepdims=True)
    span = cams.max(axis=(1, 2), keepdims=True) - lo
    flat = span[:, 0, 0] <= eps
    if flat.any():
        warnings.warn(f"{int(flat.sum())} of {len(cams)} CAMs are constant (no positive "
                      f"evidence for the target class at this layer, or activations too small "
                      f"to map: an untrained model's can be ~1e-13 at the CAM layer, "
                      f"EfficientNet's in particular, so train it before reading its maps); "
                      f"returned as all-zero maps", stacklevel=2)
    return ((cams - lo) / np.maximum(span, eps)).astype(np.float32)


# --------------------------------------------------------------------------- localization
def margin_pixels(image_size: int, margin: float) -> int:
    """The pointing game's tolerance in pixels of a ``image_size`` map: ``margin`` is a fraction
    of the image side (Zhang et al.'s 15 px at the database's 299 px is ``15 / 299``)."""
    if margin < 0:
        raise ValueError(f"margin must be a fraction >= 0 of the image side, got {margin}")
    return int(round(margin * image_size))


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's peak pixel (first in row-major order) lies inside the bool mask, or
    within ``tolerance`` pixels of it (the original pointing game's margin)."""
    if cam.shape != mask.shape:
        raise ValueError(f"cam {cam.shape} and mask {mask.shape} must have the same shape")
    return bool(dilate(mask, tolerance).flat[int(np.argmax(cam))])


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's total (non-negative) mass inside the mask (nan for an empty map)."""
    if cam.shape != mask.shape:
        raise ValueError(f"cam {cam.shape} and mask {mask.shape} must have the same shape")
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


SCORE_COLUMNS = ["index", "hit", "hit_strict", "energy", "chance", "chance_strict"]


def scorable(cams: np.ndarray, masks: np.ndarray):
    """``(i, cam, bool mask)`` for each image that can be scored: a non-empty mask and a
    non-constant map (a constant map has no peak; it is left out, not scored at its first pixel)."""
    for i, (c, m) in enumerate(zip(cams, masks)):
        m = np.asarray(m, bool)
        if m.any() and float(c.max()) > float(c.min()):
            yield i, c, m


def localization_scores(cams: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> pd.DataFrame:
    """Per image with a non-empty mask and a non-constant map:

    ``hit`` (pointing game with ``tolerance`` pixels), ``hit_strict`` (no tolerance), ``energy``
    (in-mask fraction of the map), ``chance`` (area fraction of the mask grown by ``tolerance``:
    what a random peak scores on ``hit``) and ``chance_strict`` (the mask's own area fraction:
    what a random peak scores on ``hit_strict`` and a uniform map on ``energy``). A constant map
    has no peak; it is left out rather than scored at its first pixel. ``cams`` (N,H,W),
    ``masks`` bool (N,H,W).
    """
    rows = []
    for i, c, m in scorable(cams, masks):
        grown = dilate(m, tolerance)
        peak = int(np.argmax(c))
        rows.append({"index": i, "hit": bool(grown.flat[peak]), "hit_strict": bool(m.flat[peak]),
                     "energy": energy_in_mask(c, m), "chance": float(grown.mean()),
                     "chance_strict": float(m.mean())})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def summarize_localization(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Means of ``localization_scores`` with 95% percentile-bootstrap intervals (images
    resampled with replacement, ``seed``ed): ``n``, ``pointing_game`` (+ ``_ci``),
    ``pointing_game_strict`` (+ ``_ci``), ``energy_in_mask`` (+ ``_ci``), ``chance``,
    ``chance_strict``. With no scored image every value is None and ``n`` is 0."""
    keys = {"pointing_game": "hit", "pointing_game_strict": "hit_strict",
            "energy_in_mask": "energy"}
    out = {"n": int(len(scores)),
           "chance": None if scores.empty else float(scores["chance"].mean()),
           "chance_strict": None if scores.empty else float(scores["chance_strict"].mean())}
    return {**out, **bootstrap_means(scores, keys, n_boot, seed)}


def localize_loader(cam: GradCAM, loader, prepare, tolerance: int = 0,
                    target: str = "true", score=None) -> pd.DataFrame:
    """``localization_scores`` over a loader whose items carry a mask (``utils.eval_loader(...,
    mask_column=...)``), batch by batch. ``target``: ``"true"`` (the map for the image's true
    class: where is the evidence for the finding that is there) or ``"predicted"``. ``prepare``
    maps a loader batch of images to the model's input (e.g. ``utils.prepare_batch`` on the
    device). ``score(maps, masks)``: another per-image score with an ``index`` column, e.g.
    ``functools.partial(lung_scores, dilation=d)`` (then ``tolerance`` is unused). Columns as
    the score's plus ``label`` and ``predicted`` (class indices); ``index`` = dataset row."""
    if target not in ("true", "predicted"):
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    if score is None:
        def score(maps, masks):
            return localization_scores(maps, masks, tolerance)
    frames = []
    for batch in loader:
        if batch is None:
            continue
        x, y, idx, masks = batch
        inputs = prepare(x)
        _, maps = cam(inputs, targets=y if target == "true" else None)
        predicted = cam.logits.argmax(1).cpu()
        s = score(maps, masks.numpy())
        rows = s["index"].to_numpy(int)
        s["label"], s["predicted"] = y.numpy()[rows], predicted.numpy()[rows]
        s["index"] = idx.numpy()[rows]
        frames.append(s)
    if not frames:
        empty = score(np.zeros((0, 1, 1), np.float32), np.zeros((0, 1, 1), bool))
        return pd.DataFrame(columns=list(empty.columns) + ["label", "predicted"])
    return pd.concat(frames, ignore_index=True)
