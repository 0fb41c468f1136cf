"""Throughput benchmark: the study's data/training loop against this project's, on one machine.

    python benchmark.py [--images N] [--size 224] [--archs vgg16 resnet18 densenet121]
                        [--device cuda|cpu] [--out outputs] [--predict]

On synthetic data shaped like the real database (299x299 8-bit grayscale PNGs from
``demo_data.py``, trained at ``--size`` px) it measures images per second for

- the baseline loader: what the study did every epoch (PIL decode -> RGB -> Resize -> ToTensor ->
  Normalize, 2 DataLoader workers);
- our loader once cached: decoded uint8 images memory-mapped from disk (``image_cache.decoded_images``),
  batched augmentation + normalisation on the device (``utils.prepare_batch``); the one-off cache
  build is timed separately;
- per architecture, a full training step three ways: the baseline (baseline loader, fp32, plain
  Adam), ours (``training.train_epoch``: our loader, autocast + channels-last on CUDA, fused Adam),
  and a bare model loop over pre-made device tensors with our settings (the ceiling: our step /
  bare step shows what the pipeline adds);

plus peak memory, and the achieved FLOP rate (FLOPs per training image from
``torch.utils.flop_counter``) against a matrix-multiply peak measured in the same run. Prints the
ratios and writes a JSON report. Defaults are small on a CPU and full size (20,685 images, one
full epoch of ours per architecture) on a GPU.

``--near-duplicates`` measures the near-duplicate finder instead (``near_duplicate_bench.speed``).
``--predict`` measures ``predict.py`` instead: images per second from PNG files to
probabilities (decoding included), without CAM and with Grad-CAM, against a bare no-grad forward
loop of the same model over pre-made tensors at the same batch size, and ``evaluate.py``'s
inference (``evaluation.predictions_of``, decoding included, no cache) on the same files
(``outputs/benchmark_predict.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

import checkpoints
import demo_data
import networks
import runtime
import training
import files
import utils


class StudyDataset(Dataset):
    """The study's per-epoch pipeline (ImageFolder-style), kept only as the baseline."""

    def __init__(self, paths: list[str], labels: list[int], size: int):
        self.paths, self.labels = paths, labels
        self.tf = T.Compose([T.Resize((size, size)), T.ToTensor(),
                             T.Normalize(utils.IMAGENET_MEAN, utils.IMAGENET_STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB")), self.labels[i]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device) -> dict:
    """Best-of-5 dense matrix multiply rate: bf16 8192^2 on CUDA, fp32 2048^2 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "tflops": 2 * n ** 3 / best / 1e12}


def train_flops_per_image(arch: str, size: int) -> float:
    """FLOPs of one forward + backward pass of one image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = networks.build_model(arch, 4, weights=None)
    x = torch.randn(2, 3, size, size)  # two: batch norm needs more than one value per channel
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return float(fc.get_total_flops()) / 2


def loader_rate(loader, device, consume, max_batches: int | None = None) -> tuple[float, int]:
    """Images per second for one pass of ``loader``; ``consume(batch)`` does the device work."""
    n, t = 0, time.perf_counter()
    for k, batch in enumerate(loader):
        consume(batch)
        n += len(batch[1])
        if max_batches and k + 1 >= max_batches:
            break
    _sync(device)
    return n / (time.perf_counter() - t), n


def bare_rate(model, opt, device, batch, size, steps, amp, cl) -> float:
    """Images per second of forward/backward/step on pre-made device tensors."""
    x = torch.randn(batch, 3, size, size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,), device=device)
    model.train()

    def step():
        with runtime.autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t)


def predict_benchmark(arch: str, size: int, n_images: int, batch: int, device: torch.device,
                      work: Path) -> dict:
    """``predict.py`` on ``n_images`` synthetic 299 px PNGs (decoding included) against a bare
    no-grad forward loop of the same model over pre-made device tensors at the same batch
    size; without CAM and with Grad-CAM (whose backward pass the bare loop does not do)."""
    import predict  # noqa: PLC0415  (only this mode needs it)
    data = work / "predict_data"
    if not (data / demo_data.MARKER_FILE).is_file():
        per = {c: n_images // 4 + (i < n_images % 4) for i, c in enumerate(demo_data.CLASSES)}
        demo_data.generate(data, counts=per, seed=0, verbose=False)
    files = sorted(str(f) for f in data.glob("*/images/*.png"))[:n_images]
    torch.manual_seed(0)
    ckpt = work / f"{arch}.pt"
    checkpoints.save_checkpoint(ckpt, networks.build_model(arch, 4, weights=None), arch=arch,
                                class_names=list(demo_data.CLASSES), image_size=size)
    models = checkpoints.load_models([str(ckpt)], device)
    model = models[arch][0]
    x = utils.normalize(torch.rand(batch, 1, size, size, device=device))
    steps = -(-len(files) // batch)

    def bare():
        with torch.no_grad(), runtime.autocast(device):
            for _ in range(steps):
                model(x)
        _sync(device)

    bare()  # warm-up
    t = time.perf_counter()
    bare()
    out = {"arch": arch, "size": size, "images": len(files), "batch_size": batch,
           "bare_img_s": steps * batch / (time.perf_counter() - t)}
    table = predict.collect_inputs(files)
    for cam in ("none", "gradcam"):
        t = time.perf_counter()
        res = predict.predict_files(models, table, device, work / f"pred_{cam}", cam,
                                    batch_size=batch, progress=False)
        _sync(device)
        out[f"predict_{cam}_img_s"] = sum(r.status == "ok" for r in res) / (time.perf_counter() - t)
    # evaluate.py's inference: the same files, decoded (no cache) and predicted in batches
    import evaluation  # noqa: PLC0415
    rows = pd.DataFrame({"path": [str(Path(f).relative_to(data)) for f in files],
                         "label": [Path(f).parent.parent.name for f in files]})
    cfg = evaluation.EvalConfig(batch_size=batch, num_workers=0, cache_dir=None)
    t = time.perf_counter()
    _, _, table = evaluation.predictions_of(model, rows, data, list(demo_data.CLASSES), size,
                                            cfg, device)
    _sync(device)
    out["evaluate_img_s"] = len(table) / (time.perf_counter() - t)
    out["ratio_none_vs_bare"] = out["predict_none_img_s"] / out["bare_img_s"]
    out["ratio_gradcam_vs_bare"] = out["predict_gradcam_img_s"] / out["bare_img_s"]
    out["ratio_evaluate_vs_predict"] = out["evaluate_img_s"] / out["predict_none_img_s"]
    return out


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--images", type=int, default=None,
                   help="synthetic images (default: 20,685 on a GPU, 512 on a CPU)")
    p.add_argument("--unique", type=int, default=None,
                   help="distinct images to generate; the manifest cycles through them up to "
                        "--images rows (every row is still decoded). Default: 2,048 on a GPU")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--archs", nargs="+", default=["vgg16", "resnet18", "densenet121"])
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 GPU, 16 CPU")
    p.add_argument("--train-batches", type=int, default=None,
                   help="batches per training-step measurement (default: a full epoch of ours "
                        "on a GPU, 3 on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="ours (default: min(8, cores))")
    p.add_argument("--work-dir", default=None, help="where the synthetic data goes (temp)")
    p.add_argument("--out", default="outputs",
                   help="folder for benchmark.json (benchmark_predict.json with --predict, "
                        "benchmark_near_duplicates.json with --near-duplicates); default outputs")
    p.add_argument("--predict", action="store_true",
                   help="only predict.py and evaluate.py's inference against a bare forward "
                        "loop (default: 256 images, batch 32 on a CPU; writes "
                        "outputs/benchmark_predict.json)")
    p.add_argument("--near-duplicates", nargs="?", const="", default=None, metavar="DIR",
                   help="only the near-duplicate finder: fingerprints of --images demo PNGs "
                        "(default 21,165, the real database's size) cold and warm, and grouping "
                        "112,120 fingerprints (NIH ChestX-ray14's size) bent from DIR's "
                        "radiographs (e.g. ../shared/realcxr; default: from the demo's phantoms, "
                        "the slow case); writes outputs/benchmark_near_duplicates.json "
                        "(near_duplicate_bench.speed)")
    return p.parse_args(argv)


def predict_benches(a: argparse.Namespace, device: torch.device) -> int:
    """``--predict``: ``predict_benchmark`` per architecture, one JSON list."""
    gpu = device.type == "cuda"
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="cxr-bench-"))
    rows = []
    for arch in a.archs:
        r = predict_benchmark(arch, a.size, a.images or (2048 if gpu else 256),
                              a.batch_size or (128 if gpu else 32), device, work)
        r["device"] = torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)"
        print(f"{arch}: bare {r['bare_img_s']:.1f} img/s; predict.py without CAM "
              f"{r['predict_none_img_s']:.1f} ({r['ratio_none_vs_bare']:.2f}x), with Grad-CAM "
              f"{r['predict_gradcam_img_s']:.1f} ({r['ratio_gradcam_vs_bare']:.2f}x); "
              f"evaluate.py's inference {r['evaluate_img_s']:.1f} "
              f"({r['ratio_evaluate_vs_predict']:.2f}x predict.py)", flush=True)
        rows.append(r)
    out = Path(a.out) / "benchmark_predict.json"
    files.write_json_atomic(rows, out)
    print("wrote", out)
    return 0


def synthetic_table(work: Path, n_images: int, n_unique: int) -> tuple[Path, pd.DataFrame]:
    """``n_unique`` demo images under ``work/data`` and a table of ``n_images`` rows cycling
    through them (path, label, split)."""
    data = work / "data"
    if not (data / demo_data.MARKER_FILE).is_file():
        per = {c: n_unique // 4 + (i < n_unique % 4) for i, c in enumerate(demo_data.CLASSES)}
        demo_data.generate(data, counts=per, seed=0, verbose=True)
    rows = [(f"{c}/images/{p.name}", c) for c in demo_data.CLASSES
            for p in sorted((data / c / "images").iterdir())]
    rows = [rows[i % len(rows)] for i in range(n_images)]
    return data, pd.DataFrame(rows, columns=["path", "label"]).assign(split="train")


def loader_bench(df: pd.DataFrame, data: Path, work: Path, size: int, bs: int, workers: int,
                 device: torch.device) -> tuple[dict, DataLoader, utils.XrayDataset, DataLoader]:
    """The study's loader against ours (cache build timed apart; ours with and without batched
    augmentation). Returns the report part and the loaders (and our dataset) for the steps."""
    gpu = device.type == "cuda"
    names = utils.class_names_from(df)
    labels = [names.index(c) for c in df["label"]]
    base_ds = StudyDataset([str(data / p) for p in df["path"]], labels, size)
    base_loader = DataLoader(base_ds, batch_size=bs, shuffle=True, num_workers=2,
                             generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    ours_ds = utils.XrayDataset(df, data, names, size, preload=True, cache_dir=work / "cache",
                                workers=os.cpu_count())
    build = time.perf_counter() - t
    ours_loader = DataLoader(ours_ds, batch_size=bs, shuffle=True, num_workers=workers,
                             pin_memory=gpu, collate_fn=utils.collate_skip_none,
                             persistent_workers=workers > 0, drop_last=True,
                             prefetch_factor=4 if workers else None,
                             generator=torch.Generator().manual_seed(0))
    max_b = 30 if gpu else max(1, 256 // bs)   # loader passes: 3,840 images on a GPU
    base_rate, _ = loader_rate(base_loader, device, lambda b: b[0].to(device), max_b)
    loader_rate(ours_loader, device, lambda b: None, 2)   # start workers, page the cache in
    # Like for like: the study's loader does no augmentation, so "ours" is the cached read +
    # normalisation on the device; the augmented rate is reported beside it.
    ours_rate, _ = loader_rate(
        ours_loader, device, lambda b: utils.prepare_batch(b[0], device, False, gpu), max_b)
    aug_rate, _ = loader_rate(
        ours_loader, device, lambda b: utils.prepare_batch(b[0], device, True, gpu), max_b)
    part = {"cache_build_seconds": build, "cache_bytes": int(np.prod(ours_ds.images.shape)),
            "loader": {"baseline_images_per_s": base_rate, "ours_images_per_s": ours_rate,
                       "ratio": ours_rate / base_rate, "ours_augmented_images_per_s": aug_rate}}
    print(f"loader: baseline {base_rate:.0f} img/s, ours (cached) {ours_rate:.0f} img/s: "
          f"{ours_rate / base_rate:.1f}x; with batched augmentation on {device.type} "
          f"{aug_rate:.0f} img/s (cache built once in {build:.1f} s)", flush=True)
    return part, base_loader, ours_ds, ours_loader


def training_bench(arch: str, size: int, bs: int, train_batches: int | None, device: torch.device,
                   base_loader: DataLoader, ours_ds, ours_loader: DataLoader, peak: dict) -> dict:
    """One architecture's training step three ways: the study's (its loader, fp32, for-each
    Adam), ours (``training.train_epoch`` over our cached loader) and a bare loop over pre-made
    device tensors with our settings; FLOP rate against the matmul peak."""
    gpu = device.type == "cuda"
    amp = cl = gpu
    r = {}
    torch.manual_seed(0)
    model = networks.build_model(arch, 4, weights=None).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def base_step(b):
        loss = F.cross_entropy(model(b[0].to(device)), b[1].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    base_step(next(iter(base_loader)))
    r["baseline_images_per_s"], _ = loader_rate(base_loader, device, base_step,
                                                train_batches or max(1, 2048 // bs))
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = networks.build_model(arch, 4, weights=None).to(
        device, memory_format=torch.channels_last if cl else torch.preserve_format)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    sub = ours_loader
    if train_batches:
        sub = DataLoader(torch.utils.data.Subset(ours_ds, range(train_batches * bs)),
                         batch_size=bs, num_workers=0, collate_fn=utils.collate_skip_none)
    warm = DataLoader(torch.utils.data.Subset(ours_ds, range(2 * bs)), batch_size=bs)
    training.train_epoch(model, warm, opt, scaler, device, amp, cl)   # cudnn autotune, caches
    _sync(device)
    t = time.perf_counter()
    res = training.train_epoch(model, sub, opt, scaler, device, amp, cl)
    _sync(device)
    secs = time.perf_counter() - t
    r["ours_images_per_s"] = res["seen"] / secs
    if not train_batches:
        r["ours_epoch_seconds"], r["ours_epoch_images"] = secs, res["seen"]
    r["bare_images_per_s"] = bare_rate(model, opt, device, bs, size, train_batches or 30, amp, cl)
    if gpu:
        r["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    r["train_flops_per_image"] = flops = train_flops_per_image(arch, size)
    r["achieved_tflops"] = flops * r["ours_images_per_s"] / 1e12
    r["fraction_of_matmul_peak"] = r["achieved_tflops"] / peak["tflops"]
    r["ours_vs_baseline"] = r["ours_images_per_s"] / r["baseline_images_per_s"]
    r["ours_vs_bare"] = r["ours_images_per_s"] / r["bare_images_per_s"]
    print(f"{arch}: baseline {r['baseline_images_per_s']:.1f} img/s, ours "
          f"{r['ours_images_per_s']:.1f} ({r['ours_vs_baseline']:.2f}x baseline, "
          f"{r['ours_vs_bare']:.2f}x bare loop {r['bare_images_per_s']:.1f}), "
          f"{r['achieved_tflops']:.2f} TFLOP/s = {100 * r['fraction_of_matmul_peak']:.0f}% "
          f"of the matmul peak" + (f", epoch {r['ours_epoch_seconds']:.1f} s"
                                   if "ours_epoch_seconds" in r else ""), flush=True)
    return r


def main(argv=None) -> int:
    a = _parse(argv)
    device = runtime.choose_device(a.device)
    if a.predict:
        return predict_benches(a, device)
    if a.near_duplicates is not None:
        import near_duplicate_bench
        like = Path(a.near_duplicates) if a.near_duplicates else None
        res = near_duplicate_bench.speed(a.images or 21165, 112_120, like=like)
        print(res)
        files.write_json_atomic(res, Path(a.out) / "benchmark_near_duplicates.json")
        return 0
    gpu = device.type == "cuda"
    n_images = a.images or (20685 if gpu else 512)
    bs = a.batch_size or (128 if gpu else 16)
    # ours: batched reads from the page cache are cheap, so on a CPU the main process does them
    # (workers would only add inter-process copies); a GPU host uses workers to overlap.
    workers = a.workers if a.workers is not None else (min(8, os.cpu_count() or 1) if gpu else 0)
    if gpu:
        torch.backends.cudnn.benchmark = True
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="cxr-bench-"))
    n_unique = min(n_images, a.unique or (2048 if gpu else n_images))
    report = {"machine": {"device": torch.cuda.get_device_name() if gpu else platform.processor()
                          or platform.machine(), "cpu_cores": os.cpu_count(),
                          "torch": str(torch.__version__), "python": platform.python_version()},
              "images": n_images, "size": a.size, "batch_size": bs, "workers_ours": workers,
              "unique_images": n_unique}
    print(f"benchmark on {report['machine']['device']} ({device}), {n_images} images, "
          f"{a.size} px, batch {bs}", flush=True)
    data, df = synthetic_table(work, n_images, n_unique)
    report["matmul_peak"] = peak = matmul_peak(device)
    print(f"matmul peak: {peak['tflops']:.2f} TFLOP/s ({peak['dtype']})", flush=True)
    part, base_loader, ours_ds, ours_loader = loader_bench(df, data, work, a.size, bs, workers,
                                                           device)
    report.update(part)
    train_batches = a.train_batches or (None if gpu else 3)
    report["training"] = {arch: training_bench(arch, a.size, bs, train_batches, device,
                                               base_loader, ours_ds, ours_loader, peak)
                          for arch in a.archs}
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if gpu and all("ours_epoch_seconds" in r for r in report["training"].values()):
        full = sum(r["ours_epoch_seconds"] / r["ours_epoch_images"] * 20685
                   for r in report["training"].values())
        report["three_models_25_epochs_minutes_estimate"] = full * 25 / 60
    out = Path(a.out) / "benchmark.json"
    files.write_json_atomic(report, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
