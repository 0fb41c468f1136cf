"""What the project keeps about image files between runs, and how it recognises them.

- The decoded-image cache (``decoded_images``): every image of a table decoded once
  (``xray_io.read_xray``) and resized, as a memory-mapped uint8 array on disk, keyed by
  ``decoded_key`` (the files' stamps: path, size, modification time, and the decoder's version).
  A touched file is decoded again; nothing is ever served stale.
- Content digests (``content_digests``): the SHA-256 of each file's bytes, cached by file stamp.
  They say what an image *is*, whatever its folder or date: ``split_fingerprint`` keys a
  training run on its split's content, and checkpoints record the digests of their training
  images (``checkpoints.trained_on_record``), so a copied dataset is recognised and a re-split
  is refused.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import files
import xray_io
from files import process_pool, write_json_atomic
from xray_io import load_resized_or_reason


def _file_stamp(path: Path) -> str:
    """``"<bytes>\\0<mtime_ns>"`` of a file (``files.file_stamp``), or ``"missing"``."""
    st = files.file_stamp(path)
    return "missing" if st is None else f"{st[0]}\0{st[1]}"


@functools.lru_cache(maxsize=1)
def decoder_version() -> str:
    """A hash of the code that decodes and resizes (``xray_io.DECODER``'s source) and of the
    libraries it calls (Pillow, OpenCV, pydicom): a decoded cache built by another version of
    either is never reused; an edit anywhere else (a file writer, say) keeps every cache."""
    import PIL  # noqa: PLC0415
    import cv2  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415
    try:
        pydicom = metadata.version("pydicom")
    except metadata.PackageNotFoundError:
        pydicom = "none"
    h = hashlib.blake2b(digest_size=6)
    for fn in xray_io.DECODER:
        h.update(inspect.getsource(fn).encode())
    h.update(f"{PIL.__version__} {cv2.__version__} {pydicom}".encode())
    return h.hexdigest()


def _remove_stale_temps(cache_dir: Path) -> None:
    """Delete the temporary files of cache builds whose process is gone (killed mid-build)."""
    for tmp in cache_dir.glob("decoded-*.u8.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def decoded_key(df: pd.DataFrame, data_dir: Path, size: int) -> str:
    """Content key of a decoded cache: data folder, image size, the decoder's version, and every
    listed file's path, byte size and modification time (a replaced or touched file gives a new
    key)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{data_dir.resolve()}\n{size}\n{decoder_version()}\n".encode())
    for rel in df["path"]:
        h.update(f"{rel}\0{_file_stamp(data_dir / rel)}\n".encode())
    return h.hexdigest()


DIGEST_CACHE = "digests.json"


def content_digests(df: pd.DataFrame, data_dir: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The SHA-256 of every listed file's bytes (``files.file_digests``; ``""`` for a missing
    file), in ``df`` order: what the images *are*, the same after a copy or a re-download.
    With ``cache_dir`` the digests are kept in ``cache_dir/digests.json`` and a file is read
    again only when its size or modification time changed."""
    cache = None if cache_dir is None else Path(cache_dir) / DIGEST_CACHE
    return files.file_digests([Path(data_dir) / p for p in df["path"]], cache)


def split_fingerprint(manifest: pd.DataFrame, digests: list[str]) -> str:
    """A key that changes when the split or any listed file's content changes: every row's
    path, label and split with its content digest (``content_digests``), not its file stamp,
    so a copied dataset keeps it. ``fit`` stores it in the checkpoint and resumes only on the
    same key (a re-split or redrawn data never reuses a model)."""
    h = hashlib.blake2b(digest_size=12)
    for rel, label, split, d in sorted(zip(manifest["path"], manifest["label"],
                                           manifest["split"], digests)):
        h.update(f"{rel}\0{label}\0{split}\0{d}\n".encode())
    return h.hexdigest()


def _decode_all(paths: list[str], size: int, workers: int | None, progress: bool):
    """Decode + resize every path (process pool for many files); yields (image|None, reason)."""
    jobs = [(p, size) for p in paths]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // 256 + 1))
    if workers == 1:
        it = map(load_resized_or_reason, jobs)
        yield from tqdm(it, total=len(jobs), desc="decoding", disable=not progress, leave=False)
        return
    with process_pool(workers) as pool:
        it = pool.imap(load_resized_or_reason, jobs, chunksize=64)
        yield from tqdm(it, total=len(jobs), desc="decoding", disable=not progress, leave=False)


def decoded_images(df: pd.DataFrame, data_dir: str | os.PathLike, size: int,
                   cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
    """Every image of ``df`` decoded once (``read_xray``) and resized to uint8 ``(N, S, S)``.

    Returns ``(images, ok, skipped)``: ``ok`` bool ``(N,)`` marks readable files, ``skipped``
    lists ``(path, reason)`` for the others (their rows are zeros). With ``cache_dir`` the array
    is a memory-mapped file ``decoded-<key>-<S>px.u8`` there, keyed by ``decoded_key``: later
    epochs, runs and DataLoader workers read it instead of decoding; a changed manifest, file or
    size gives a new key, and so does another version of the decoder (``decoder_version``). The
    file is written under a temporary name, synced and renamed when complete; temporary files
    of builds killed midway are deleted by the next build.
    Falls back to RAM (with a warning) when the cache folder lacks space or cannot be written.
    """
    data_dir = Path(data_dir)
    n = len(df)
    paths = [str(data_dir / p) for p in df["path"]]
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        stem = cache_dir / f"decoded-{decoded_key(df, data_dir, size)}-{size}px"
        data_file, info_file = stem.with_suffix(".u8"), stem.with_suffix(".json")
        if data_file.is_file() and info_file.is_file():
            info = json.loads(info_file.read_text())
            images = np.memmap(data_file, np.uint8, "r", shape=(n, size, size))
            return images, np.array(info["ok"], bool), [tuple(x) for x in info["skipped"]]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(cache_dir)
            free = shutil.disk_usage(cache_dir).free
            if free < n * size * size * 1.1 + 2**28:
                raise OSError(f"{free / 2**30:.1f} GiB free in {cache_dir}, need "
                              f"{n * size * size / 2**30:.1f} GiB")
            tmp = data_file.with_suffix(f".u8.tmp{os.getpid()}")
            images = np.memmap(tmp, np.uint8, "w+", shape=(n, size, size))
        except OSError as e:
            warnings.warn(f"decoded-image cache not used ({e}); decoding into memory",
                          stacklevel=2)
            cache_dir = None
    if cache_dir is None:
        images = np.zeros((n, size, size), np.uint8)
    ok, skipped = np.ones(n, bool), []
    for i, (img, reason) in enumerate(_decode_all(paths, size, workers, progress)):
        if img is None:
            ok[i] = False
            skipped.append((df["path"].iloc[i], reason))
        else:
            images[i] = img
    for rel, reason in skipped:
        warnings.warn(f"skipping unreadable image: {reason}", stacklevel=2)
    if cache_dir is not None:
        images.flush()
        del images
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, data_file)
        write_json_atomic({"ok": ok.tolist(), "skipped": skipped, "size": size, "n": n},
                          info_file)
        images = np.memmap(data_file, np.uint8, "r", shape=(n, size, size))
    return images, ok, skipped
