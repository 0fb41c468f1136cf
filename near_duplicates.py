"""Near-duplicate radiographs: which images show the same radiograph in another form.

Public chest X-ray collections re-publish each other's images resized, re-encoded, cropped,
re-windowed, padded, exported at another bit depth or as RGB. This module finds such copies
(and exact ones) by content, in four steps:

1. **Fingerprint** (``fingerprint``): the decoded image (``xray_io.read_xray``) with constant
   borders (black or white padding) stripped, resized to ``SIDE`` x ``SIDE`` (area
   interpolation: any input size) and rank-equalised (every gray level replaced by its mean rank,
   so gamma, window, bit depth and colour-to-gray changes map to nearly the same picture), stored
   as uint8 ``(SIDE, SIDE)``: 4 KiB per image. It is what checkpoints keep of their training
   images (``checkpoints.trained_on_record``).
2. **Candidates** (``candidates``): each fingerprint's ``NEIGHBOURS`` nearest neighbours by
   ``descriptors`` (the blurred 8 x 8 layout of the whole fingerprint and of its centre; cosine
   similarity; faiss, exact below ``EXACT_SEARCH_MAX`` fingerprints, an inverted-file index
   above), kept when at least ``CANDIDATE_FLOOR``, and its ``REFRAMED_NEIGHBOURS`` nearest by
   ``reframed_layouts`` (the layout inside any frame left over, ``content_box``: a copy whose
   frame the full-size strip handled differently) and its ``FLAT_NEIGHBOURS`` nearest by
   ``flat_layouts`` (the layout inside a frame mostly at one gray level, ``flat_box``: padding
   slanted by a rotation). Sub-quadratic; no all-pairs loop.
3. **Verification** (``similarity``): the two fingerprints, their outer ``RIM`` lines replaced
   by the line inside them (``_without_rim``: edge remnants of padding and corners), aligned by
   an affine ECC fit (OpenCV; absorbs crops of a few percent, padding left over, rotation of a
   few degrees and rescaling), not taken when it needs a deformation no copy needs
   (``_plausible``: then only the images as they lie are compared), then the normalised
   cross-correlation of two band-passed versions (coarse and fine structure) in the overlap,
   saturated (clipped) areas left out. The score is their mean, in [-1, 1]; the images as
   they lie (unmoved) are compared too and the better counts, because a strong local
   contrast change (CLAHE) can pull the intensity-based fit off a copy that needs no moving.
   Most distinct pairs are settled at half size after ``QUICK_ITERATIONS`` ECC steps
   (``QUICK_FLOOR``); a fit that fails one way, a quick look that ended at ``OTHER_WAY_FLOOR``
   or more, or a pair past it still short of ``THRESHOLD``, is tried the other way round (the
   unmoved comparison made once for both ways). A pair still short of ``THRESHOLD`` whose
   ``content_box`` sizes differ in scale by more than ``REFRAME_RATIO`` is compared again after
   ``reframe`` (each cropped to its box): noise over one image's padding keeps a band there
   that its original's strip removed. A pair still short whose ``flat_box`` sizes differ that
   much is compared once more, each cropped to that box: padding added before a rotation is
   slanted by it (black corners beside it), so no line of it is flat and neither strip removes
   it, but most of each of its lines sits at one flat gray level.
4. **Decision** (``decide``): a score of at least ``THRESHOLD`` that stands ``MARGIN`` above the
   image's background (its median score with its other candidates, copies of ``CERTAIN`` and
   more left out).

Radiographs of different people look alike at low resolution, which is why step 3 compares
structure after alignment instead of thresholding a global hash. The thresholds were set on
sets of alterations studied before, and measured on ones written afterwards (docs/methods.md,
"Near-duplicates": recall per alteration and false pairs among distinct images).

``find_pairs`` and ``groups`` turn fingerprints into groups (union-find over verified pairs);
``match`` finds, for each query image, its best verified twin among reference fingerprints (a
checkpoint's training images). Nothing here reads or writes split files: ``split_dataset.py``
decides what a group means for a split.

Verification is what a large collection costs (about 0.5-1 ms a candidate pair on one core:
minutes for 112,120 images; docs/speed.md). A score depends on the two fingerprints alone, so
with a ``cache_dir`` the scores are kept (``ScoreStore``, keyed by ``fingerprint_ids``) and a
later grouping of the same images (a re-split with another seed) verifies none of them again,
and one with a few new images only the pairs that involve those.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import files
import xray_io

SIDE = 64                # fingerprint side, pixels
FINGERPRINT_VERSION = f"nd1-{SIDE}"  # changes when fingerprints change: caches, checkpoints
VERSION = f"nd12-{SIDE}"  # changes when fingerprints, candidates or scores change: split records
DESCRIPTOR_SIDE = 8      # the candidate search's descriptor: 2 x 8 x 8 = 128 numbers
DESCRIPTOR_MARGIN = 0.12  # ... its second half leaves out this much of each side
NEIGHBOURS = 8           # candidates per image
REFRAMED_NEIGHBOURS = 4  # ... and more by the reframed layout (``reframed_layouts``)
FLAT_NEIGHBOURS = 2      # ... and more by the layout inside the flat frame (``flat_layouts``)
FRAME_FLAT = 0.06        # a fingerprint line with less spread than this is frame (``content_box``)
FRAME_BLUR = 1.0         # ... measured after a blur of this many pixels (noise in a band is flat)
FRAME_SKIP = 4           # ... reached across up to this many lines that are not (a thin frame line)
CANDIDATE_FLOOR = 0.0    # descriptor cosine below which no copy was ever seen (docs/methods.md)
THRESHOLD = 0.845        # verified score at or above which two images are one radiograph
EXACT_SEARCH_MAX = 50_000
MARGIN = 0.15            # ... and stands this far above the image's background (``decide``)
QUICK_ITERATIONS = 3     # ECC steps at half size before the quick look (``_directed``)
COARSE_ITERATIONS = 30   # ECC steps at half size in all
QUICK_FLOOR = 0.70       # half-size score that ends a comparison (design copies: 0.73 and up)
OTHER_WAY_FLOOR = 0.60   # ... but one of at least this is looked at the other way round too
REFRAME_RATIO = 1.05     # content boxes whose sides differ more than this are compared reframed too
FLAT_LEVEL = 0.02        # a gray level on over this share of a fingerprint is flat (``flat_box``)
FLAT_LINE = 0.5          # ... and a border line at least this much flat is frame
CERTAIN = 0.97           # a score no two distinct images reached: not part of a background
MIN_COMPARED = 0.10      # share of the image that must be left to compare (``_compare``)
RIM = 2                  # edge lines replaced by the line inside them (``_without_rim``)
_BANDS = ((1.0, 4.0), (0.6, 2.0))  # band-pass (sigma fine, sigma coarse) at SIDE = 64


class NotFingerprintable(ValueError):
    """An image without structure to compare (e.g. one gray level): it is its own group."""


# --------------------------------------------------------------------------- fingerprints
def strip_padding(a: np.ndarray, tol: float = 0.03) -> np.ndarray:
    """``a`` without border rows and columns that are (nearly) one gray level: black or white
    padding, and the flat frame some exports add. Stops at half the side, so a mostly flat
    image keeps its middle."""
    h, w = a.shape
    span = max(float(a.max()) - float(a.min()), 1e-6) * tol

    def flat(v: np.ndarray) -> bool:
        return float(v.max()) - float(v.min()) < span

    t, b, l, r = 0, h, 0, w
    changed = True
    while changed:  # again after each pass: a padded row is only flat once the columns are gone
        before = (t, b, l, r)
        while b - t > h // 2 and flat(a[t, l:r]):
            t += 1
        while b - t > h // 2 and flat(a[b - 1, l:r]):
            b -= 1
        while r - l > w // 2 and flat(a[t:b, l]):
            l += 1
        while r - l > w // 2 and flat(a[t:b, r - 1]):
            r -= 1
        changed = (t, b, l, r) != before
    return a[t:b, l:r]


def _equalise(t: np.ndarray) -> np.ndarray:
    """Mean rank of each pixel's (12-bit) gray level, scaled to [0, 1]: equal levels get equal
    values, so clipped (saturated) areas stay flat instead of taking ranks by position."""
    q = np.round(np.clip(t, 0.0, 1.0) * 4095).astype(np.int64).ravel()
    counts = np.bincount(q, minlength=4096)
    below = np.cumsum(counts) - counts              # pixels darker than each level
    mean_rank = below + (counts - 1) / 2.0
    return (mean_rank[q] / max(q.size - 1, 1)).reshape(t.shape)


def fingerprint(image: np.ndarray) -> np.ndarray:
    """The fingerprint of one decoded radiograph (``read_xray``: float (H, W) in [0, 1]):
    uint8 ``(SIDE, SIDE)``. Raises ``NotFingerprintable`` for an image of one gray level."""
    a = np.asarray(image, np.float32)
    if a.ndim != 2 or min(a.shape) < 8:
        raise NotFingerprintable(f"expected a 2-D image of at least 8 x 8 pixels, got shape "
                                 f"{a.shape}")
    if float(a.max()) - float(a.min()) < 1e-6:
        raise NotFingerprintable("the image is one gray level: nothing to compare")
    a = strip_padding(a)
    interp = cv2.INTER_AREA if min(a.shape) >= SIDE else cv2.INTER_LINEAR
    t = cv2.resize(a, (SIDE, SIDE), interpolation=interp)
    return np.clip(_equalise(t) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def fingerprint_or_reason(path: str | os.PathLike) -> tuple[np.ndarray | None, str | None]:
    """``(fingerprint, None)`` or ``(None, reason)`` for one file: a process-pool job."""
    try:
        return fingerprint(xray_io.read_xray(path)), None
    except NotFingerprintable as e:
        return None, f"{path}: {e}"
    except (ValueError, OSError) as e:
        return None, str(e)


CACHE_NAME = f"fingerprints-{FINGERPRINT_VERSION}.npz"


def fingerprint_files(paths: list[str | os.PathLike], cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """Fingerprints of files: ``(fps uint8 (N, SIDE, SIDE), ok bool (N,), reasons)``; rows of
    files that cannot be read or fingerprinted are zeros with ``ok`` False and their reason in
    ``reasons`` (``None`` for the others). With ``cache_dir`` they are kept in
    ``cache_dir/CACHE_NAME`` keyed by each file's absolute path, size and modification time: a
    file is decoded again only when it changed."""
    paths = [Path(p) for p in paths]
    n = len(paths)
    fps = np.zeros((n, SIDE, SIDE), np.uint8)
    ok = np.zeros(n, bool)
    reasons: list[str | None] = [None] * n
    keys = [files.stamp_key(p) for p in paths]
    cache_file = None if cache_dir is None else Path(cache_dir) / CACHE_NAME
    known: dict[str, np.ndarray] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                known = dict(zip(z["keys"].tolist(), z["fps"]))
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is rebuilt
    todo = []
    for i, k in enumerate(keys):
        if k and k in known:
            fps[i], ok[i] = known[k], True
        else:
            todo.append(i)
    if todo:
        results = _map(fingerprint_or_reason, [str(paths[i]) for i in todo], workers)
        for i, (fp, reason) in zip(todo, results):
            if fp is None:
                reasons[i] = reason
            else:
                fps[i], ok[i] = fp, True
                if keys[i]:
                    known[keys[i]] = fp
        if cache_file is not None and any(ok[i] and keys[i] for i in todo):
            _write_cache(cache_file, known)
    return fps, ok, reasons


def _write_cache(cache_file: Path, known: dict[str, np.ndarray]) -> None:
    try:
        with files.atomic_write(cache_file) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=np.array(list(known), dtype=str),
                         fps=np.stack(list(known.values())))
    except OSError:
        pass  # a cache that cannot be written only costs time next run


def _map(fn, jobs: list, workers: int | None):
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) // 128 + 1))
    if workers == 1:
        return [fn(j) for j in jobs]
    with files.process_pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=32)


# --------------------------------------------------------------------------- candidates
def layouts(fps: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Each fingerprint's layout: blurred, without its outer ``margin`` of each side, shrunk to
    8 x 8, centred and scaled to unit length; float32 ``(N, 64)`` (zeros for a flat one).
    ``familiarity`` compares images by it too."""
    fps = np.asarray(fps)
    out = np.zeros((len(fps), DESCRIPTOR_SIDE ** 2), np.float32)
    for i, f in enumerate(fps):
        out[i] = _layout(f.astype(np.float32) / 255.0, margin)
    return out


def _layout(a: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``layouts`` of one fingerprint as float in [0, 1]."""
    m = round(SIDE * margin)
    t = cv2.GaussianBlur(a, (0, 0), SIDE / 32)[m:SIDE - m, m:SIDE - m]
    d = cv2.resize(t, (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), interpolation=cv2.INTER_AREA).ravel()
    d = d - d.mean()
    norm = float(np.linalg.norm(d))
    return d / norm if norm > 1e-6 else np.zeros_like(d)


def _strippable(flat: np.ndarray, room: int) -> int:
    """How many lines to strip from the edge: up to the innermost flat line that can be reached
    by skipping at most ``FRAME_SKIP`` lines that are not flat, never more than ``room``."""
    k = 0
    while k < room:
        hits = np.flatnonzero(flat[k:min(k + FRAME_SKIP + 1, room)])
        if len(hits) == 0:
            break
        k += int(hits[-1]) + 1
    return k


def content_box(a: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of what a fingerprint (float, square) shows inside any frame
    left over: border lines whose spread (standard deviation, after a blur of ``FRAME_BLUR``
    pixels) is under ``FRAME_FLAT`` are stripped, also across up to ``FRAME_SKIP`` lines that
    are not flat (a thin frame line, or one a rotation slanted), never below half the side. At
    64 px, after area averaging and the blur, a band of noise, faint marks or a slanted line is
    flat where the full-size strip (``strip_padding``) saw structure: the two strips disagree on
    such frames between an image and its copy, this one far less often. (Rank equalisation
    turns noise over a black band into strong texture; the blur makes it flat again.)"""
    return _box(_frame_blur(a))


def _box(a: np.ndarray) -> tuple[int, int, int, int]:
    """``content_box`` of a fingerprint already blurred by ``_frame_blur``."""
    return _stripped_box(a.shape[0], lambda w, axis: w.std(axis=axis) < FRAME_FLAT, a)


def _stripped_box(n: int, frame, a: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of an ``n`` x ``n`` array ``a`` after stripping border
    lines that ``frame(window, axis)`` calls frame (a boolean per line of ``window`` along
    ``axis``), rows and columns in turn until nothing changes, never below half the side."""
    t, b, l, r = 0, n, 0, n
    while True:
        before = (t, b, l, r)
        rows = frame(a[t:b, l:r], 1)
        room = (b - t) - n // 2
        dt = _strippable(rows, room)
        t, b = t + dt, b - _strippable(rows[::-1], room - dt)
        cols = frame(a[t:b, l:r], 0)
        room = (r - l) - n // 2
        dl = _strippable(cols, room)
        l, r = l + dl, r - _strippable(cols[::-1], room - dl)
        if (t, b, l, r) == before:
            return t, b, l, r


def flat_box(fp: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a fingerprint (uint8) inside border lines at least
    ``FLAT_LINE`` of whose pixels sit at a flat gray level (one on over ``FLAT_LEVEL`` of the
    fingerprint: after rank equalisation only a clipped area or padding has one), across up to
    ``FRAME_SKIP`` lines that are not, never below half the side. Padding added *before* a
    rotation is slanted by it, with black corners beside it: no line of it is flat, so neither
    the full-size strip nor ``content_box`` removes it, but most of each of its lines sits at
    the padding's or the corners' level. What the verification's third look crops to
    (``_similarity``)."""
    fp = np.asarray(fp, np.uint8)
    flat = (np.bincount(fp.ravel(), minlength=256) > FLAT_LEVEL * fp.size)[fp]
    if not flat.any():
        return _FULL_BOX
    return _stripped_box(fp.shape[0], lambda w, axis: w.mean(axis=axis) >= FLAT_LINE, flat)


def _frame_blur(a: np.ndarray) -> np.ndarray:
    """What ``content_box`` measures: ``a`` (one fingerprint or a stack, float) blurred by
    ``FRAME_BLUR`` pixels within each fingerprint."""
    a = np.asarray(a, np.float32)
    if a.ndim == 2:
        return cv2.GaussianBlur(a, (0, 0), FRAME_BLUR, borderType=cv2.BORDER_REFLECT)
    return np.stack([_frame_blur(x) for x in a]) if len(a) else a


def reframe(fp: np.ndarray) -> np.ndarray | None:
    """A fingerprint cropped to its ``content_box``, resized back to ``SIDE`` and equalised again
    (uint8, like ``fingerprint``); None when it has no frame left over. What the verification
    compares when two images' boxes differ in scale (``_similarity``)."""
    a = np.asarray(fp, np.float32) / 255.0
    return _reframed(a, content_box(a))


_FULL_BOX = (0, SIDE, 0, SIDE)


def _cropped(a: np.ndarray, box: tuple[int, int, int, int], interpolation: int) -> np.ndarray:
    """``a`` (float, ``SIDE`` square) cropped to ``box`` and resized back to ``SIDE``."""
    t, b, l, r = box
    return cv2.resize(a[t:b, l:r], (SIDE, SIDE), interpolation=interpolation)


def _reframed(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """A fingerprint (float in [0, 1]) cropped to ``box`` (its ``content_box`` or ``flat_box``),
    resized back to ``SIDE`` and equalised again, as ``reframe`` does; None for the whole."""
    if box == _FULL_BOX:
        return None
    c = _cropped(a, box, cv2.INTER_LINEAR)
    return np.clip(_equalise(c) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def reframed_layouts(fps: np.ndarray, plain: np.ndarray | None = None) -> np.ndarray:
    """Each fingerprint's layout (``layouts``) after cropping it to its ``content_box`` and
    resizing back to ``SIDE``: the second candidate search's vectors, float32 ``(N, 64)``. An
    image and its copy whose padding the full-size strip treated differently (a frame with a
    thin line or faint marks in it: the copy's fingerprint shows a band the original's does
    not) differ in ``descriptors`` but far less here. ``plain``: ``layouts(fps)`` when the
    caller has them: a fingerprint with no flat line near its edges keeps its own layout, so
    only the others are cropped (in chunks: memory stays small)."""
    fps = np.asarray(fps)
    out = (layouts(fps) if plain is None else np.array(plain, np.float32, copy=True))
    k = FRAME_SKIP + 1
    for start in range(0, len(fps), 512):
        a = fps[start:start + 512].astype(np.float32) / 255.0
        blurred = _frame_blur(a)
        rows, cols = blurred.std(axis=2), blurred.std(axis=1)
        near_edge = np.concatenate([rows[:, :k], rows[:, -k:], cols[:, :k], cols[:, -k:]], 1)
        for i in np.flatnonzero((near_edge < FRAME_FLAT).any(1)):
            box = _box(blurred[i])
            if box != _FULL_BOX:
                out[start + i] = _layout(_cropped(a[i], box, cv2.INTER_AREA))
    return out


def flat_layouts(fps: np.ndarray, plain: np.ndarray | None = None) -> np.ndarray:
    """Each fingerprint's layout (``layouts``) after cropping it to its ``flat_box`` and
    resizing back to ``SIDE``: the third candidate search's vectors, float32 ``(N, 64)``.
    Padding added before a rotation is slanted, with black corners beside it: no line of it is
    flat in spread, so ``reframed_layouts`` keeps it, and the copy's layout is the padding's as
    much as the radiograph's; most of each of its lines sits at one gray level, which
    ``flat_box`` strips. ``plain``: ``layouts(fps)`` when the caller has them (a fingerprint
    without such a frame keeps its own layout)."""
    fps = np.asarray(fps)
    out = (layouts(fps) if plain is None else np.array(plain, np.float32, copy=True))
    for i, f in enumerate(fps):
        box = flat_box(f)
        if box != _FULL_BOX:
            out[i] = _layout(_cropped(f.astype(np.float32) / 255.0, box, cv2.INTER_AREA))
    return out


def descriptors(fps: np.ndarray, plain: np.ndarray | None = None) -> np.ndarray:
    """The first candidate search's vectors: the layout of the whole fingerprint beside the
    layout without its outer ``DESCRIPTOR_MARGIN`` (where a frame left over from padding, or a
    crop, differs; the halves fail on different copies), over sqrt(2); float32 ``(N, 128)``,
    whose cosine similarity is the mean of the halves'. ``plain``: ``layouts(fps)`` when the
    caller has them."""
    plain = layouts(fps) if plain is None else plain
    return np.hstack([plain, layouts(fps, DESCRIPTOR_MARGIN)]) / np.float32(np.sqrt(2.0))


def _index(ref: np.ndarray):
    import faiss  # imported here: only the searches need it
    d = ref.shape[1]
    if len(ref) <= EXACT_SEARCH_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(len(ref)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # the same lists every run
        index.train(ref)
        index.nprobe = 16
    index.add(ref)
    return index


def candidate_pairs(query: np.ndarray, reference: np.ndarray | None = None,
                    k: int = NEIGHBOURS, floor: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs worth verifying, from ``descriptors``: ``(i, j, cosine)`` with ``i`` indexing
    ``query`` and ``j`` ``reference``; with ``reference`` None, pairs within ``query`` with
    ``i < j``, each once. Each query row keeps its ``k`` nearest neighbours whose cosine is at
    least ``floor``; sorted by ``(i, j)``."""
    floor = CANDIDATE_FLOOR if floor is None else floor
    query = np.ascontiguousarray(query, np.float32)
    within = reference is None
    ref = query if within else np.ascontiguousarray(reference, np.float32)
    if len(query) == 0 or len(ref) == 0 or k <= 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    kk = min(k + 1 if within else k, len(ref))
    sims, idx = _index(ref).search(query, kk)   # (N, kk)
    i = np.repeat(np.arange(len(query)), kk)
    j, s = idx.ravel(), sims.ravel()
    keep = (j >= 0) & (s >= floor)
    if within:
        keep &= i != j
    i, j, s = i[keep], j[keep], s[keep]
    if within:  # each pair once, its first cosine (one int64 key a pair: little memory)
        i, j = np.minimum(i, j), np.maximum(i, j)
        _, first = np.unique(i * len(ref) + j, return_index=True)
        i, j, s = i[first], j[first], s[first]
    order = np.lexsort((j, i))
    return i[order], j[order], s[order]


def search_keys(fps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the candidate searches compare (``candidates``): ``(descriptors, reframed_layouts,
    flat_layouts)`` of each fingerprint. ``match`` takes a reference set's keys made once (a
    checkpoint's training images: ``checkpoints._reference``)."""
    plain = layouts(fps)
    return descriptors(fps, plain), reframed_layouts(fps, plain), flat_layouts(fps, plain)


def candidates(query: tuple[np.ndarray, ...], reference: tuple[np.ndarray, ...] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs worth verifying, from ``search_keys``: ``(i, j)`` sorted, each once, the union of
    three searches: ``NEIGHBOURS`` nearest by ``descriptors``, ``REFRAMED_NEIGHBOURS`` nearest
    by ``reframed_layouts`` (the second finds copies whose leftover frame the first misses: 6
    of the 7 candidates the first search alone missed on the studied bench sets, for 12% more
    pairs there, 18-19% more at 112,120 fingerprints: docs/speed.md) and ``FLAT_NEIGHBOURS``
    nearest by ``flat_layouts`` (copies padded before a rotation, or rotated and cropped:
    docs/methods.md). ``reference`` None: pairs within ``query`` with ``i < j``."""
    parts = [candidate_pairs(q, None if reference is None else r, k)[:2]
             for q, r, k in zip(query, reference or (None,) * len(query),
                                (NEIGHBOURS, REFRAMED_NEIGHBOURS, FLAT_NEIGHBOURS))]
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    if len(i) == 0:
        return i, j
    m = int(j.max()) + 1
    return np.divmod(np.unique(i * m + j), m)  # each pair once, sorted by (i, j)


# --------------------------------------------------------------------------- verification
def _flat_areas(t: np.ndarray) -> np.ndarray:
    """Pixels at the darkest or brightest level when that level covers over 2% of the image
    (a window change clipped them: no structure left to compare), grown by one pixel."""
    m = np.zeros(t.shape, bool)
    for v in (t.min(), t.max()):
        e = t == v
        if e.mean() > 0.02:
            m |= e
    return cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _band(t: np.ndarray, fine: float, coarse: float) -> np.ndarray:
    return cv2.GaussianBlur(t, (0, 0), fine) - cv2.GaussianBlur(t, (0, 0), coarse)


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised cross-correlation of two float32 vectors. Written with ``np.add.reduce``
    instead of ``mean`` and ``sum`` (the same float32 sums, the mean rounded as ``mean`` rounds
    it: bit-identical, tested) because it runs several times per verified pair and those
    wrappers cost more than the arithmetic on a few thousand numbers."""
    add = np.add.reduce
    x = x - np.float32(float(add(x)) / x.size)
    y = y - np.float32(float(add(y)) / y.size)
    den = float(np.sqrt(add(x * x) * add(y * y)))
    return float(add(x * y) / den) if den > 1e-12 else 0.0


def _plausible(warp: np.ndarray, side: int = SIDE) -> bool:
    """Whether an affine fit (at ``side`` pixels) is one a copy could need: scale 0.75-1.33,
    aspect change under 20%, shift under 15% of the side (crops, padding and rotation of a few
    degrees all are). The singular values in closed form (a 2 x 2 matrix; LAPACK's call costs
    more than the rest of a quick look's bookkeeping), and from LAPACK near a bound, so that
    the answer is LAPACK's (tested)."""
    (a, b, x), (c, d, y) = np.asarray(warp, np.float64).tolist()
    det, sq = abs(a * d - b * c), a * a + b * b + c * c + d * d
    s1 = math.sqrt((sq + math.sqrt(max(sq * sq - 4 * det * det, 0.0))) / 2)
    scale, aspect = math.sqrt(det), s1 * s1 / max(det, 1e-18)  # s1 * s2 = det
    if not all(abs(v - bound) > 1e-4 for v, bound in ((scale, 0.75), (scale, 1.33),
                                                        (aspect, 1.2))):
        sv = np.linalg.svd(warp[:, :2], compute_uv=False)
        scale, aspect = float(np.sqrt(sv[0] * sv[1])), sv[0] / max(sv[1], 1e-9)
    return 0.75 <= scale <= 1.33 and aspect <= 1.2 and max(abs(x), abs(y)) <= 0.15 * side


def _ecc(A: np.ndarray, B: np.ndarray, warp: np.ndarray, iterations: int) -> np.ndarray:
    """One affine ECC fit of ``B`` onto ``A`` (both already smoothed) from ``warp``; the start
    when it does not converge."""
    try:
        return cv2.findTransformECC(A, B, warp.copy(), cv2.MOTION_AFFINE,
                                    (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
                                     iterations, 1e-4), None, 1)[1]
    except cv2.error:
        return warp


class _Level:
    """One fingerprint at one size, with what comparisons reuse: the image, its smoothed copy
    (what ECC fits), its clipped areas and its band-passed versions."""

    def __init__(self, image: np.ndarray, smooth: np.ndarray):
        self.image, self.smooth = image, smooth
        self.side = image.shape[0]
        z = self.side / 64
        self.flat = _flat_areas(image)
        self.bands = [_band(image, f * z, c * z) for f, c in _BANDS]


class _Prepared:
    """One fingerprint ready to compare, each part made when first needed: its ``half``-size
    ``_Level`` (every comparison's quick look), its ``full``-size one (only pairs that pass the
    quick look), its ``content_box`` (``frame``) and ``flat_box`` (``flat_frame``), and the
    ``_Prepared`` of the fingerprint cropped to each (itself when the box is the whole).
    ``boxes``: an int16 ``(8,)`` row the caller keeps for this image across preparations (both
    boxes, -1 until known; ``verify`` prepares an image once per chunk of pairs, about three
    times at 30,000 images, and the boxes were a sixth of the verification's time)."""

    def __init__(self, fp: np.ndarray, boxes: np.ndarray | None = None):
        self.fp = fp
        self._boxes = boxes
        self._plain = fp.astype(np.float32) / 255.0  # what the boxes are found in and crop
        full = _without_rim(self._plain)
        smooth = cv2.GaussianBlur(full, (0, 0), 1.0)
        self._sources = full, smooth
        half = SIDE // 2, SIDE // 2
        self.half = _Level(cv2.resize(full, half, interpolation=cv2.INTER_AREA),
                           cv2.resize(smooth, half, interpolation=cv2.INTER_AREA))

    @functools.cached_property
    def full(self) -> _Level:
        return _Level(*self._sources)

    @functools.cached_property
    def frame(self) -> tuple[int, int, int, int]:
        return self._known_box(0, lambda: content_box(self._plain))

    @functools.cached_property
    def flat_frame(self) -> tuple[int, int, int, int]:
        return self._known_box(4, lambda: flat_box(self.fp))

    def _known_box(self, at: int, find) -> tuple[int, int, int, int]:
        row = self._boxes
        if row is not None and row[at] >= 0:
            return tuple(int(v) for v in row[at:at + 4])
        box = find()
        if row is not None:
            row[at:at + 4] = box
        return box

    @functools.cached_property
    def reframed(self) -> _Prepared:
        return self._cropped_to(self.frame)

    @functools.cached_property
    def flat_reframed(self) -> _Prepared:
        return self._cropped_to(self.flat_frame)

    def _cropped_to(self, box: tuple[int, int, int, int]) -> _Prepared:
        r = _reframed(self._plain, box)
        return self if r is None else _Prepared(r)


def _without_rim(a: np.ndarray) -> np.ndarray:
    """``a`` (a fingerprint as float) with its outer ``RIM`` lines on each side replaced by the
    line inside them: what the fits and the band-passes see. A copy's edge holds what its
    original's does not: after padding and a rotation with black corners, a thin slanted
    remnant of the padding and of the corners that neither strip removes (the whole fingerprint
    is content); left in, those lines pull the fit and their band-pass halo (sigma 4 px) reaches
    well inside the outer tenth the score leaves out (holdout15's combination: 431 of 470 copies
    found with them, 465 without, docs/methods.md)."""
    if RIM <= 0:
        return a
    k = RIM
    inner = np.ascontiguousarray(a[k:a.shape[0] - k, k:a.shape[1] - k])
    return cv2.copyMakeBorder(inner, k, k, k, k, cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def _centre(side: int) -> np.ndarray:
    """The comparison's area before clipped areas: the image without its outer tenth (where
    crops and padding differ); read-only."""
    m = np.zeros((side, side), bool)
    k = side // 10
    m[k:side - k, k:side - k] = True
    m.flags.writeable = False
    return m


def _score(a: _Level, b_bands, m: np.ndarray) -> float:
    """The mean NCC of ``a``'s bands and ``b_bands`` (an iterable, made only when used) within
    ``m``; 0 when under ``MIN_COMPARED`` of the image is left to compare."""
    if np.count_nonzero(m) / m.size < MIN_COMPARED:
        return 0.0
    scores = [_ncc(x[m], y[m]) for x, y in zip(a.bands, b_bands)]
    return sum(scores) / len(scores)  # np.mean's value for so few (it adds them in order)


def _compare(a: _Level, b: _Level, warp: np.ndarray) -> float:
    """The mean band-pass NCC of ``a`` and ``b`` warped onto it (one size), in the overlap
    without the outer tenth and without clipped areas; 0 when under ``MIN_COMPARED`` of the
    image is left to compare (a window that clips the top tenth of a lung-masked derivative
    leaves 13%: until nd8-64 the floor was a quarter)."""
    side = a.side
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    inside = cv2.warpAffine(np.ones_like(b.image), warp, (side, side), flags=flags,
                            borderValue=0) > 0.99
    clipped = cv2.warpAffine(b.flat.astype(np.uint8), warp, (side, side),
                             flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP) > 0
    m = _centre(side) & inside & ~clipped & ~a.flat
    return _score(a, (cv2.warpAffine(y, warp, (side, side), flags=flags,
                                     borderMode=cv2.BORDER_REFLECT) for y in b.bands), m)


def _compare_unmoved(a: _Level, b: _Level) -> float:
    """``_compare(a, b, identity)`` without the warps (the same value: tested): the images
    compared as they lie."""
    return _score(a, b.bands, _centre(a.side) & ~b.flat & ~a.flat)


class _Unmoved:
    """The unmoved comparison of one pair at each size, made when first needed and once: it is
    the same either way round (``_two_way`` shares it between the two ways)."""

    def __init__(self, a: _Prepared, b: _Prepared):
        self.a, self.b = a, b

    @functools.cached_property
    def half(self) -> float:
        return _compare_unmoved(self.a.half, self.b.half)

    @functools.cached_property
    def full(self) -> float:
        return _compare_unmoved(self.a.full, self.b.full)


def _directed(a: _Prepared, b: _Prepared, unmoved: _Unmoved | None = None
              ) -> tuple[float, bool, bool]:
    """``b`` aligned onto ``a`` and compared: ``(score, plausible, full)``. Coarse to fine: an
    affine ECC fit at half size, ``QUICK_ITERATIONS`` steps first; a fit that is then
    implausible is not taken (``_unmoved_only``: the images as they lie, ``plausible`` False;
    until nd10-64 such a way scored 0, and CLAHE with small tiles drove the quick fit of some
    copies to an aspect change of 20-50% both ways round), and a pair that scores under
    ``QUICK_FLOOR`` at half size ends here (most distinct pairs: they cost a fraction of a full
    comparison; ``full`` False); the others get the rest of the fit, a fit at full size and the
    full-size score (``full`` True). Each score is the better of the fitted comparison and the
    unmoved one (``_compare_unmoved``, at the quick look only when the fitted one falls short):
    CLAHE changes contrast tile by tile, which can pull ECC's fit a few pixels off a copy that
    needs no moving (realcxr's COVID-1333 under CLAHE 2.0: 0.61 fitted at the quick look, 0.95
    unmoved), while
    between distinct images the fit is nearly always the better alignment (the 110,215 pairs of
    realcxr's distinct originals: the highest score unchanged, docs/methods.md)."""
    unmoved = _Unmoved(a, b) if unmoved is None else unmoved
    a2, b2 = a.half, b.half
    warp = _ecc(a2.smooth, b2.smooth, np.eye(2, 3, dtype=np.float32), QUICK_ITERATIONS)
    if not _plausible(warp, a2.side):
        return _unmoved_only(unmoved)
    quick = _compare(a2, b2, warp)
    if quick < QUICK_FLOOR:  # the fit may be what fails (below): the images as they lie
        quick = max(quick, unmoved.half)
    if quick < QUICK_FLOOR:
        return quick, True, False
    warp = _ecc(a2.smooth, b2.smooth, warp, COARSE_ITERATIONS - QUICK_ITERATIONS)
    warp[:, 2] *= 2  # the shift doubles on the way up
    a1, b1 = a.full, b.full
    warp = _ecc(a1.smooth, b1.smooth, warp, 10)
    if not _plausible(warp):
        return unmoved.full, False, True
    return max(_compare(a1, b1, warp), unmoved.full), True, True


def _unmoved_only(unmoved: _Unmoved) -> tuple[float, bool, bool]:
    """``_directed``'s answer when its quick fit is implausible: the images as they lie, at half
    size and, when that reaches ``QUICK_FLOOR``, at full size: ``(score, False, full)``."""
    if unmoved.half < QUICK_FLOOR:
        return unmoved.half, False, False
    return unmoved.full, False, True


def _two_way(a: _Prepared, b: _Prepared) -> float:
    """The better score of ``b`` onto ``a`` and ``a`` onto ``b`` (a way whose fit is implausible
    counts with its unmoved comparison); the second way is tried unless the first reached
    ``THRESHOLD`` or, plausibly fitted, ended at the quick look under ``OTHER_WAY_FLOOR``."""
    best, unmoved = 0.0, _Unmoved(a, b)
    for x, y in ((a, b), (b, a)):
        score, ok, full = _directed(x, y, unmoved)
        best = max(best, score)
        if score >= THRESHOLD or (ok and not full and score < OTHER_WAY_FLOOR):
            break
    return best


def _sizes_differ(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes differ in scale by more than ``REFRAME_RATIO`` in height or width."""
    return any(max(x, y) > REFRAME_RATIO * min(x, y)
               for x, y in ((a[1] - a[0], b[1] - b[0]), (a[3] - a[2], b[3] - b[2])))


def _similarity(a: _Prepared, b: _Prepared) -> float:
    best = _two_way(a, b)
    if best < THRESHOLD and _sizes_differ(a.frame, b.frame):  # a frame one's strip removed
        best = max(best, _two_way(a.reframed, b.reframed))
    if best < THRESHOLD and _sizes_differ(a.flat_frame, b.flat_frame):
        best = max(best, _two_way(a.flat_reframed, b.flat_reframed))
    return best


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How surely fingerprints ``a`` and ``b`` show one radiograph: a score in [-1, 1] (1 =
    identical after alignment); ``decide`` judges it. ``b`` is aligned onto ``a`` (affine ECC);
    when that fit is implausible, the quick look ended it at ``OTHER_WAY_FLOOR`` or more, or the
    pair passed the quick look and still fell short of ``THRESHOLD``, ``a`` onto ``b`` too (an
    alignment can fail one way and not the other: a copy cropped, padded on two sides, then
    rotated, scored 0.64-0.74 one way and 0.85-0.94 the other), and the better score counts.
    Each way, the images as they lie are compared too and the better score counts, and a way
    whose fit is implausible counts with them alone (``_directed``: a contrast change can pull
    the fit off). A pair
    still short of ``THRESHOLD`` whose content boxes differ in scale by more than
    ``REFRAME_RATIO`` (noise over one's padding kept a band its original's strip removed) is
    compared again the same way after ``reframe``, and the better score counts; then, still
    short, once more each cropped to its ``flat_box`` when those differ that much (padding
    slanted by a rotation)."""
    return _similarity(_Prepared(a), _Prepared(b))


_PAIRS: tuple[np.ndarray, np.ndarray] | None = None  # a worker's (fa, fb): ``verify``
_BOXES: tuple[np.ndarray, np.ndarray] | None = None  # ... and each image's boxes (``_Prepared``)
POOL_MIN_PAIRS = 2000  # fewer pairs are verified in this process (a pool costs ~0.1 s to start)


def _set_pairs(fa: np.ndarray | None, fb: np.ndarray | None) -> None:
    global _PAIRS, _BOXES
    if fa is None:
        _PAIRS = _BOXES = None
        return
    ba = np.full((len(fa), 8), -1, np.int16)
    _PAIRS = (fa, fb)
    _BOXES = (ba, ba if fa is fb else np.full((len(fb), 8), -1, np.int16))


def _verify_chunk(job: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Scores of one chunk of index pairs into the worker's ``_PAIRS``; each image prepared
    once per chunk, its boxes found once per worker."""
    fa, fb = _PAIRS
    ba, bb = _BOXES
    i, j = job
    pa = {x: _Prepared(fa[x], ba[x]) for x in np.unique(i)}
    pb = pa if fa is fb else {}  # pairs within one set: an image on both sides is prepared once
    for y in np.unique(j):
        if y not in pb:
            pb[y] = _Prepared(fb[y], bb[y])
    return np.array([_similarity(pa[x], pb[y]) for x, y in zip(i, j)], np.float32)


def local_order(i: np.ndarray, j: np.ndarray, within: bool) -> np.ndarray:
    """An order of the pairs ``(i, j)`` in which pairs that share images come close together:
    the images renumbered by reverse Cuthill-McKee over the graph of pairs (``within``: ``i``
    and ``j`` index one set; else two), the pairs sorted by their images' new numbers. A chunk
    of pairs in this order holds few distinct images, so ``verify`` prepares each image a few
    times instead of once for nearly every pair (in ``(i, j)`` order the ``j`` of a chunk are
    scattered over the whole set)."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415  (only large verifications need it)
    from scipy.sparse.csgraph import reverse_cuthill_mckee  # noqa: PLC0415
    a = np.asarray(i, np.int64)
    b = np.asarray(j, np.int64) + (0 if within else (int(a.max()) + 1 if len(a) else 0))
    n = int(max(a.max(), b.max())) + 1 if len(a) else 0
    g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)).tocsr()
    g = (g + g.T).tocsr()
    rank = np.empty(n, np.int64)
    rank[reverse_cuthill_mckee(g, symmetric_mode=True)] = np.arange(n)
    ra, rb = rank[a], rank[b]
    return np.lexsort((np.maximum(ra, rb), np.minimum(ra, rb)))


def verify(fa: np.ndarray, fb: np.ndarray, i: np.ndarray, j: np.ndarray,
           workers: int | None = None, cache_dir: str | os.PathLike | None = None
           ) -> np.ndarray:
    """``similarity(fa[i[n]], fb[j[n]])`` for every n, float32 ``(len(i),)``; in ``workers``
    processes when there are many pairs. Jobs are chunks of indices (the fingerprints reach
    each worker once), each image prepared once per chunk; many pairs are chunked in
    ``local_order`` (the scores do not depend on the order). ``cache_dir``: pairs scored there
    before (``ScoreStore``) are read, not verified again."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if cache_dir is None or len(i) == 0:
        return _verify(fa, fb, i, j, workers)
    if fa is fb:  # each image hashed once
        ids = fingerprint_ids(fa, np.concatenate([i, j]))
        ids_a, ids_b = ids[:len(i)], ids[len(i):]
    else:
        ids_a, ids_b = fingerprint_ids(fa, i), fingerprint_ids(fb, j)
    return ScoreStore(cache_dir).verified(fa, fb, i, j, ids_a, ids_b, workers)


def _verify(fa: np.ndarray, fb: np.ndarray, i: np.ndarray, j: np.ndarray,
            workers: int | None = None) -> np.ndarray:
    """``verify`` without a store."""
    if len(i) == 0:
        return np.zeros(0, np.float32)
    workers = max(1, workers or os.cpu_count() or 1)
    size = int(np.clip(len(i) // (4 * workers) + 1, 1, 2048))  # a few chunks per worker
    order = local_order(i, j, fa is fb) if len(i) > POOL_MIN_PAIRS else np.arange(len(i))
    jobs = [(i[order[s:s + size]], j[order[s:s + size]]) for s in range(0, len(i), size)]
    workers = min(workers, len(jobs))
    if workers == 1 or len(i) <= POOL_MIN_PAIRS:
        _set_pairs(fa, fb)
        try:
            found = [_verify_chunk(job) for job in jobs]
        finally:
            _set_pairs(None, None)
    else:
        with files.process_pool(workers, initializer=_set_pairs, initargs=(fa, fb)) as pool:
            found = pool.map(_verify_chunk, jobs, chunksize=1)
    scores = np.empty(len(i), np.float32)
    scores[order] = np.concatenate(found)  # back in the pairs' order
    return scores


# --------------------------------------------------------------------------- the score store
PAIR_STORE_MAX = 4_000_000  # pairs a store keeps (~80 MB): this run's first, then the newest


def fingerprint_ids(fps: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit content id of each fingerprint (of ``fps[rows]`` when given; blake2b of its
    bytes), uint64: what ``ScoreStore`` keys pairs by. Each distinct row is hashed once and
    nothing is copied (``fps`` may be the 459 MB of a large collection)."""
    rows = np.arange(len(fps)) if rows is None else np.asarray(rows, np.int64)
    unique, back = np.unique(rows, return_inverse=True)
    ids = np.fromiter((int.from_bytes(hashlib.blake2b(np.ascontiguousarray(fps[r]).tobytes(),
                                                      digest_size=8).digest(), "little")
                       for r in unique), np.uint64, len(unique))
    return ids[back.ravel()]


@functools.lru_cache(maxsize=1)
def _store_tag() -> str:
    """``VERSION`` and the libraries the scores and candidates come from (OpenCV's ECC, numpy,
    faiss): a store written by another version of any of them is never read."""
    import faiss  # noqa: PLC0415  (as in ``_index``)
    libs = f"{VERSION} {cv2.__version__} {np.__version__} {faiss.__version__}"
    return f"{VERSION}-{hashlib.blake2b(libs.encode(), digest_size=4).hexdigest()}"


class ScoreStore:
    """The verified scores of earlier runs, kept in a cache folder (``pair-scores-<VERSION>-
    <libraries>.npz``) and keyed by both fingerprints' ``fingerprint_ids`` (in the order
    compared: a score is ``b`` aligned onto ``a`` first), with the candidate pairs of the last
    set grouped (``find_pairs``). A score is a function of the two fingerprints alone, so a
    stored one equals what verification would give again, to the bit; a re-split of an
    unchanged collection (another seed, other val/test counts) verifies nothing, and one with
    new images verifies only the pairs that involve something new. An unreadable store counts
    as empty; one that cannot be written only costs time next run."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir) / f"pair-scores-{_store_tag()}.npz"
        self.pairs = pd.DataFrame({"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
                                   "score": np.zeros(0, np.float32)})
        self.set_key, self.ci, self.cj = "", np.zeros(0, np.int64), np.zeros(0, np.int64)
        try:
            with np.load(self.path) as z:
                self.pairs = pd.DataFrame({"a": z["a"].astype(np.uint64),
                                           "b": z["b"].astype(np.uint64),
                                           "score": z["score"].astype(np.float32)})
                self.set_key = str(z["set_key"])
                self.ci, self.cj = z["ci"].astype(np.int64), z["cj"].astype(np.int64)
        except (OSError, ValueError, KeyError):
            pass  # none yet, or damaged: rebuilt by the next save

    @staticmethod
    def key_of(ids: np.ndarray) -> str:
        """The key of one set of fingerprints, in its order: the candidates are kept under it."""
        return hashlib.blake2b(np.ascontiguousarray(ids, np.uint64).tobytes(),
                               digest_size=16).hexdigest()

    def candidates_of(self, set_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The candidate pairs stored for the set ``set_key``, or None."""
        return (self.ci, self.cj) if set_key == self.set_key else None

    def look_up(self, ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, known)``: the stored score of each pair of ids, and whether there is one."""
        q = pd.DataFrame({"a": np.asarray(ids_a, np.uint64), "b": np.asarray(ids_b, np.uint64)})
        hit = q.merge(self.pairs, on=["a", "b"], how="left")["score"].to_numpy(np.float64)
        known = ~np.isnan(hit)
        return np.where(known, hit, 0.0).astype(np.float32), known

    def verified(self, fa: np.ndarray, fb: np.ndarray, i: np.ndarray, j: np.ndarray,
                 ids_a: np.ndarray, ids_b: np.ndarray, workers: int | None = None,
                 candidates: tuple[str, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``verify``'s scores: the stored ones read, the others verified and stored (with
        ``candidates``, ``(set_key, ci, cj)``, as the set's candidate pairs)."""
        scores, known = self.look_up(ids_a, ids_b)
        todo = np.flatnonzero(~known)
        if len(todo):
            scores[todo] = _verify(fa, fb, i[todo], j[todo], workers)
        if len(todo) or (candidates is not None and candidates[0] != self.set_key):
            self.save(ids_a, ids_b, scores, candidates)
        return scores

    def save(self, ids_a: np.ndarray, ids_b: np.ndarray, scores: np.ndarray,
             candidates: tuple[str, np.ndarray, np.ndarray] | None = None) -> None:
        """This run's pairs first, then the stored ones it did not touch, up to
        ``PAIR_STORE_MAX``; written atomically."""
        now = pd.DataFrame({"a": np.asarray(ids_a, np.uint64), "b": np.asarray(ids_b, np.uint64),
                            "score": np.asarray(scores, np.float32)}).drop_duplicates(["a", "b"])
        old = self.pairs.merge(now[["a", "b"]], on=["a", "b"], how="left", indicator=True)
        old = old[old["_merge"] == "left_only"].drop(columns="_merge")
        self.pairs = pd.concat([now, old], ignore_index=True).iloc[:PAIR_STORE_MAX]
        if candidates is not None:
            self.set_key, self.ci, self.cj = candidates
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with files.atomic_write(self.path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, a=self.pairs["a"].to_numpy(np.uint64),
                             b=self.pairs["b"].to_numpy(np.uint64),
                             score=self.pairs["score"].to_numpy(np.float32),
                             set_key=np.array(self.set_key), ci=self.ci, cj=self.cj)
        except OSError:
            pass


# --------------------------------------------------------------------------- decisions
def _background(i: np.ndarray, j: np.ndarray, scores: np.ndarray, n: int, symmetric: bool
                ) -> np.ndarray:
    """For each candidate pair, the median score of the first image's *other* candidates (and,
    when ``symmetric``, the larger of that and the second image's): how alike that image is
    to radiographs it is not a copy of. Scores of at least ``CERTAIN`` are copies, not
    background, and are left out (a radiograph published five times has mostly its own copies
    among its candidates); 0 when no other candidate is left."""
    scores = np.asarray(scores, np.float32)
    ends = [i, j] if symmetric else [i]
    per_end = _median_of_others(np.concatenate(ends).astype(np.int64),
                                np.tile(scores, len(ends)), n)
    return per_end.reshape(len(ends), len(scores)).max(axis=0)


def _median_of_others(a: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """For each entry k (image ``a[k]`` in a pair scored ``scores[k]``), ``np.median`` of the
    scores under ``CERTAIN`` of that image's other entries (0 when there are none), without a
    loop: each image's scores sorted once, the median read at the middle positions, stepping
    over the entry's own score."""
    v = scores.astype(np.float64)
    below = scores < CERTAIN
    rows = np.flatnonzero(below)
    order = rows[np.lexsort((v[rows], a[rows]))]      # entries by image, then by score
    values = v[order]
    count = np.bincount(a[rows], minlength=n)
    own = np.full(len(v), -1)                          # each entry's place in ``values``
    own[order] = np.arange(len(order))
    others = count[a] - below
    k = np.flatnonzero(others > 0)
    first = (np.cumsum(count) - count)[a[k]]

    def nth(rank: np.ndarray) -> np.ndarray:          # the rank-th other score of each k
        p = first + rank
        return values[np.where(below[k] & (p >= own[k]), p + 1, p)]

    out = np.zeros(len(v))
    m = others[k]
    mid = nth((m - 1) // 2)
    upper = nth(np.minimum(m // 2, m - 1))
    out[k] = np.where(m % 2 == 0, (mid + upper) / 2, mid)
    return out


def decide(scores: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Whether candidate pairs are the same radiograph: a verified score of at least
    ``THRESHOLD`` that also stands ``MARGIN`` above the image's background (its median score
    with the images it is not a copy of). The margin keeps apart collections whose images all
    look alike (the demo's phantoms share one template), where a high score alone proves
    nothing."""
    return (scores >= THRESHOLD) & (scores - background >= MARGIN)


def find_pairs(fps: np.ndarray, ok: np.ndarray | None = None, workers: int | None = None,
               everything: bool = False, cache_dir: str | os.PathLike | None = None
               ) -> pd.DataFrame:
    """Near-duplicate pairs within one set of fingerprints: columns ``i``, ``j`` (``i < j``,
    row indices of ``fps``), ``score`` and ``background`` (see ``decide``). Rows with ``ok``
    False (unreadable or not fingerprintable) are never paired. ``everything``: every verified
    candidate pair, with a ``same`` column, instead of the matches only. ``cache_dir``: scores
    verified there before are read (``ScoreStore``), and so are the candidates when the set is
    the one last grouped there; the result is the same either way."""
    ok = np.ones(len(fps), bool) if ok is None else np.asarray(ok, bool)
    rows = np.flatnonzero(ok)
    if cache_dir is None:
        ci, cj = candidates(tuple(k[rows] for k in search_keys(fps)))  # fps is never copied
        scores = _verify(fps, fps, rows[ci], rows[cj], workers)
    else:
        store, ids = ScoreStore(cache_dir), fingerprint_ids(fps, rows)
        set_key = store.key_of(ids)
        found = store.candidates_of(set_key)
        ci, cj = found if found is not None else candidates(
            tuple(k[rows] for k in search_keys(fps)))
        scores = store.verified(fps, fps, rows[ci], rows[cj], ids[ci], ids[cj], workers,
                                (set_key, ci, cj))
    bg = _background(ci, cj, scores, len(rows), symmetric=True)
    out = pd.DataFrame({"i": rows[ci], "j": rows[cj], "score": np.round(scores.astype(float), 4),
                        "background": np.round(bg, 4), "same": decide(scores, bg)})
    return out if everything else out[out["same"]].drop(columns="same").reset_index(drop=True)


def match(query: np.ndarray, reference: np.ndarray, query_ok: np.ndarray | None = None,
          workers: int | None = None,
          reference_keys: tuple[np.ndarray, ...] | None = None,
          cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Each query fingerprint's best twin among ``reference`` fingerprints (``decide``):
    columns ``query``, ``reference`` (row indices), ``score`` and ``background``, one row per
    query that has one. ``reference_keys``: ``search_keys(reference)`` when the caller keeps
    them (a checkpoint's training images, matched batch after batch). ``cache_dir``: scores
    verified there before are read (``verify``)."""
    qok = np.ones(len(query), bool) if query_ok is None else np.asarray(query_ok, bool)
    rows = np.flatnonzero(qok)
    cols = ["query", "reference", "score", "background"]
    if len(rows) == 0 or len(reference) == 0:
        return pd.DataFrame(columns=cols)
    ref_keys = search_keys(reference) if reference_keys is None else reference_keys
    ci, cj = candidates(search_keys(query[rows]), ref_keys)
    scores = verify(query[rows], reference, ci, cj, workers, cache_dir)
    bg = _background(ci, cj, scores, len(rows), symmetric=False)
    found = pd.DataFrame({"query": rows[ci], "reference": cj,
                          "score": np.round(scores.astype(float), 4), "background": np.round(bg, 4)})
    found = found[decide(scores, bg)]
    found = found.sort_values(["query", "score", "reference"], ascending=[True, False, True])
    return found.drop_duplicates("query").reset_index(drop=True)[cols]


def groups(n: int, pairs) -> np.ndarray:
    """Connected components of ``pairs`` (``(a, b)`` index pairs) over ``n`` items
    (union-find): int64 ``(n,)``, each item labelled with the smallest index of its component."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(x) for x in range(n)], np.int64)
