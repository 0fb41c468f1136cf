"""Where and how the code runs: seeding, device choice, mixed precision, library versions, and
the helpers that let one loop run in one process or in N under ``torchrun`` (DDP).

Nothing here knows about models or data; ``training``, ``inference`` and the CLIs pass a
``torch.device`` down, the way torchvision's reference scripts keep these helpers beside their
logger.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn

from files import write_json_atomic


# --------------------------------------------------------------------------- seeding, devices
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def choose_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given ("cpu", "cuda", "cuda:1", "mps"), else cuda > mps > cpu. A CPU device
    also makes the process keep freed memory for reuse (``keep_freed_memory``)."""
    if prefer:
        device = torch.device(prefer)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cpu":
        keep_freed_memory()
    return device


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_memory_kept: bool | None = None   # keep_freed_memory's answer, once asked


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (``mallopt``: no block served by its own
    ``mmap``, no trimming of the heap), for the rest of the process. By default glibc hands
    every block over 32 MB straight back to the OS when it is freed, and the next allocation
    of that size faults it in again page by page, zeroed by the kernel: on the CPU that is
    VGG-16's 411 MB gradient of its first fully connected layer at every training step, and the
    activations of every larger batch. Measured on 2 cores (docs/speed.md): a VGG-16 training
    step at 96 px 0.67 -> 0.42 s, forward passes of batches of 32 1.3-1.4x faster, the numbers
    identical to the bit; the price is that the process's memory no longer shrinks after its
    peak. Returns whether it applied: False off glibc (macOS, Windows, musl) and when the
    environment sets glibc's own malloc variables (``MALLOC_MMAP_MAX_``, ...; e.g.
    ``MALLOC_MMAP_MAX_=65536`` keeps glibc's default). Decided once per process."""
    global _memory_kept
    if _memory_kept is None:
        _memory_kept = _apply_mallopt()
    return _memory_kept


def _apply_mallopt() -> bool:
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") is not None   # no file read, unlike libc_ver
    except (AttributeError, ValueError, OSError):
        glibc = False
    if not glibc or any(k in os.environ for k in _MALLOC_ENV) or "glibc.malloc" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    import ctypes  # noqa: PLC0415
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__)}


# --------------------------------------------------------------------------- mixed precision
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively in oneDNN (AVX512-BF16 or AMX). Without it CPU
    bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device, enabled: bool = True, cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype ``autocast`` uses, or None for fp32: on CUDA bf16 where supported,
    else fp16 (which needs a GradScaler); on a CPU with native bf16 only when ``cpu`` (training
    and validation; predictions stay fp32). Whether a model's training takes it on a CPU is
    ``numeric_path``'s decision (a timed probe), passed down as ``enabled``."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu and cpu_bf16_supported():
        return torch.bfloat16
    return None


# bf16 autocast (less precise) trains a model on a CPU only when its timed step is at least
# this much faster than fp32's. Measured on a 2-core AMD EPYC with AVX512-BF16 (2026-12-04,
# batch 16, the demo sizes): 1.45x (VGG-16), 1.52x (ResNet-18), 1.50x (DenseNet-121); the same
# CPU with oneDNN held to AVX512 without BF16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE, where the CPU
# flag still says bf16): 0.41x, 0.38x, 0.54x; held to AVX2: 0.07x-0.11x.
CPU_BF16_MIN_SPEEDUP = 1.1
NUMERIC_CACHE = Path(".cache") / "numeric_path.json"
_SPEEDUPS: dict[str, float] = {}


def _probe_key(arch: str, image_size: int, batch: int) -> str:
    return " | ".join([cpu_name(), f"torch {torch.__version__}",
                       f"oneDNN ISA {os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}",
                       f"{torch.get_num_threads()} threads", arch, f"{image_size} px",
                       f"batch {batch}"])


def _kept(cache_file) -> dict:
    """The probe results kept in ``cache_file`` ({} when it is absent or unreadable)."""
    try:
        return json.loads(Path(cache_file).read_text()) if cache_file is not None else {}
    except (OSError, ValueError):
        return {}


def _time_paths(model: nn.Module, image_size: int, batch: int) -> float:
    """fp32's step time over bf16 autocast's for a copy of ``model`` (see cpu_bf16_speedup)."""
    times = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).to("cpu", memory_format=torch.channels_last).train()
        x = torch.randn(batch, 3, image_size, image_size,
                        generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.zeros(batch, dtype=torch.long)
        for rep in range(3):
            for mode in times:
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                    loss = nn.functional.cross_entropy(probe(x).float(), y)
                loss.backward()
                probe.zero_grad(set_to_none=True)
                if rep:
                    times[mode].append(time.perf_counter() - t0)
    return round(min(times["fp32"]) / min(times["bf16"]), 3)


def cpu_bf16_speedup(model: nn.Module, arch: str, image_size: int, batch_size: int,
                     cache_file: str | os.PathLike | None = NUMERIC_CACHE) -> float:
    """How much faster a training step (forward and backward) of ``model`` runs under bf16
    autocast than in fp32 on this CPU: fp32's time over bf16's, best of two timed steps each
    after one untimed, alternated, on a copy of the model (its weights, batch-norm statistics
    and the random streams are left as they were) with a batch of ``batch_size`` (at most 64)
    random ``image_size`` images, channels-last as training runs (about six training steps).
    Kept per CPU model name, torch version, oneDNN ISA cap, thread count, architecture, size
    and batch in this process and in ``cache_file`` (a JSON map; the first measurement of a
    key stays, so processes sharing the file decide alike; an unwritable file is only read)."""
    batch = max(1, min(batch_size, 64))
    key = _probe_key(arch, image_size, batch)
    if key not in _SPEEDUPS:
        kept = _kept(cache_file)
        if key not in kept:
            measured = _time_paths(model, image_size, batch)
            kept = {key: measured, **_kept(cache_file)}   # another process's value stays
            if cache_file is not None:
                try:
                    write_json_atomic(kept, cache_file)
                except OSError:
                    pass
        _SPEEDUPS[key] = float(kept[key])
    return _SPEEDUPS[key]


def numeric_path(device: torch.device, enabled: bool = True,
                 speedup: Callable[[], float] | None = None) -> tuple[str, str]:
    """The numeric path training takes on ``device`` as ``(path, why)``: ``("bf16", ...)``,
    ``("fp16", ...)`` or ``("fp32", ...)`` with the reason in words, for the run's log and the
    checkpoint (metrics.json's ``models``). On a CPU with native bf16, ``speedup`` (a model's
    ``cpu_bf16_speedup``) decides: bf16 autocast only when it is at least
    ``CPU_BF16_MIN_SPEEDUP`` times as fast as fp32 (without ``speedup``: whenever the CPU has
    it)."""
    dtype = amp_dtype(device, enabled, cpu=True)
    if dtype is not None:
        path = "bf16" if dtype == torch.bfloat16 else "fp16"
        if device.type != "cpu":
            return path, f"autocast, {device.type}"
        if speedup is None:
            return path, "autocast, native bf16 on this CPU"
        s = speedup()
        if s < CPU_BF16_MIN_SPEEDUP:
            return "fp32", (f"native bf16 on this CPU, but a timed step ran {s:.2f}x as fast "
                            f"as fp32 (bf16 needs {CPU_BF16_MIN_SPEEDUP}x)")
        return path, f"autocast, native bf16 on this CPU, a timed step {s:.2f}x as fast as fp32"
    if not enabled:
        return "fp32", "mixed precision off (--no-amp or the profile's amp: false)"
    if device.type == "cpu":
        return "fp32", ("this CPU has no native bf16 (emulated bf16 is about 9-15x slower than "
                        "fp32)")
    return "fp32", f"no mixed precision on {device.type}"


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """Mixed precision with ``amp_dtype(device, enabled, cpu)``; a no-op context for fp32."""
    dtype = amp_dtype(device, enabled, cpu)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- distributed (DDP)
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless a process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def requested_world_size() -> int:
    """How many processes ``torchrun`` started (its ``WORLD_SIZE``; 1 without torchrun), known
    before they join."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def init_distributed(prefer_device: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` in the environment) and return this process's device: NCCL
    and ``cuda:LOCAL_RANK`` when CUDA is there (and ``prefer_device`` is not "cpu"), else gloo
    on the CPU (``keep_freed_memory`` there). Without ``WORLD_SIZE`` > 1 it only returns
    ``choose_device(prefer_device)``."""
    if requested_world_size() <= 1:
        return choose_device(prefer_device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (prefer_device or "cuda").startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        keep_freed_memory()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (builds the decoded-image cache, downloads weights); the
    others wait, then run it (reading what rank 0 wrote)."""
    rank, size = world()
    if size > 1 and rank != 0:
        dist.barrier()
    yield
    if size > 1 and rank == 0:
        dist.barrier()


def all_reduce_sums(*values: float, device: torch.device) -> list[float]:
    """Each value summed over all processes (float64; unchanged in one process)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    dev = device if device.type == "cuda" else torch.device("cpu")  # gloo: CPU tensors
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def check_replicas_agree(model: nn.Module, device: torch.device) -> None:
    """Under DDP, raise RuntimeError unless every process holds bit-identical parameters (a sum
    per tensor, gathered from all ranks): a guard against silently diverged replicas."""
    rank, size = world()
    if size == 1:
        return
    dev = device if device.type == "cuda" else torch.device("cpu")
    mine = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(dev)
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine)
    for r, theirs in enumerate(every):
        if not torch.equal(theirs, every[0]):
            diff = (theirs - every[0]).abs().max().item()
            raise RuntimeError(f"DDP replicas diverged: rank {r}'s parameters differ from rank "
                               f"0's (largest per-tensor sum difference {diff:.3g})")
