"""Figure builders: each takes data (and optionally an Axes) and returns the Figure.

No metrics are computed here, no paths are hard-coded and nothing calls ``plt.show()``;
``save_figure`` (figures) and ``save_image`` (RGB arrays) are the helpers that write files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def save_image(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 ``(H, W, 3)`` picture as PNG (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
        raise ValueError(f"could not encode a {rgb.shape} {rgb.dtype} array as PNG for {path}")
    path.write_bytes(buf.tobytes())
    return path


def _fig_ax(ax=None, figsize=(5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` (folders created), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_figures(figures: Iterator[tuple[str, Figure | None]], out_dir: str | os.PathLike
                 ) -> list[Path]:
    """Save each ``(relative path, Figure)`` under ``out_dir`` and close it before the next is
    drawn; ``(path, None)`` removes a stale file there (a gallery left empty this time, so a
    previous run's is never shown). Returns the paths written."""
    written = []
    for rel, fig in figures:
        if fig is None:
            (Path(out_dir) / rel).unlink(missing_ok=True)
        else:
            written.append(save_figure(fig, Path(out_dir) / rel))
    return written


def training_curves(history: pd.DataFrame, best_epoch: int | None = None, title: str = ""
                    ) -> Figure:
    """Loss and accuracy per epoch (train and validation); the best epoch as a dashed line."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((a1, "loss", "cross-entropy loss"), (a2, "acc", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{key}"], "o-", label="train")
        ax.plot(history["epoch"], history[f"val_{key}"], "s-", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], normalize: bool = False,
                            title: str = "", ax=None) -> Figure:
    """Heatmap of ``cm`` (rows = true class, columns = predicted); ``normalize`` divides each
    row by its total (so the diagonal shows recall)."""
    cm = np.asarray(cm, float)
    fig, ax = _fig_ax(ax, (5.2, 4.4))
    data = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    import seaborn as sns  # here: its import (scipy.stats) costs every process that plots none 0.7 s
    sns.heatmap(data, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", cbar=False,
                xticklabels=class_names, yticklabels=class_names, ax=ax,
                vmin=0, vmax=1 if normalize else None, square=True)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or ("row-normalised (recall on the diagonal)" if normalize else "counts"))
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str = "",
               ax=None) -> Figure:
    """One-vs-rest ROC curves: ``curves[class] = (fpr, tpr, auc)`` (see metrics.roc_points)."""
    fig, ax = _fig_ax(ax, (4.6, 4.4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    return _diagonal_plot(fig, ax, "false positive rate (1 - specificity)",
                          "true positive rate (recall)", title, "lower right")


def _diagonal_plot(fig: Figure, ax, xlabel: str, ylabel: str, title: str, legend: str) -> Figure:
    """Finish a unit-square plot: the dotted diagonal, labels, title, legend."""
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    return fig


def reliability_figure(curves: dict[str, pd.DataFrame], title: str = "", ax=None) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin (``metrics.reliability_bins``)
    for each labelled table (e.g. before / after temperature scaling); the diagonal is perfect
    calibration, marker area grows with the bin's image count."""
    fig, ax = _fig_ax(ax, (4.6, 4.4))
    for label, b in curves.items():
        full = b[b["count"] > 0]
        ax.plot(full["confidence"], full["accuracy"], marker="o", label=label)
        ax.scatter(full["confidence"], full["accuracy"],
                   s=10 + 200 * full["count"] / full["count"].sum(), alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return _diagonal_plot(fig, ax, "confidence (predicted class probability)", "accuracy", title,
                          "upper left")


def bar_table(table: pd.DataFrame, title: str = "", ylabel: str = "images", ax=None) -> Figure:
    """Grouped bars of a table (rows on the x axis, one bar per column), e.g. class x split."""
    fig, ax = _fig_ax(ax, (7, 3.6))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 6,
               size: float = 2.0, suptitle: str = "") -> Figure:
    """Grayscale ``(H, W)`` or RGB ``(H, W, 3)`` images in a grid, with optional titles."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0,
                      vmax=1 if img.dtype.kind == "f" else 255)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _to_uint8_gray(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.dtype != np.uint8:
        g = (np.clip(g, 0, 1) * 255 + 0.5).astype(np.uint8)
    return g


def overlay_cam(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
                colormap: int = cv2.COLORMAP_JET, outline: np.ndarray | None = None,
                peak: bool = False) -> np.ndarray:
    """Blend a CAM over a radiograph: RGB uint8 ``(H, W, 3)``.

    ``gray``: ``(H, W)`` uint8 or float in [0, 1]; ``cam``: ``(h, w)`` in [0, 1] (resized to the
    image if needed). OpenCV colour maps come out BGR; they are converted to RGB here, once.
    ``outline``: a bool mask (e.g. the lesion) whose contour is drawn in white; ``peak``: mark
    the map's maximum (what the pointing game scores) with a white ring.
    """
    g = _to_uint8_gray(gray)
    cam = np.asarray(cam, np.float32)
    if cam.shape != g.shape:
        cam = cv2.resize(cam, g.shape[::-1], interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), colormap)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    base = np.repeat(g[..., None], 3, axis=2)
    out = (alpha * heat + (1 - alpha) * base + 0.5).astype(np.uint8)
    if outline is not None:
        out = overlay_mask(out, outline, color=(255, 255, 255), alpha=0.0)
    if peak and cam.max() > cam.min():
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        r = max(2, round(0.03 * max(cam.shape)))
        cv2.circle(out, (int(x), int(y)), r, (255, 255, 255), max(1, r // 3))
    return out


def overlay_mask(gray: np.ndarray, mask: np.ndarray, color=(0, 200, 0), alpha: float = 0.35
                 ) -> np.ndarray:
    """A bool mask tinted over a radiograph (RGB uint8), with its outline drawn solid.

    ``gray``: ``(H, W)`` gray or an RGB ``(H, W, 3)`` image (e.g. a CAM overlay); ``alpha=0``
    draws the outline only."""
    g = np.asarray(gray)
    g = g if g.ndim == 3 else _to_uint8_gray(g)
    m = np.asarray(mask, bool)
    if m.shape != g.shape[:2]:
        m = cv2.resize(m.astype(np.uint8), g.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    out = (g if g.ndim == 3 else np.repeat(g[..., None], 3, axis=2)).astype(np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1)
    return out


def cam_comparison(images: Sequence[np.ndarray], overlays: dict[str, Sequence[np.ndarray]],
                   true_labels: Sequence[str], predictions: dict[str, Sequence[tuple[str, float]]],
                   size: float = 2.2, suptitle: str = "") -> Figure:
    """The study's comparison figure: one row per test image; the X-ray, then each model's CAM
    overlay titled with its predicted class and probability (red when wrong)."""
    models = list(overlays)
    fig, axes = plt.subplots(len(images), 1 + len(models),
                             figsize=(size * (1 + len(models)), size * len(images) + 0.4),
                             squeeze=False)
    for r, img in enumerate(images):
        axes[r, 0].imshow(img, cmap="gray")
        axes[r, 0].set_title(f"true: {true_labels[r]}", fontsize=8)
        for c, m in enumerate(models, start=1):
            pred, prob = predictions[m][r]
            axes[r, c].imshow(overlays[m][r])
            axes[r, c].set_title(f"{m}: {pred} ({prob:.2f})", fontsize=8,
                                 color="black" if pred == true_labels[r] else "red")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def cam_strip(gray: np.ndarray, overlays: Sequence[np.ndarray], captions: Sequence[str],
              title: str = "", tile: int = 256) -> np.ndarray:
    """One picture per radiograph (``predict.py``): the image, then each model's overlay,
    side by side at ``tile`` px, each under its caption, the whole under ``title``. Drawn with
    OpenCV (no Matplotlib figure per image). Returns RGB uint8 ``(H, W, 3)``."""
    if len(overlays) != len(captions):
        raise ValueError(f"{len(overlays)} overlays but {len(captions)} captions")
    bar, font = 22, cv2.FONT_HERSHEY_SIMPLEX
    g = cv2.resize(_to_uint8_gray(gray), (tile, tile), interpolation=cv2.INTER_AREA)
    panels = [np.repeat(g[..., None], 3, axis=2)]
    panels += [cv2.resize(np.asarray(o, np.uint8), (tile, tile), interpolation=cv2.INTER_LINEAR)
               for o in overlays]
    cols = []
    for panel, text in zip(panels, ["image", *captions]):
        head = np.full((bar, tile, 3), 255, np.uint8)
        cv2.putText(head, text[:40], (4, bar - 7), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cols.append(np.concatenate([head, panel], 0))
    body = np.concatenate(cols, 1)
    top = np.full((bar, body.shape[1], 3), 255, np.uint8)
    cv2.putText(top, title[-int(body.shape[1] / 7.5):], (4, bar - 7), font, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([top, body], 0)


def box_by_class(df: pd.DataFrame, value: str, by: str = "label", title: str = "", ax=None
                 ) -> Figure:
    """Box plot of one per-image statistic per class."""
    fig, ax = _fig_ax(ax, (5, 3.4))
    import seaborn as sns
    sns.boxplot(data=df, x=by, y=value, ax=ax)
    ax.set_title(title or value)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def duplicate_pairs_figure(pairs: Sequence[tuple[np.ndarray, np.ndarray, str]],
                           suptitle: str = "") -> Figure | None:
    """Near-duplicate pairs side by side: each ``(image, twin, caption)`` is two gray tiles,
    the caption over the first; None when there are no pairs."""
    if not pairs:
        return None
    tiles, titles = [], []
    for a, b, caption in pairs:
        tiles += [_to_uint8_gray(a), _to_uint8_gray(b)]
        titles += [caption, ""]
    return image_grid(tiles, titles, ncols=min(6, 2 * len(pairs)), size=2.2, suptitle=suptitle)


def evaluation_figures(data: dict) -> Iterator[tuple[str, Figure | None]]:
    """Every figure of an evaluation (``evaluation.Evaluation.figures``), one at a time, as
    ``(path relative to the output folder, Figure)``: confusion matrices (counts and
    row-normalised) per model and scored split, ROC and reliability curves per model, and the
    Grad-CAM galleries (the same images under each model, the misclassified ones, and the
    images whose maps sit most outside the lungs, lungs outlined). A gallery with nothing to
    show gives ``(path, None)``. Paths start with ``data["prefix"]`` (an external set's
    folder)."""
    pre, names, split = data.get("prefix", ""), data["class_names"], data["split"]
    for name, part, cm in data.get("confusion", []):
        for norm in (False, True):
            yield (f"{pre}confusion_matrices/{name}_{part}{'_normalized' if norm else ''}.png",
                   confusion_matrix_figure(np.asarray(cm), names, normalize=norm,
                                           title=f"{name} {part} "
                                                 f"({'row-normalised' if norm else 'counts'})"))
    for name, curves in data.get("roc", {}).items():
        yield f"{pre}roc/{name}.png", roc_figure(curves, title=f"{name} {split} ROC (one-vs-rest)")
    for name, curves in data.get("reliability", {}).items():
        yield (f"{pre}calibration/{name}.png",
               reliability_figure(curves, title=f"{name} {split} reliability"))
    if data.get("training_twins"):
        yield f"{pre}training_twins.png", duplicate_pairs_figure(
            data["training_twins"], "left out: copies of training images (left: this set; "
                                    "right: the training image as fingerprinted)")
    galleries = data.get("galleries", {})
    for gallery in ("comparison", "misclassified"):
        yield f"{pre}grad_cam/{gallery}.png", _gallery_figure(galleries.get(gallery), gallery, data)
    g = galleries.get("outside_lungs")
    yield f"{pre}grad_cam/outside_lungs.png", None if g is None else image_grid(
        [overlay_cam(t["gray"], t["map"], outline=t["lungs"], peak=True) for t in g["tiles"]],
        [t["caption"] for t in g["tiles"]], ncols=g["ncols"], size=2.6,
        suptitle=f"{data['cam_method']}: the {split} images whose maps sit most outside the "
                 f"lungs (lungs outlined)")


def _gallery_figure(g: dict | None, gallery: str, data: dict) -> Figure | None:
    """``cam_comparison`` of one gallery of ``evaluation_figures``'s data (None stays None)."""
    if g is None:
        return None
    overlays = {name: [overlay_cam(gray, m, outline=None if v["masks"] is None else v["masks"][i],
                                   peak=True)
                       for i, (gray, m) in enumerate(zip(v["gray"], v["maps"]))]
                for name, v in g["models"].items()}
    raw = g["raw"] if g["raw_masks"] is None else [
        overlay_mask(r, m, color=(255, 40, 40), alpha=0.0) for r, m in zip(g["raw"], g["raw_masks"])]
    title = f"{data['cam_method']} per model, {gallery}" + (" (synthetic demo data)"
                                                           if data.get("synthetic") else "")
    if g["custom_layers"]:
        title += "\nlayers: " + ", ".join(f"{a} {n}" for a, n in g["layers"].items())
    return cam_comparison(raw, overlays, g["labels"],
                          {name: v["preds"] for name, v in g["models"].items()}, suptitle=title)
