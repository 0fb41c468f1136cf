"""The shortcut audit: does a model read the lungs, or something around them?

The COVID-19 Radiography Database is a collage of sources, and CNNs trained on such collages can
reach high accuracy by reading the source (borders, markers, collimation) instead of the lungs
(DeGrave et al., 2021). Two measurements, each against chance, with lung masks grown by a margin:

- where the evidence is: ``lung_scores`` / ``summarize_lung_scores``, the fraction of a Grad-CAM
  map's energy inside the lungs and whether its peak lies outside them;
- what the model needs: ``lung_reliance``, the accuracy on ``LUNG_VIEWS`` of the images (as they
  are, only the lungs shown, the lungs removed; ``lung_view`` fills the hidden part).

``audit_model`` runs both for one model over a loader that carries the lung masks.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

import grad_cam
import inference
import metrics
import utils

# What a model sees in the audit: the image as it is, only the lungs (grown by a small margin;
# the rest filled), or everything but the lungs (the grown lungs filled).
LUNG_VIEWS = ("as_is", "lungs_only", "lungs_removed")
LUNG_COLUMNS = ["index", "energy_in_lungs", "peak_outside", "lung_area"]


# --------------------------------------------------------------------------- views
def usable_lung_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``(N,)``: which of the lung ``masks (N, S, S)`` an audit can use (neither empty, as
    for an image without a mask file, nor covering the whole image)."""
    area = masks.flatten(1).sum(1)
    return (area > 0) & (area < masks[0].numel())


def lung_view(images: torch.Tensor, masks: torch.Tensor, view: str, dilation: int = 0
              ) -> torch.Tensor:
    """A batch as one of ``LUNG_VIEWS``: uint8 ``images (N, 1, S, S)``, bool lung ``masks
    (N, S, S)`` grown by ``dilation`` pixels. ``lungs_only`` replaces everything outside the
    grown mask, ``lungs_removed`` everything inside it, with the mean of the pixels kept: a
    neutral fill taken from what the model is allowed to see, so the removed part leaves no
    trace, not even its brightness. Returns a new uint8 tensor (``as_is``: ``images``). An
    image whose mask is not ``usable_lung_masks`` cannot be audited: ValueError."""
    if view not in LUNG_VIEWS:
        raise ValueError(f"view must be one of {', '.join(LUNG_VIEWS)}, got {view!r}")
    if view == "as_is":
        return images
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}"
                         f" (expected (N, S, S) for images (N, 1, S, S))")
    bad = ~usable_lung_masks(masks)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(bad)} lung masks are empty or cover the "
                         f"whole image; the lung audit needs a lung mask per image")
    grown = torch.from_numpy(np.stack([utils.dilate(m, dilation) for m in masks.cpu().numpy()]))
    keep = grown if view == "lungs_only" else ~grown                       # (N, S, S)
    n_keep = keep.flatten(1).sum(1)
    if (n_keep == 0).any():
        raise ValueError(f"{int((n_keep == 0).sum())} lung masks grown by {dilation} px cover "
                         f"the whole image: nothing is left outside the lungs to show")
    x = images[:, 0].to(torch.float64)
    fill = (x * keep).flatten(1).sum(1) / n_keep                          # (N,)
    out = torch.where(keep, x, fill[:, None, None]).round().to(torch.uint8)
    return out[:, None]


def _view_batch(batch, view: str, dilation: int):
    """A loader batch ``(x, y, index, masks)`` as ``view``, keeping images with a usable lung
    mask; None when none has one."""
    if len(batch) < 4:
        raise ValueError(f"view {view!r} needs the lung masks: build the loader with "
                         f"mask_column='mask_path'")
    x, y, i, masks = batch[:4]
    ok = usable_lung_masks(masks)
    if not ok.any():
        return None
    return lung_view(x[ok], masks[ok], view, dilation), y[ok], i[ok]


def predict_view(model: nn.Module, loader: DataLoader, device: torch.device, view: str,
                 dilation: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``inference.predict_loader`` on ``view`` of the loader's images (``lung_view``, lungs
    grown by ``dilation`` px). The loader must carry the lung masks
    (``utils.eval_loader(..., mask_column="mask_path")``); images without a usable mask are left
    out of every view."""
    if view not in LUNG_VIEWS:
        raise ValueError(f"view must be one of {', '.join(LUNG_VIEWS)}, got {view!r}")
    return inference.predict_loader(model, loader, device,
                                    batch_fn=functools.partial(_view_batch, view=view,
                                                               dilation=dilation),
                                    what=" with a usable lung mask")


# --------------------------------------------------------------------------- what it needs
def lung_reliance(model: nn.Module, loader: DataLoader, device: torch.device,
                  class_names: list[str], dilation: int) -> dict:
    """What the model needs: accuracy with a 95% Wilson interval on each of ``LUNG_VIEWS`` of
    the loader's images (lung masks grown by ``dilation`` px), how many images it called each
    class per view, and ``chance``: the largest class share, what a model that cannot see
    anything useful gets by calling one class. With the lungs removed a model that reads the
    lungs drops to about chance; one that stays well above it reads something else
    (``reads_outside_lungs``: the interval's lower end above chance)."""
    out = {"dilation_px": int(dilation)}
    for view in LUNG_VIEWS:
        y, p, _ = predict_view(model, loader, device, view, dilation)
        correct = int((p.argmax(1) == y).sum())
        lo, hi = metrics.wilson_interval(correct, len(y))
        out[view] = {"accuracy": correct / len(y), "accuracy_ci": [float(lo), float(hi)],
                     "n": int(len(y)), "predicted": dict(zip(class_names, np.bincount(
                         p.argmax(1), minlength=len(class_names)).tolist()))}
    counts = np.bincount(y, minlength=len(class_names))
    out["chance"] = float(counts.max() / counts.sum())
    out["reads_outside_lungs"] = bool(out["lungs_removed"]["accuracy_ci"][0] > out["chance"])
    return out


# --------------------------------------------------------------------------- where it looks
def lung_scores(cams: np.ndarray, lung_masks: np.ndarray, dilation: int = 0) -> pd.DataFrame:
    """Where the evidence is, against the lungs: per image with a lung mask and a non-constant
    map, ``energy_in_lungs`` (fraction of the map's mass inside the lung mask grown by
    ``dilation`` px), ``peak_outside`` (the map's peak lies outside the grown mask) and
    ``lung_area`` (the grown mask's area fraction: what a uniform map scores on
    ``energy_in_lungs``; ``1 - lung_area`` is what a random peak scores on ``peak_outside``).
    ``cams`` (N, H, W), ``lung_masks`` bool (N, H, W)."""
    rows = []
    for i, c, m in grad_cam.scorable(cams, lung_masks):
        grown = utils.dilate(m, dilation)
        rows.append({"index": i, "energy_in_lungs": grad_cam.energy_in_mask(c, grown),
                     "peak_outside": not bool(grown.flat[int(np.argmax(c))]),
                     "lung_area": float(grown.mean())})
    return pd.DataFrame(rows, columns=LUNG_COLUMNS)


def summarize_lung_scores(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Means of ``lung_scores`` with bootstrap intervals, each beside its chance level: ``n``,
    ``energy_in_lungs`` (+ ``_ci``) against ``energy_chance`` (mean grown-lung area),
    ``peaks_outside`` (+ ``_ci``) against ``peaks_outside_chance`` (1 - that area)."""
    area = None if scores.empty else float(scores["lung_area"].mean())
    return {"n": int(len(scores)),
            **metrics.bootstrap_means(scores, {"energy_in_lungs": "energy_in_lungs",
                                                "peaks_outside": "peak_outside"}, n_boot, seed),
            "energy_chance": area, "peaks_outside_chance": None if area is None else 1 - area}


# --------------------------------------------------------------------------- one model
def audit_model(model: nn.Module, loader: DataLoader, device: torch.device,
                class_names: list[str], target_layer: nn.Module, layer_name: str,
                cam_method: str, dilation: int, n_boot: int = 1000, seed: int = 0
                ) -> tuple[dict, pd.DataFrame]:
    """The whole audit of one model over ``loader`` (lung masks as its 4th item): Grad-CAM for
    the predicted class scored against the lungs (``cam``, and ``cam_per_class`` by true
    class) and ``lung_reliance``. Returns ``(the audit dict of metrics.json's "lung_audit",
    per-image lung_scores with label, predicted and dataset index)``."""
    with grad_cam.GradCAM(model, target_layer, cam_method) as cam:
        scores = grad_cam.localize_loader(
            cam, loader, functools.partial(utils.prepare_batch, device=device),
            target="predicted", score=functools.partial(lung_scores, dilation=dilation))
    audit = {"mask": "mask_path", "dilation_px": dilation, "cam_target": "predicted class",
             "layer": layer_name, "cam": summarize_lung_scores(scores, n_boot, seed),
             "cam_per_class": {class_names[k]: summarize_lung_scores(g, n_boot, seed)
                               for k, g in scores.groupby("label")},
             **lung_reliance(model, loader, device, class_names, dilation)}
    return audit, scores
