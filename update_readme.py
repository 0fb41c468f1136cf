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
_ci = tables.ci  # "0.950 [0.894, 0.977]", the one way intervals are written


def headline_markdown(m: dict, assets: dict[str, str]) -> str:
    """The README's results: per model the test set's accuracy, balanced accuracy and macro AUC,
    the pointing game and the accuracy with the lungs removed (each with its interval), and the
    accuracy on each external set; then the Grad-CAM comparison."""
    lines = []
    if m["dataset"].get("synthetic"):
        lines.append("> **Synthetic demo data** (`demo_data.py` phantoms): these numbers show that "
                     "the pipeline runs and that the models find the drawn findings; they say "
                     "nothing about COVID-19.\n")
    external = list(m.get("external") or {})
    head = ["model", "test n", "accuracy", "balanced accuracy", "macro AUC",
            "pointing game (chance)", "accuracy, lungs removed (chance)"]
    head += [f"accuracy, external `{x}` (n)" for x in external]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch, r in m["archs"].items():
        t, loc, a = r["test"], r.get("localization") or {}, r.get("lung_audit") or {}
        cells = [arch, str(t["n"]), _ci(t, "accuracy"), _ci(t, "balanced_accuracy"),
                 _ci(t, "macro_auc"),
                 f"{_ci(loc, 'pointing_game')} ({loc['chance']:.2f})" if loc.get("n") else "n/a",
                 f"{_ci(a.get('lungs_removed'), 'accuracy')} ({a['chance']:.2f})"
                 if a.get("as_is") else "n/a"]
        for x in external:
            e = (m["external"][x]["archs"].get(arch) or {}).get("external")
            cells.append(f"{_ci(e, 'accuracy')} ({e['n']})" if e else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nDataset: {m['dataset']['name']}; generated {m.get('created', '?')}. 95% "
                 "intervals: Wilson for accuracies, bootstrap for the rest.\n")
    trust = tables.trust(m["archs"], "test")
    if trust is not None:
        lines += ["Unfamiliar images and prediction sets on the test split (`familiarity.py`; "
                  "the flag passes 95% of the validation images; AUROC against 12 built-in "
                  "non-radiographs and the test images turned, upside down, inverted or cropped "
                  "to a corner; sets at 90% nominal coverage; [methods](docs/methods.md"
                  "#familiarity-and-prediction-sets)):\n", tables.markdown(trust)]
    lines += [f"![{c}]({p})\n" for c, p in assets.items() if c == "Grad-CAM comparison"]
    return "\n".join(lines)


def archs_markdown(m: dict, summary=None) -> str:
    """The architecture comparison (``make run ARCHS=...``): per model its parameters, input
    size, seconds per epoch (``CSVs/training_summary.csv``), test accuracy, pointing game, CAM
    energy in the lungs and accuracy with the lungs removed, each with its interval."""
    rows = {} if summary is None else summary.set_index("arch").to_dict(orient="index")
    lines = ["| model | parameters | input | s/epoch (epochs) | test accuracy | pointing game "
             "(chance) | CAM energy in lungs (chance) | accuracy, lungs removed (chance) |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, r in m["archs"].items():
        t, loc, a = r["test"], r.get("localization") or {}, r.get("lung_audit") or {}
        s_ = rows.get(arch, {})
        lines.append(
            f"| {arch} | {s_['parameters'] / 1e6:.1f} M | {s_['image_size']} px | "
            f"{s_['seconds_per_epoch']:.0f} ({s_['epochs_run']}) | " if s_ else f"| {arch} | | | | ")
        lines[-1] += (
            f"{_ci(t, 'accuracy')} | "
            + (f"{_ci(loc, 'pointing_game')} ({loc['chance']:.2f}) | " if loc.get("n") else "n/a | ")
            + (f"{_ci(a['cam'], 'energy_in_lungs')} ({tables.num(a['cam']['energy_chance'], '.2f')}) | "
               f"{_ci(a['lungs_removed'], 'accuracy')} ({a['chance']:.2f}) |"
               if a.get("as_is") else "n/a | n/a |"))
    return "\n".join(lines) + "\n"


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
    lines.append("| model | test n | accuracy | balanced accuracy | macro F1 | macro AUC |")
    lines.append("|---|---|---|---|---|---|")
    for arch, r in m["archs"].items():
        t = r["test"]
        lines.append(f"| {arch} | {t['n']} | {_ci(t, 'accuracy')} | "
                     f"{_ci(t, 'balanced_accuracy')} | {_ci(t, 'macro_f1')} | "
                     f"{_ci(t, 'macro_auc')} |")
    lines.append("")
    locs = {a: r.get("localization") or {} for a, r in m["archs"].items()}
    if any(loc.get("n") for loc in locs.values()):
        lines.append(localization_markdown(locs))
    lines.append("")
    for caption, path in assets.items():
        if "outside the lungs" not in caption:
            lines.append(f"![{caption}]({path})\n")
    runs = {"this run": m} if shortcut is None else {"normal demo": m, "planted shortcut": shortcut}
    if any((r.get("lung_audit") or {}).get("as_is") for run in runs.values()
           for r in run["archs"].values()):
        lines.append(audit_markdown(runs))
    if shortcut is not None:
        lines.append(by_source_markdown(shortcut))
    for caption, path in assets.items():
        if "outside the lungs" in caption:
            lines.append(f"![{caption}]({path})\n")
    if any(r.get("calibration") for r in m["archs"].values()):
        lines.append(calibration_markdown(m))
    for name in m.get("external") or {}:
        lines.append(external_markdown(m, name))
    return "\n".join(lines)


def external_markdown(m: dict, name: str) -> str:
    """An external set (``make external``): what was scored, and each model's internal test and
    external numbers side by side, with intervals."""
    x = m["external"][name]
    info = x["images"]
    skipped = ", ".join(f"{f} ({n} images)" for f, n in info["skipped_folders"].items())
    dups = info["training_duplicates"]
    lines = [f"External validation, `{name}` (`evaluate.py`; {x['dataset']['name']}): "
             f"{info['scored']} images scored ("
             + ", ".join(f"{c} {n}" for c, n in info["scored_by_class"].items()) + "); folders "
             + ", ".join(f"`{f}` -> {c}" for f, c in info["class_map"].items())
             + (f"; skipped, a class the models do not know: {skipped}" if skipped else "")
             + (f"; left out, byte-identical to training or validation images: {len(dups)}"
                if dups else "") + ". ECE with T: the temperature fitted on the internal "
             "validation split.\n", tables.markdown(_wide(tables.internal_vs_external(m, name)))]
    return "\n".join(lines)


def _wide(side):
    """The side-by-side table with one row per metric and two columns per model."""
    order = list(dict.fromkeys(side.index.get_level_values("metric")))
    wide = side.unstack("model").reindex(order)
    models = list(dict.fromkeys(side.index.get_level_values("model")))
    cols = [(kind, mdl) for mdl in models for kind in ("internal test", "external")]
    wide = wide[cols]
    wide.columns = [f"{mdl} {kind.replace(' test', '')}" for kind, mdl in cols]
    return wide.fillna("").rename_axis("metric")


def audit_markdown(runs: dict[str, dict]) -> str:
    """The shortcut audit table: per run and model, Grad-CAM evidence against the lungs and the
    accuracy with the lungs shown / removed, each against chance, and the verdict."""
    lines = ["Shortcut audit (notebook 3) on the test split: lung masks grown by 3% of the image "
             "side; Grad-CAM for the predicted class. *Lungs removed*: the grown lungs filled with "
             "the mean of the rest; *lungs only*: the rest filled with the mean of the lungs. "
             "Chance: the grown lungs' area (energy), 1 minus it (peaks), the largest class share "
             "(accuracy).\n",
             "| run | model | CAM energy in lungs (chance) | CAM peaks outside lungs (chance) | "
             "accuracy as is | lungs only | lungs removed (chance) | reads outside the lungs? |",
             "|---|---|---|---|---|---|---|---|"]
    for run, m in runs.items():
        for arch, r in m["archs"].items():
            a = r.get("lung_audit")
            if not a or not a.get("as_is"):
                continue
            c = a["cam"]
            lines.append(
                f"| {run} | {arch} | {_ci(c, 'energy_in_lungs')} "
                f"({tables.num(c['energy_chance'], '.2f')}) | {_ci(c, 'peaks_outside')} "
                f"({tables.num(c['peaks_outside_chance'], '.2f')}) | "
                + " | ".join(_ci(a[v], "accuracy") for v in ("as_is", "lungs_only", "lungs_removed"))
                + f" ({a['chance']:.2f}) | {'**yes**' if a['reads_outside_lungs'] else 'no'} |")
    lines.append("")
    return "\n".join(lines)


def by_source_markdown(m: dict) -> str:
    """Test accuracy per source for each model of a run (metrics.json ``by_source``)."""
    by_model = {a: r["by_source"] for a, r in m["archs"].items() if r.get("by_source")}
    if not by_model:
        return ""
    sources = sorted({s for t in by_model.values() for s in t})
    lines = ["Planted-shortcut run, test accuracy by source (a source's mark is what the shortcut "
             "reads; each class comes mostly from its own source):\n",
             "| model | " + " | ".join(f"{s} (n)" for s in sources) + " |",
             "|---|" + "---|" * len(sources)]
    for arch, t in by_model.items():
        cells = [f"{t[s]['accuracy']:.3f} ({t[s]['n']})" if s in t else "" for s in sources]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def calibration_markdown(m: dict) -> str:
    """Calibration: the validation-fitted temperature and the test ECE / NLL before and after."""
    lines = ["Calibration on the test split: expected calibration error (15 bins, bootstrap "
             "interval) and negative log-likelihood, as trained and after temperature scaling "
             "with the T fitted on the validation split (stored in the checkpoint; `predict.py` "
             "applies it).\n",
             "| model | T | ECE as trained | ECE with T | NLL as trained | NLL with T |",
             "|---|---|---|---|---|---|"]
    for arch, r in m["archs"].items():
        c = r.get("calibration")
        if not c:
            continue
        t = c["test"]
        note = (c.get("validation") or {}).get("note")
        temp = ("none (uncalibrated)" if c["temperature"] is None else f"{c['temperature']:.3g}"
                + (" (val all right: left at 1)" if note else ""))
        after = "n/a" if t["nll_after"] is None else f"{t['nll_after']:.4f}"
        lines.append(f"| {arch} | {temp} | {_ci(t, 'ece_before')} | {_ci(t, 'ece_after')} | "
                     f"{t['nll_before']:.4f} | {after} |")
    lines.append("")
    return "\n".join(lines)


def localization_markdown(locs: dict[str, dict]) -> str:
    """The localization table: per model, Grad-CAM layer and scores with intervals vs chance."""
    first = next(loc for loc in locs.values() if loc.get("n"))
    mask = first["mask"].replace("_path", "").replace("_", " ")
    margin = first.get("margin")
    lines = [f"Localization on the test split ({first['n']} images with a {mask}; each map for the "
             f"image's {first.get('target', 'predicted class')}). Pointing game: is the map's "
             f"peak inside the mask"
             + (f", within the original game's margin ({margin * 299:.0f} px at 299 px)"
                if margin else "") + "? Chance: the area fraction of the (margin-grown) mask.\n",
             "| model | input | Grad-CAM layer (map) | pointing game (chance) | "
             "without margin (chance) | CAM energy in mask (chance) | pointing game per class |",
             "|---|---|---|---|---|---|---|"]
    for arch, loc in locs.items():
        if not loc.get("n"):
            lines.append(f"| {arch} | | | n/a | n/a | n/a | |")
            continue
        per = ", ".join(f"{c} {v['hit']:.2f}" for c, v in (loc.get("per_class") or {}).items())
        size = loc.get("image_size")
        lines.append(
            f"| {arch} | {size} px | `{loc.get('layer', '?')}` | "
            f"{_ci(loc, 'pointing_game')} ({loc['chance']:.2f}) | "
            f"{_ci(loc, 'pointing_game_strict')} ({loc['chance_strict']:.2f}) | "
            f"{_ci(loc, 'energy_in_mask')} ({loc['chance_strict']:.2f}) | {per} |")
    lines.append("")
    return "\n".join(lines)


def _archs_section(path: Path) -> str | None:
    """The architecture comparison section from a ``make run ARCHS=...`` run's metrics.json."""
    if not path.is_file():
        return None
    import pandas as pd  # noqa: PLC0415
    m = json.loads(path.read_text())
    csv = path.parent / "CSVs" / "training_summary.csv"
    summary = pd.read_csv(csv) if csv.is_file() else None
    return ("Architectures compared on the same demo split and seed (`make run ARCHS=...`, "
            "from random initialisation with the demo profile's settings; seconds per epoch on "
            "the machine of that run, named in the experiment log):\n\n"
            + archs_markdown(m, summary))


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
