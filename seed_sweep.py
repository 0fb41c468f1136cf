"""The demo on several seeds: does every model clear its bar whatever the seed and numeric path?

    python seed_sweep.py 101 102 103 104 105 [--no-amp] [--out outputs/seed-sweep]
                         [--doc docs/demo-data.md] [--archs vgg16 resnet18 densenet121]

For each seed it does what ``make run SEED=<seed>`` does without the notebooks' figures: draws
the demo (``demo_data.py``), splits it with the profile's sizes (``split_dataset.py``), trains
each architecture with the demo profile (``training.train_architecture``, as notebook 2 and
``train.py`` do) and scores the test split (``evaluation.evaluate_split``, as notebook 3 and
``evaluate.py`` do). ``--no-amp`` forces fp32; without it each model runs the numeric path
``runtime.amp_dtype`` picks on this machine (bf16 autocast on CPUs with native bf16, else fp32),
and the table says which ran.

Writes ``<out>/seed_sweep.csv`` (one row per seed and model: test accuracy, pointing game,
minutes of training, numeric path) and, per model, the minimum and median over the seeds
(``summary``); ``--doc FILE`` puts that table between ``<!-- seed-sweep:start -->`` and
``<!-- seed-sweep:end -->`` in FILE (the rows of earlier sweeps with another numeric path or
machine are kept). Each seed's data, manifest, models and metrics stay under ``<out>/seed-<S>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

import config
import files
import tables

START, END = "<!-- seed-sweep:start -->", "<!-- seed-sweep:end -->"
FLOORS = {"accuracy": 0.95, "pointing_game": {"vgg16": 0.3, "resnet18": 0.5, "densenet121": 0.5}}


def machine() -> str:
    """The CPU (or GPU) a sweep ran on, for its table."""
    import torch  # noqa: PLC0415
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import os  # noqa: PLC0415

    import runtime  # noqa: PLC0415
    return f"{runtime.cpu_name()} ({os.cpu_count()} cores)"


def run_seed(seed: int, out: Path, amp: bool | None = None, archs: list[str] | None = None,
             profile: str = config.DEMO, demo_args: tuple[str, ...] = (),
             **overrides) -> list[dict]:
    """One seed: demo data, split, training and test scores of each model; one row per model.
    ``overrides``: training settings over the profile's (the tests train tiny models)."""
    import checkpoints  # noqa: PLC0415  (torch: only once a sweep runs)
    import demo_data  # noqa: PLC0415
    import evaluation  # noqa: PLC0415
    import runtime  # noqa: PLC0415
    import split_dataset  # noqa: PLC0415
    import training  # noqa: PLC0415
    import utils  # noqa: PLC0415

    work = out / f"seed-{seed}"
    data, manifest_path = work / "data", work / "manifest.csv"
    if demo_data.main([str(data), "--seed", str(seed), *demo_args]) != 0:
        raise RuntimeError(f"demo_data.py failed for seed {seed}")
    if split_dataset.main([str(data), "--manifest", str(manifest_path), "--seed", str(seed),
                           *config.split_args(profile)]) != 0:
        raise RuntimeError(f"split_dataset.py failed for seed {seed}")
    manifest = utils.read_manifest(manifest_path)
    device = runtime.choose_device(None)
    settings, _ = config.train_settings(profile, data, archs, seed=seed, amp=amp, **overrides)
    rows = []
    for arch, (cfg, weights) in settings.items():
        t0 = time.perf_counter()
        _, _, run = training.train_architecture(arch, manifest, data, cfg, device, weights,
                                                work / "models", work / "outputs",
                                                config.CACHE_DIR, progress=False)
        rows.append({"seed": seed, "model": arch, "numeric path": run["numeric_path"],
                     "training minutes": (time.perf_counter() - t0) / 60})
    names, ecfg, _ = config.eval_settings(profile, data, list(settings), seed=seed)
    models = checkpoints.load_models([checkpoints.best_path(work / "models", a) for a in names],
                                     device)
    m = evaluation.evaluate_split(models, manifest, data, ecfg, device, split="test").metrics
    files.write_json_atomic(m, work / "metrics.json")
    for row in rows:
        r = m["archs"][row["model"]]
        row["test accuracy"] = r["test"]["accuracy"]
        row["pointing game"] = (r.get("localization") or {}).get("pointing_game")
    return rows


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per numeric path and model: seeds, minimum and median test accuracy and pointing game,
    median training minutes, and whether every seed cleared the demo's bars (accuracy 0.95;
    pointing game 0.3 for VGG-16, 0.5 for the others)."""
    rows = {}
    for (path, model), g in df.groupby(["numeric path", "model"], sort=False):
        pg_floor = FLOORS["pointing_game"].get(model, 0.5)
        ok = (g["test accuracy"] >= FLOORS["accuracy"]) & (g["pointing game"] >= pg_floor)
        rows[(path, model)] = {
            "seeds": ", ".join(str(s) for s in g["seed"]),
            "accuracy min / median": f"{g['test accuracy'].min():.3f} / "
                                     f"{g['test accuracy'].median():.3f}",
            "pointing game min / median": f"{g['pointing game'].min():.2f} / "
                                          f"{g['pointing game'].median():.2f}",
            "training minutes (median)": f"{g['training minutes'].median():.1f}",
            "every seed clears the bars": f"{int(ok.sum())} of {len(g)}"}
    return pd.DataFrame(rows).T.rename_axis(["numeric path", "model"])


def write_doc(doc: Path, df: pd.DataFrame, where: str) -> None:
    """The sweep's table (``summary``) and the per-seed rows into ``doc`` between the markers."""
    per_seed = df.assign(**{"test accuracy": df["test accuracy"].map("{:.3f}".format),
                            "pointing game": df["pointing game"].map(
                                lambda v: "n/a" if v is None or v != v else f"{v:.2f}"),
                            "training minutes": df["training minutes"].map("{:.1f}".format)})
    body = (f"Measured on {where} (`seed_sweep.py`, {time.strftime('%Y-%m-%d')}):\n\n"
            + tables.markdown(summary(df)) + "\nPer seed:\n\n"
            + tables.markdown(per_seed.set_index(["seed", "model"])))
    text = doc.read_text() if doc.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = f"{head}{START}\n{body}{END}{rest.split(END, 1)[1]}"
    else:
        text = f"{text.rstrip()}\n\n## Seed sweep\n\n{START}\n{body}{END}\n"
    with files.atomic_write(doc) as tmp:
        tmp.write_text(text)


def sweep(seeds: list[int], out: str | Path, amp: bool | None = None,
          archs: list[str] | None = None, doc: str | Path | None = None, say=print,
          **kwargs) -> pd.DataFrame:
    """``run_seed`` for each seed; writes ``out/seed_sweep.csv`` (rows of earlier sweeps in
    ``out`` with other seeds or another numeric path are kept) and, with ``doc``, the table."""
    out = Path(out)
    csv = out / "seed_sweep.csv"
    old = pd.read_csv(csv) if csv.is_file() else None
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        rows += run_seed(seed, out, amp, archs, **kwargs)
        say(f"seed {seed}: " + ", ".join(
            f"{r['model']} {r['test accuracy']:.3f} (pointing {r['pointing game'] or 0:.2f}, "
            f"{r['numeric path']})" for r in rows if r["seed"] == seed)
            + f"; {(time.perf_counter() - t0) / 60:.1f} min")
    df = pd.DataFrame(rows)
    if old is not None:
        key = ["seed", "model", "numeric path"]
        old = old[~old.set_index(key).index.isin(df.set_index(key).index)]
        df = pd.concat([old, df], ignore_index=True)
    files.write_csv_atomic(df, csv)
    if doc:
        write_doc(Path(doc), df, machine())
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds", nargs="+", type=int, help="seeds (choose ones the tests never use)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="--no-amp forces fp32 (default: the profile's, bf16 where native)")
    p.add_argument("--archs", nargs="+", default=None, help="default: the profile's")
    p.add_argument("--out", default="outputs/seed-sweep", help="folder (default outputs/seed-sweep)")
    p.add_argument("--doc", default=None, help="a Markdown file to put the table in, e.g. "
                                               "docs/demo-data.md")
    a = p.parse_args(argv)
    df = sweep(a.seeds, a.out, a.amp, a.archs, a.doc)
    print(summary(df).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
