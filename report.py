"""One self-contained HTML page of a run: ``outputs/report.html``.

    python report.py [--out outputs]          # also: make report; notebook 3 calls build_report

Reads what the notebooks wrote under ``--out`` (``metrics.json`` is required; everything else is
shown when present): the split table from ``manifest.csv``, notebook 1's figures and shortcut
table (``CSVs/shortcut_check.csv``), the class x source table when the manifest has a ``source``
column, per model the training curves, test metrics with intervals, confusion matrices, ROC curves,
localization scores, the shortcut audit, calibration (reliability diagram, ECE before and after
temperature scaling) and accuracy by source, a model comparison, the Grad-CAM gallery
(``grad_cam/*.png``, including the misclassified test images and those whose maps sit most outside
the lungs), the run's settings and library versions, and the synthetic-data banner. Images are
embedded as base64 PNG, so the file can be mailed or opened from a USB stick; no JavaScript. The
page comes from ``report_template.html.j2`` (Jinja2, autoescaped).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

import tables
from split_dataset import split_table
from files import atomic_write, write_json_atomic

TEMPLATE = Path(__file__).with_name("report_template.html.j2")


def _png(path: Path) -> str | None:
    """``data:`` URI of a PNG, or None when the file is absent."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(v, digits: int = 3) -> str:
    """One table cell: yes/no for flags, thousands separators for counts, ``digits`` decimals
    for other numbers, except those too small for them (a learning rate of 3e-05 is not 0.000)."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "n/a"
        if v != 0 and abs(v) < 0.5 * 10.0 ** -digits:
            return f"{v:.2g}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(df: pd.DataFrame | None, digits: int = 3) -> dict | None:
    """A DataFrame as ``{"columns", "rows"}`` of strings for the template (None stays None).
    A named or labelled index (a crosstab's classes, say) becomes the first column; a plain
    0, 1, 2... index is left out."""
    if df is None or df.empty:
        return None
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()
    return {"columns": [str(c) for c in df.columns],
            "rows": [[_cell(v, digits) for v in row] for row in df.itertuples(index=False)]}


def _rows(df: pd.DataFrame | None, arch: str) -> dict | None:
    """One model's rows of a ``tables`` table (index ``model``, or ``(model, ...)``) for the
    template; None when the model has none."""
    if df is None or arch not in df.index.get_level_values("model"):
        return None
    part = df.xs(arch, level="model") if df.index.nlevels > 1 else df.loc[[arch]]
    return _table(part if df.index.nlevels > 1 else part.reset_index(drop=True))


def report_context(out_dir: str | Path) -> dict:
    """Everything the template shows, gathered from ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    m = read_metrics(out)
    manifest = out / "manifest.csv"
    mdf = pd.read_csv(manifest, dtype=str, keep_default_na=False) if manifest.is_file() else None
    csv = lambda name: (pd.read_csv(out / "CSVs" / name)  # noqa: E731
                        if (out / "CSVs" / name).is_file() else None)
    sources = None
    if mdf is not None and "source" in mdf.columns:
        sources = pd.crosstab(mdf["source"].replace("", "(unknown)"), mdf["label"])
    archs = m.get("archs") or {}
    per_model = {"per_class": tables.per_class(archs, "test") if archs else None,
                 "localization": tables.localization(archs), "audit": tables.audit(archs),
                 "calibration": tables.calibration(archs, "test"),
                 "by_source": tables.by_source(archs)}
    models = []
    for arch, r in archs.items():
        cal, audit = r.get("calibration") or {}, r.get("lung_audit") or {}
        models.append({
            "arch": arch, "accuracy": tables.ci(r["test"], "accuracy"), "n_test": r["test"]["n"],
            "train_n": (r.get("train") or {}).get("n"),
            "train_accuracy": tables.ci(r.get("train") or {}, "accuracy"),
            **{key: _rows(df, arch) for key, df in per_model.items()},
            "audit_n": (audit.get("as_is") or {}).get("n"),
            "audit_verdict": tables.audit_verdict(audit),
            "calibration_note": cal.get("note") or (cal.get("validation") or {}).get("note", ""),
            "settings": (m.get("models") or {}).get(arch, {}),
            "images": {k: _png(p) for k, p in {
                "reliability": out / "calibration" / f"{arch}.png",
                "curves": out / "summary_plots" / f"{arch}.png",
                "cm": out / "confusion_matrices" / f"{arch}_test.png",
                "cm_norm": out / "confusion_matrices" / f"{arch}_test_normalized.png",
                "roc": out / "roc" / f"{arch}.png"}.items()},
        })
    gallery = [{"title": title, "src": _png(out / "grad_cam" / name)}
               for name, title in (("comparison.png", "The same test images under each model"),
                                   ("misclassified.png", "Misclassified test images"),
                                   ("outside_lungs.png", "The test images whose maps sit most "
                                                         "outside the lungs (lungs outlined)"))]
    return {
        "dataset": m["dataset"], "created": m.get("created", "?"),
        "convention": m.get("convention", ""), "class_names": m.get("class_names", []),
        "versions": m.get("versions", {}),
        "split": _table(split_table(mdf) if mdf is not None else None, 0),
        "shortcuts": _table(csv("shortcut_check.csv")), "sources": _table(sources, 0),
        "training": _table(csv("training_summary.csv")),
        "data_images": [(t, _png(out / "images" / f)) for f, t in (
            ("class_counts.png", "Images per class and split"), ("samples.png", "Sample images"),
            ("intensity_by_class.png", "Mean intensity per class"),
            ("lung_masks.png", "Lung masks"))],
        "models": models, "gallery": [g for g in gallery if g["src"]],
        "comparison": _table(tables.comparison(archs, "test")) if archs else None,
        "localization_note": tables.localization_note(archs), "audit_note": tables.AUDIT_NOTE,
        "external": [_external(m, name, out) for name in (m.get("external") or {})],
        "trust": _table(tables.trust(archs, "test")),
    }


def _external(m: dict, name: str, out: Path) -> dict:
    """One external set of metrics.json for the template: its images account, the side-by-side
    table, its own tables and figures."""
    x = m["external"][name]
    info, archs = x["images"], x["archs"]
    pre = out / "external" / name
    images = [(f"{n}: confusion matrix (rows = true class)",
               _png(pre / "confusion_matrices" / f"{n}_external.png")) for n in archs]
    images += [(f"{n}: reliability", _png(pre / "calibration" / f"{n}.png")) for n in archs]
    images += [("Left out as copies of training images, beside their training twin",
                _png(pre / "training_twins.png"))]
    images += [(title, _png(pre / "grad_cam" / f)) for f, title in (
        ("comparison.png", "Grad-CAM: the same images under each model"),
        ("misclassified.png", "Grad-CAM: misclassified images"),
        ("outside_lungs.png", "Grad-CAM: maps most outside the lungs (lungs outlined)"))]
    return {"name": name, "data_dir": x.get("data_dir", ""), "created": x.get("created", "?"),
            "synthetic": (x.get("dataset") or {}).get("synthetic", False),
            "account": tables.external_account(m, name), "duplicates": info["training_duplicates"],
            "unchecked": info["unchecked_models"], "not_read": info["not_read"],
            "side_by_side": _table(tables.internal_vs_external(m, name)),
            "tables": [("Per class (external)", _table(tables.per_class(archs, "external"))),
                       ("Localization (external)", _table(tables.localization(archs))),
                       ("Shortcut audit (external)", _table(tables.audit(archs))),
                       ("Accuracy by source (external)", _table(tables.by_source(archs))),
                       ("Unfamiliar images and prediction sets (external)",
                        _table(tables.trust(archs, "external")))],
            "images": images}


# --------------------------------------------------------------------------- metrics.json
def same_models(a: dict, b: dict) -> bool:
    """Whether two metrics.json ``models`` sections describe the same checkpoints wherever they
    name the same model (epoch, validation numbers and training settings)."""
    shared = set(a) & set(b)
    return bool(shared) and all(a[n] == b[n] for n in shared)


def merged_metrics(new: dict, old: dict | None) -> tuple[dict, str]:
    """``new`` combined with an existing metrics.json ``old``: an internal evaluation (with
    ``archs``) keeps ``old``'s external sets, an external one keeps ``old``'s internal results
    and other external sets, when both describe the same models (``same_models``). Returns
    ``(metrics, note)``. An external result is never put beside another checkpoint's internal
    results: ValueError (rerun notebook 3 for these models, or write elsewhere)."""
    if not old:
        return new, ""
    same = same_models(new.get("models", {}), old.get("models", {}))
    if "archs" in new:
        if old.get("external") and same:
            return {**new, "external": old["external"]}, "kept the external results already there"
        return new, "dropped external results of other checkpoints" if old.get("external") else ""
    if "archs" in old and not same:
        raise ValueError("this folder's metrics.json holds internal results of other "
                         "checkpoints (epochs or training settings differ): rerun notebook 3 "
                         "(make run) for these models, or choose another --out")
    merged = {**old, "models": {**old.get("models", {}), **new["models"]},
              "external": {**(old.get("external") or {}), **new["external"]}}
    if "archs" not in old:
        merged.update({k: new[k] for k in ("dataset", "created", "class_names", "convention",
                                           "versions")})
    return merged, "beside the internal test results already there" if "archs" in old else ""


def read_metrics(out_dir: str | Path) -> dict:
    """``out_dir/metrics.json``; FileNotFoundError saying how to make it."""
    path = Path(out_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 3 (or make run) or evaluate.py "
                                f"first; the report is built from its metrics")
    return json.loads(path.read_text())


def save_metrics(new: dict, out_dir: str | Path) -> tuple[Path, str]:
    """Write ``out_dir/metrics.json`` (atomically), merged with the one already there
    (``merged_metrics``); returns ``(path, note)``."""
    path = Path(out_dir) / "metrics.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    merged, note = merged_metrics(new, old)
    write_json_atomic(merged, path)
    return path, note


def build_report(out_dir: str | Path = "outputs", path: str | Path | None = None) -> Path:
    """Render ``out_dir/report.html`` (or ``path``) atomically; returns its path."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template(TEMPLATE.name).render(**report_context(out_dir))
    path = Path(path) if path else Path(out_dir) / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs", help="the run's output folder (default outputs)")
    a = p.parse_args(argv)
    try:
        path = build_report(a.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
