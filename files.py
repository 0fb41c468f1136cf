"""File helpers, written once: atomic writes (any file, CSV, JSON), content digests and file
stamps (with a digest cache), and the process pool that decodes images in parallel. No torch
and no image decoding here (``xray_io.py`` reads images), so a change to a writer never
invalidates a decoded-image cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``
    (atomic on one file system), on failure delete it. Readers never see a half-written file,
    even after a power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` as CSV (``\\n`` line ends, no index) via a temp file + rename."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        df.to_csv(f, index=False, lineterminator="\n")


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """``json.dump`` (indented, NaN written as null) via a temp file + rename."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=2) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex (what ``sha256sum`` prints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(bytes, mtime_ns)`` of a file, or None when it cannot be stat-ed: what changes when it
    is replaced or touched."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def stamp_key(path: str | os.PathLike) -> str:
    """A file's key in a cache: its absolute path, size and modification time (``file_stamp``),
    or "" when it cannot be stat-ed (never cached)."""
    st = file_stamp(path)
    return "" if st is None else f"{Path(path).resolve()}\0{st[0]}\0{st[1]}"


def _digest_or_empty(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return ""


def file_digests(paths: list[str | os.PathLike], cache_file: str | os.PathLike | None = None,
                 workers: int = 8) -> list[str]:
    """The SHA-256 of each file's bytes (hex; ``""`` for a file that is missing or cannot be
    read): what a file *is*, whatever its name, folder or modification time, so a copied,
    moved or re-downloaded dataset gives the same digests.

    ``cache_file`` (JSON, ``{absolute path: [bytes, mtime_ns, digest]}``) keeps earlier results:
    a file whose size and modification time are unchanged is not read again, and only new or
    changed files are hashed (in ``workers`` threads: hashing releases the GIL). The cache is
    rewritten atomically when something was hashed; an unreadable cache is rebuilt."""
    full = [os.path.abspath(p) for p in paths]
    cache: dict = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (ValueError, OSError):
            cache = {}
    stamps = [file_stamp(p) for p in full]
    out, todo = [""] * len(full), []
    for i, (p, st) in enumerate(zip(full, stamps)):
        hit = cache.get(p)
        if st is None:
            continue
        if hit is not None and (hit[0], hit[1]) == st:
            out[i] = hit[2]
        else:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            for i, d in zip(todo, ex.map(_digest_or_empty, [full[i] for i in todo])):
                out[i] = d
                if d:
                    cache[full[i]] = [*stamps[i], d]
        if cache_file is not None:
            try:
                write_json_atomic(cache, cache_file)
            except OSError:  # a read-only cache folder only costs the next run time
                pass
    return out


def process_pool(workers: int, initializer=None, initargs: tuple = ()):
    """A process pool for decoding. Linux forks (like PyTorch's DataLoader workers), so scripts
    need no ``if __name__ == "__main__"`` guard and ``initargs`` reach the workers without
    being copied; elsewhere it spawns."""
    import multiprocessing
    import sys
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer, initargs)
