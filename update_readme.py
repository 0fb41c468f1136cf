"""Regenerate the results in the README and in docs/results.md, and assets/, from metrics.json.

    python update_readme.py [--metrics outputs/metrics.json] [--readme README.md]
                            [--results docs/results.md] [--assets assets]
                            [--shortcut-metrics outputs-shortcut/metrics.json]

Replaces the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` in both files:
the README gets the headline (``headline_markdown``: one row per model, with the external sets),
``docs/results.md`` everything (``results_markdown``: metrics, localization, confusion matrices,
the shortcut audit, calibration, external sets). Copies the Grad-CAM comparison, the test
confusion matrices and the shortcut audit's gallery into assets/ (linked relative to each file).
With ``--shortcut-metrics`` (a ``make run SHORTCUT=1`` run) the shortcut audit is shown for both
runs side by side, with the planted run's results by source. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import tables

START, END = "<!-- results:start -->", "<!-- results:end -->"
md = tables.markdown  # every table and sentence comes from tables.py; this file arranges them


def headline_markdown(m: dict, assets: dict[str, str]) -> str:
    """The README's results: ``tables.headline`` (per model the test metrics, the pointing game,
    the accuracy with the lungs removed, the external sets), the trust table, the Grad-CAM
    comparison."""
    lines = []
    if m["dataset"].get("synthetic"):
        lines.append("> **Synthetic demo data** (`demo_data.py` phantoms): these numbers show that "
                     "the pipeline runs and that the models find the drawn findings; they say "
                     "nothing about COVID-19.\n")
    lines += [md(tables.headline(m)),
              f"Dataset: {m['dataset']['name']}; generated {m.get('created', '?')}. 95% "
              "intervals: Wilson for accuracies, bootstrap for the rest.\n"]
    trust = tables.trust(m["archs"], "test")
    if trust is not None:
        lines += ["Unfamiliar images and prediction sets on the test split (`familiarity.py`; "
                  "the flag passes 95% of the validation images; AUROC against 12 built-in "
                  "non-radiographs and the test images turned, upside down, inverted or cropped "
                  "to a corner; sets at 90% nominal coverage; [methods](docs/methods.md"
                  "#familiarity-and-prediction-sets)):\n", md(trust)]
    lines += [f"![{c}]({p})\n" for c, p in assets.items() if c == "Grad-CAM comparison"]
    return "\n".join(lines)


def results_markdown(m: dict, assets: dict[str, str], shortcut: dict | None = None) -> str:
    """The results section for metrics.json content ``m`` (``assets``: caption -> path;
    ``shortcut``: a planted-shortcut run's metrics.json, shown beside ``m`` in the audit)."""
    ds = m["dataset"]
    lines = []
    if ds.get("synthetic"):
        lines.append("> **These numbers come from the synthetic demo dataset** (`demo_data.py` "
                     "phantoms, generated offline). They show that the pipeline runs and that the "
                     "models find the drawn findings; they say nothing about COVID-19. Run `make run "
                     "DATA=...` on the real database for real numbers.\n")
    lines.append(f"Dataset: {ds['name']}; generated {m.get('created', '?')} by notebook 3 "
                 f"(`outputs/metrics.json`). 95% intervals: Wilson for accuracy, bootstrap for "
                 f"the rest.\n")
    lines.append(md(tables.comparison(m["archs"], "test")))
    if tables.localization(m["archs"]) is not None:
        lines += [tables.localization_note(m["archs"]) + "\n", md(tables.localization(m["archs"]))]
    for caption, path in assets.items():
        if "outside the lungs" not in caption:
            lines.append(f"![{caption}]({path})\n")
    runs = {"this run": m} if shortcut is None else {"normal demo": m, "planted shortcut": shortcut}
    audits = tables.audit_runs(runs)
    if audits is not None:
        lines += [tables.AUDIT_NOTE + "\n", md(audits)]
    if shortcut is not None and tables.by_source(shortcut["archs"]) is not None:
        lines += ["Planted-shortcut run, test accuracy by source (a source's mark is what the "
                  "shortcut reads; each class comes mostly from its own source):\n",
                  md(tables.by_source(shortcut["archs"]))]
    for caption, path in assets.items():
        if "outside the lungs" in caption:
            lines.append(f"![{caption}]({path})\n")
    if tables.calibration(m["archs"]) is not None:
        lines += ["Calibration on the test split: expected calibration error (15 bins, bootstrap "
                  "interval) and negative log-likelihood, as trained and after temperature "
                  "scaling with the T fitted on the validation split (stored in the checkpoint; "
                  "`predict.py` applies it).\n", md(tables.calibration(m["archs"]))]
    for name in m.get("external") or {}:
        lines += [f"External validation, `{name}` (`evaluate.py`): "
                  f"{tables.external_account(m, name)} ECE with T: the temperature fitted on the "
                  "internal validation split.\n", md(tables.internal_vs_external_wide(m, name))]
    return "\n".join(lines)


def _archs_section(path: Path) -> str | None:
    """The architecture comparison section from a ``make run ARCHS=...`` run's metrics.json."""
    if not path.is_file():
        return None
    import pandas as pd  # noqa: PLC0415
    m = json.loads(path.read_text())
    csv = path.parent / "CSVs" / "training_summary.csv"
    summary = pd.read_csv(csv) if csv.is_file() else None
    return (tables.architectures_title(m["archs"], summary) + "\n\n"
            + md(tables.architectures(m["archs"], summary)))


def _replace_block(path: Path, body: str) -> bool:
    """Put ``body`` between the markers of ``path``; False when the file lacks them."""
    text = path.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metrics", default="outputs/metrics.json")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--assets", default="assets")
    p.add_argument("--shortcut-metrics", default=None,
                   help="metrics.json of a 'make run SHORTCUT=1' run, for the audit comparison")
    p.add_argument("--archs-metrics", default=None,
                   help="metrics.json of a 'make run ARCHS=...' run, for the architecture "
                        "comparison (its CSVs/training_summary.csv beside it)")
    a = p.parse_args(argv)
    metrics_path = Path(a.metrics)
    if not metrics_path.is_file():
        print(f"error: {metrics_path} not found; run 'make run' first", file=sys.stderr)
        return 2
    m = json.loads(metrics_path.read_text())
    shortcut = None
    if a.shortcut_metrics:
        if not Path(a.shortcut_metrics).is_file():
            print(f"error: {a.shortcut_metrics} not found; run 'make run SHORTCUT=1' first",
                  file=sys.stderr)
            return 2
        shortcut = json.loads(Path(a.shortcut_metrics).read_text())
    out_dir, assets_dir = metrics_path.parent, Path(a.assets)
    assets_dir.mkdir(parents=True, exist_ok=True)
    copied = {}
    wanted = [("Grad-CAM comparison", out_dir / "grad_cam" / "comparison.png",
               "grad_cam_comparison.png")]
    wanted += [(f"{arch} test confusion matrix",
                out_dir / "confusion_matrices" / f"{arch}_test.png", f"{arch}_test.png")
               for arch in m["archs"]]
    wanted.append(("Grad-CAM maps most outside the lungs, normal demo",
                   out_dir / "grad_cam" / "outside_lungs.png", "outside_lungs.png"))
    if a.shortcut_metrics:
        wanted.append(("Grad-CAM maps most outside the lungs, planted shortcut",
                       Path(a.shortcut_metrics).parent / "grad_cam" / "outside_lungs.png",
                       "outside_lungs_shortcut.png"))
    for caption, src, name in wanted:
        if src.is_file():
            dst = assets_dir / name
            shutil.copyfile(src, dst)
            copied[caption] = dst
    readme, results = Path(a.readme), Path(a.results)

    def linked(doc: Path) -> dict[str, str]:
        return {c: Path(os.path.relpath(dst.resolve(), doc.resolve().parent)).as_posix()
                for c, dst in copied.items()}

    if not results.is_file():
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text("# Results\n\nRegenerated by `make results` from `outputs/metrics.json`"
                           f" (never typed by hand).\n\n{START}\n{END}\n")
    blocks = {readme: headline_markdown(m, linked(readme)),
              results: results_markdown(m, linked(results), shortcut)}
    if a.archs_metrics:
        compare = _archs_section(Path(a.archs_metrics))
        if compare is None:
            print(f"error: {a.archs_metrics} not found; run 'make run ARCHS=...' first",
                  file=sys.stderr)
            return 2
        blocks = {doc: f"{body}\n{compare}" for doc, body in blocks.items()}
    unmarked = [str(doc) for doc, body in blocks.items()
                if not (doc.is_file() and _replace_block(doc, body))]
    if unmarked:
        print(f"error: {', '.join(unmarked)} lack(s) the {START} ... {END} markers",
              file=sys.stderr)
        return 2
    print(f"updated {readme}, {results} and {len(copied)} images in {assets_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
