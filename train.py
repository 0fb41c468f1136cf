"""Train one or more architectures from a split manifest: notebook 2's training, from the shell.

One device:            python train.py --data-dir D --manifest M --archs resnet18 densenet121
N GPUs or N CPU procs: torchrun --nproc_per_node=N train.py --data-dir D --manifest M ...
Several nodes:         torchrun --nnodes=2 --node_rank=K --nproc_per_node=8 \\
                           --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py ...

It calls the same ``training.train_architecture`` (and so the same ``training.fit``) as notebook
2 and writes what the notebook writes: ``<models-dir>/<arch>.pt`` (the best epoch, loadable by
notebook 3 and predict.py whatever the number of processes), ``<arch>_last.pt`` (resumable: rerun
the same command after a kill), ``<out>/CSVs/<arch>.csv`` (one row per epoch),
``<out>/CSVs/training_summary.csv`` and ``<out>/summary_plots/<arch>.png``.

Under torchrun ``--batch-size`` is the GLOBAL batch: each of the N processes loads batch/N
images of every step, and the learning rate is the one given (not scaled by N). Only rank 0
writes files. CUDA processes use NCCL, CPU processes gloo.

Settings come from a profile (``--profile``, ``profiles/*.yaml``: by default ``demo-cpu`` on the
synthetic demo and ``study`` on any other data, the same files notebook 2 and the Makefile read);
every flag given overrides it. The training flags are made from ``config.TrainConfig``'s fields
(their help is the field's; ``python train.py --help`` lists them). Per-architecture values:
``--image-size vgg16=96,resnet18=128`` (also --epochs, --patience, --min-delta, --lr,
--weight-decay, --schedule, --warmup-epochs, --augment); a plain value applies to every
architecture. Exit status: 0 trained, 2 bad arguments or input (the message says which).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import config
import networks
import runtime
import training
import utils


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fine-tune VGG-16 / ResNet-18 / DenseNet-121 on a split manifest "
                    "(one device, or N processes under torchrun). Settings come from a profile "
                    "(profiles/*.yaml); every flag given overrides it.")
    p.add_argument("--data-dir", required=True,
                   help="the dataset folder the manifest's paths are relative to")
    p.add_argument("--manifest", required=True, help="split manifest CSV from split_dataset.py")
    p.add_argument("--profile", default=None,
                   help="a profile name in profiles/ (demo-cpu, study) or a .yaml path "
                        "(default: demo-cpu on the synthetic demo, study otherwise)")
    p.add_argument("--archs", nargs="+", default=None,
                   help=f"architectures: any torchvision classifier, e.g. {', '.join(networks.ARCHS)} "
                        f"(default: the profile's)")
    config.add_flags(p, config.TrainConfig)  # --image-size, --epochs, --no-amp, ...
    p.add_argument("--out", "--out-dir", dest="out", default="outputs",
                   help="output folder for CSVs/ and summary_plots/ (default outputs)")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--cache-dir", default=None,
                   help=f'decoded-image cache, built once by rank 0 (default {config.CACHE_DIR}; '
                        f'"none" to decode into RAM)')
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda > mps > cpu)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start afresh even if a matching <arch>_last.pt exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def settings_for(a: argparse.Namespace) -> tuple[dict, dict]:
    """``config.train_settings`` from the profile and the flags given."""
    for arch in a.archs or []:
        networks.family(arch)  # ValueError naming the close matches
    return config.train_settings(a.profile, a.data_dir, a.archs,
                                 **config.given(a, config.TrainConfig))


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        manifest = utils.read_manifest(a.manifest)
        if not Path(a.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {a.data_dir} is not a folder")
        settings, prof = settings_for(a)  # a per-architecture flag that leaves one out fails here
        # torchrun says how many processes there will be; checked before joining them
        world_size = runtime.requested_world_size()
        batches = {cfg.batch_size for cfg, _ in settings.values()}
        if any(b % world_size for b in batches):
            raise ValueError(f"--batch-size {sorted(batches)} is the global batch; it must be a "
                             f"multiple of the {world_size} processes")
        device = runtime.init_distributed(a.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    rank, world_size = runtime.world()
    cache = config.cache_folder(a.cache_dir)
    if rank == 0:
        info = utils.dataset_info(a.data_dir)
        print(f"train.py: {world_size} process(es) on {device}; global batch "
              f"{'/'.join(map(str, sorted(batches)))} ({'/'.join(str(b // world_size) for b in sorted(batches))}"
              f" per process); dataset {info['name']}"
              + (" (synthetic demo)" if info["synthetic"] and "synthetic" not in info["name"]
                 else "") + f"; profile {prof['name']}")
    rows = []
    for arch, (cfg, weights) in settings.items():
        _, history, row = training.train_architecture(
            arch, manifest, a.data_dir, cfg, device, weights, a.models_dir, a.out, cache,
            resume=a.resume, progress=not a.quiet)
        rows.append(row)
        if rank == 0:
            import plot_utils  # here: only the first process plots (matplotlib's import: 0.4 s)
            fig = plot_utils.training_curves(
                history, row["best_epoch"], title=f"{arch} ({row['weights']}, {row['image_size']} px)")
            plot_utils.save_figure(fig, Path(a.out) / "summary_plots" / f"{arch}.png")
            print(f"{arch}: best epoch {row['best_epoch']} of {row['epochs_run']}, val loss "
                  f"{row['val_loss']:.4f}, val acc {row['val_acc']:.3f} -> "
                  f"{Path(a.models_dir) / (arch + '.pt')}")
    if rank == 0:
        training.write_summary(rows, Path(a.out) / "CSVs" / "training_summary.csv")
    runtime.close_distributed()
    return 0

if __name__ == "__main__":
    sys.exit(main())
