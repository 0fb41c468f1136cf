"""Regenerate the README's results section and assets/ from outputs/metrics.json.

    python update_readme.py [--metrics outputs/metrics.json] [--readme README.md] [--assets assets]

Replaces the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` and copies the
Grad-CAM comparison and the test confusion matrices into assets/. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _ci(r: dict, key: str) -> str:
    lo, hi = r[key + "_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def results_markdown(m: dict, assets: dict[str, str]) -> str:
    """The results section for metrics.json content ``m`` (``assets``: caption -> path)."""
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
        lines.append(f"![{caption}]({path})\n")
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metrics", default="outputs/metrics.json")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--assets", default="assets")
    a = p.parse_args(argv)
    metrics_path = Path(a.metrics)
    if not metrics_path.is_file():
        print(f"error: {metrics_path} not found; run 'make run' first", file=sys.stderr)
        return 2
    m = json.loads(metrics_path.read_text())
    out_dir, assets_dir = metrics_path.parent, Path(a.assets)
    assets_dir.mkdir(parents=True, exist_ok=True)
    copied = {}
    wanted = [("Grad-CAM comparison", out_dir / "grad_cam" / "comparison.png")]
    wanted += [(f"{arch} test confusion matrix",
                out_dir / "confusion_matrices" / f"{arch}_test.png") for arch in m["archs"]]
    for caption, src in wanted:
        if src.is_file():
            dst = assets_dir / src.name.replace("comparison", "grad_cam_comparison")
            shutil.copyfile(src, dst)
            copied[caption] = dst.as_posix()
    readme = Path(a.readme).read_text()
    if START not in readme or END not in readme:
        print(f"error: {a.readme} lacks the {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    Path(a.readme).write_text(f"{head}{START}\n{results_markdown(m, copied)}\n{END}{tail}")
    print(f"updated {a.readme} and {len(copied)} images in {assets_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
