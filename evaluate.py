"""Score trained checkpoints on labelled images: the split they were trained with, or another
hospital's collection (external validation).

SYNOPSIS
    python evaluate.py MODEL.pt [MODEL.pt ...] --data-dir DIR [--manifest M [--split test]]
                       [--class-map FOLDER=CLASS ...] [--name NAME] [--out DIR] [--profile P]
                       [--cam gradcam|gradcam++|hirescam] [--cam-layer [ARCH=]LAYER[,...]]
                       [--batch-size N] [--num-workers N] [--device D] [--n-boot N]
                       [--seed S] [--cache-dir DIR|none]

DESCRIPTION
    Runs evaluation.py, the same code as notebook 3, on checkpoints written by notebook 2 or
    train.py (an <arch>_last.pt resumable state beside its <arch>.pt is skipped, so models/*.pt
    means the best epoch of each model). Models scored together must share one class list.

    With --manifest: the rows of --split (default test) of a split manifest, paths relative to
    --data-dir, exactly as notebook 3 scores them, plus the training images each model drew
    from. Refused when the split holds any image a model was trained or validated on: the
    checkpoint records their SHA-256 digests, so the same split of a copied or re-downloaded
    dataset evaluates, and a re-split with another seed does not.

    Without --manifest: an external set. Every image under DIR's class folders, in any layout
    split_dataset.py reads (flat class folders, or images/ + masks/ [+ lesion_masks/] per
    class; masks are used where present, for localization and the shortcut audit). A folder's
    name is its label: a folder named like one of the models' classes (case, spaces, _ and -
    ignored) maps to it without a flag; --class-map FOLDER=CLASS maps any other. A folder that
    is neither is listed with its image count as skipped, never scored. Files that cannot be
    read are listed with the reason. Images byte-identical to a model's training or validation
    images (public chest X-ray collections overlap) are listed and left out of the metrics.

    Settings (Grad-CAM layers, batch size, workers) come from a profile (profiles/*.yaml, the
    ones notebook 3 reads): --profile, or by default demo-cpu for models trained on the synthetic
    demo and study otherwise; every flag given overrides it.

    Probabilities: the metrics use each model's softmax as trained; calibration is reported
    before and after the temperature stored in the checkpoint (fitted on its validation split
    when it was trained). A checkpoint without one is scored uncalibrated, and the output says
    so. Nothing is ever written into a checkpoint.

OUTPUT
    DIR/metrics.json (written atomically): with --manifest the whole of notebook 3's file;
      otherwise the external set under external.<NAME> (default NAME: the folder's name). When
      DIR/metrics.json already holds results for the same checkpoints (notebook 3's, or other
      external sets), they are kept, so one file, and one report, shows the internal test and
      the external set side by side. Internal results of other checkpoints are never mixed in:
      exit 2.
    DIR/report.html: the sections that apply, with internal test and external side by side
      (accuracy, balanced accuracy, macro AUC, per-class recall, ECE before and after T, the
      audit where masks exist), each with its interval.
    Figures: DIR/confusion_matrices/, roc/, calibration/, grad_cam/ (with --manifest), or
      DIR/external/NAME/... for an external set.

EXIT STATUS
    0  scored
    1  no image could be read (or every image was a training image)
    2  a model file that is missing or not a checkpoint, models with different class lists, a
       class map naming an unknown class or folder, a split holding training images, bad
       arguments (the message names what and what is valid)

EXAMPLES
    python evaluate.py models/*.pt --data-dir data/demo-seed42 --manifest outputs/manifest.csv
    python evaluate.py models/*.pt --data-dir data/demo-external-seed42 --out outputs \\
        --class-map COVID-19=COVID "Lung Opacity=Lung_Opacity" Pneumonia-Viral="Viral Pneumonia"
    python evaluate.py models/resnet18.pt --data-dir /data/nih-cxr14-folders \\
        --class-map "No Finding=Normal" Pneumonia="Viral Pneumonia" --out outputs/nih
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import config
import report
import utils

MODEL_SUFFIXES = (".pt", ".pth")


def class_map_arg(items: list[str] | None) -> dict[str, str]:
    """``["FOLDER=CLASS", ...]`` as a dict; ValueError for an item without ``=``."""
    out = {}
    for item in items or []:
        folder, sep, cls = item.partition("=")
        if not sep or not folder.strip() or not cls.strip():
            raise ValueError(f"--class-map {item!r}: expected FOLDER=CLASS, e.g. "
                             f"'No Finding=Normal'")
        out[folder.strip()] = cls.strip()
    return out


def parse_args(argv=None) -> argparse.Namespace:
    doc = __doc__.split("\nSYNOPSIS", 1)
    p = argparse.ArgumentParser(prog="evaluate.py", description=doc[0].strip(),
                                epilog="SYNOPSIS" + doc[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL.pt", help="checkpoints (.pt/.pth)")
    p.add_argument("--data-dir", required=True,
                   help="the dataset folder (a manifest's paths are relative to it), or the "
                        "external set's folder of class folders")
    p.add_argument("--manifest", default=None, help="split manifest CSV (split_dataset.py)")
    p.add_argument("--split", default="test", help="manifest rows to score (default test)")
    p.add_argument("--class-map", nargs="+", default=None, metavar="FOLDER=CLASS",
                   help="external set: map a class folder onto one of the models' classes")
    p.add_argument("--name", default=None, help="external set's name in metrics.json "
                                                "(default: the folder's name)")
    p.add_argument("--out", default="outputs", help="output folder (default outputs)")
    p.add_argument("--profile", default=None,
                   help="a profile name in profiles/ (demo-cpu, study) or a .yaml path (default: "
                        "demo-cpu for models trained on the synthetic demo, study otherwise)")
    config.add_flags(p, config.EvalConfig)  # --batch-size, --cam, --n-boot, --cache-dir, ...
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best found)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    bad = [x for x in a.models if Path(x).suffix.lower() not in MODEL_SUFFIXES]
    if bad:
        print(f"error: {', '.join(bad)}: expected checkpoints ending in .pt or .pth (the "
              f"images are given with --data-dir)", file=sys.stderr)
        return 2
    if (a.batch_size is not None and a.batch_size < 1) or (a.n_boot is not None and a.n_boot < 0):
        print(f"error: --batch-size must be >= 1 and --n-boot >= 0, got {a.batch_size} and "
              f"{a.n_boot}", file=sys.stderr)
        return 2
    if a.manifest and a.class_map:
        print("error: --class-map applies to an external set, not to --manifest",
              file=sys.stderr)
        return 2
    if not Path(a.data_dir).is_dir():
        print(f"error: --data-dir {a.data_dir} is not a folder", file=sys.stderr)
        return 2
    import checkpoints  # torch: only once the arguments are known to be sound
    import evaluation
    import external
    import plot_utils
    import runtime
    import tables

    device = runtime.choose_device(a.device)
    try:
        models = checkpoints.load_models(checkpoints.best_epoch_files(a.models), device)
        demo = any((m.get("dataset") or {}).get("synthetic") for _, m in models.values())
        _, cfg, _ = config.eval_settings(a.profile or (config.DEMO if demo else config.STUDY),
                                         None, None, **config.given(a, config.EvalConfig))
        if a.manifest:
            manifest = utils.read_manifest(a.manifest)
            ev = evaluation.evaluate_split(models, manifest, a.data_dir, cfg, device, a.split)
        else:
            ev = external.evaluate_external(models, a.data_dir, cfg, device,
                                            class_map_arg(a.class_map), a.name)
        out = Path(a.out)
        path, note = report.save_metrics(ev.metrics, out)
    except external.NothingToScore as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot_utils.save_figures(plot_utils.evaluation_figures(ev.figures), out)
    html = report.build_report(out)
    m = ev.metrics
    if a.manifest:
        print(tables.comparison(m["archs"], a.split).to_string())
    else:
        name, part = next(iter(m["external"].items()))
        _print_external(name, part)
        full = report.read_metrics(out)
        print(tables.internal_vs_external(full, name).to_string())
    print(f"wrote {path}" + (f" ({note})" if note else "") + f" and {html}")
    return 0


def _print_external(name: str, part: dict) -> None:
    """What happened to the external set's images, in a few lines."""
    info = part["images"]
    print(f"external set {name}: {info['found']} images found, {info['scored']} scored "
          f"({', '.join(f'{c} {n}' for c, n in info['scored_by_class'].items())}); folders: "
          + ", ".join(f"{f} -> {c}" for f, c in info["class_map"].items()))
    for folder, n in info["skipped_folders"].items():
        print(f"  skipped folder {folder}: {n} images of a class the models do not know")
    for path, reason in info["not_read"][:10]:
        print(f"  not read: {path}: {reason}")
    if len(info["not_read"]) > 10:
        print(f"  ... {len(info['not_read']) - 10} more not read (metrics.json lists them)")
    dups = info["training_duplicates"]
    if dups:
        kinds = pd.Series([d["kind"] for d in dups]).value_counts().to_dict()
        print(f"  left out: {len(dups)} copies of training images ("
              + ", ".join(f"{n} {k}" for k, n in kinds.items()) + "), e.g. "
              + "; ".join(f"{d['path']} = {d['trained_path']} ({d['kind']}, {d['score']:.3f}, "
                          f"{d['models']})" for d in dups[:3]))
    for n in info["unchecked_models"]:
        print(f"  note: {n}: " + ("its checkpoint records training images without near-duplicate "
                                  "fingerprints: only byte-identical copies could be found"
                                  if n.endswith("(exact only)") else
                                  "its checkpoint records no training images: its overlap with "
                                  "this set could not be checked"))
    for model, r in part["archs"].items():
        if r["calibration"]["temperature"] is None:
            print(f"  note: {model} has no temperature in its checkpoint: scored uncalibrated")


if __name__ == "__main__":
    sys.exit(main())
