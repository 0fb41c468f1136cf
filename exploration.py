"""Describing a dataset before training on it (notebook 1): seeded samples per class, per-image
file and intensity statistics, and the shortcut check: how far each statistic separates the
classes (a model could use such a difference instead of the lungs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from xray_io import read_xray


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




def duplicate_overview(manifest: pd.DataFrame, duplicates: pd.DataFrame) -> pd.DataFrame:
    """Per class: images in exact-duplicate and in near-duplicate groups (``duplicates``: the
    split's ``<stem>.duplicates.csv``), and the groups they form (a group counts for the class
    of its first image)."""
    label = dict(zip(manifest["path"], manifest["label"]))
    group = dict(zip(manifest["path"], manifest["group"]))
    rows = []
    for kind in ("exact", "near"):
        part = duplicates[duplicates["kind"] == kind]
        paths = sorted(set(part["path"]) | set(part["matched_path"]))
        for p in paths:
            rows.append({"kind": kind, "label": label.get(p, "?"), "path": p,
                         "group": group.get(p, p)})
    t = pd.DataFrame(rows, columns=["kind", "label", "path", "group"])
    out = pd.DataFrame(index=sorted(manifest["label"].unique()))
    for kind in ("exact", "near"):
        k = t[t["kind"] == kind]
        out[f"images in {kind} groups"] = k.groupby("label").size()
        out[f"{kind} groups"] = k.drop_duplicates("group").groupby("label").size()
    return out.fillna(0).astype(int)


def duplicate_pairs(duplicates: pd.DataFrame, data_dir: str | os.PathLike, n: int = 4,
                    kind: str = "near") -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Up to ``n`` pairs of ``kind`` (the highest-scoring last: the least sure first) as
    ``(image, matched image, caption)`` for ``plot_utils.duplicate_pairs_figure``."""
    part = duplicates[duplicates["kind"] == kind].sort_values("score").head(n)
    return [(read_xray(Path(data_dir) / r.path), read_xray(Path(data_dir) / r.matched_path),
             f"{Path(r.path).name}\n~ {Path(r.matched_path).name}\nscore {r.score:.3f}")
            for r in part.itertuples()]
