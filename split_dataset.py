"""Seeded, stratified, non-destructive train/val/test split of a chest X-ray dataset folder.

Reads a dataset folder (never writes, moves, renames or deletes anything inside it), decodes every
image to validate it, groups the images that show the same radiograph (identical pixels, or a
resized, re-encoded, cropped, padded or re-windowed copy: ``near_duplicates.py``) and, with
``--groups``, the images of one patient, so a group never straddles splits, and writes a manifest
CSV plus a rejects report and a duplicates list beside it.

Supported layouts: ``dataset_folder.py`` (the COVID-19 Radiography Database as published over
time, and any folder of class subfolders; metadata, README and OS junk ignored).

Manifest columns: ``path,label,split,group`` (paths relative to DATA_DIR, POSIX separators;
``group``: the group's first path; equal for images that show the same radiograph or, with
``--groups``, the same patient), then ``mask_path`` / ``lesion_mask_path`` where such
masks exist and ``source`` (the URL column of Kaggle's ``<class>.metadata.xlsx``) where those
files are present. Rows are sorted, so a rerun with the same data and seed is byte-identical.
Beside the manifest: ``<stem>.rejects.csv`` (unreadable files and why), ``<stem>.duplicates.csv``
(every duplicate pair found: ``group,path,matched_path,score,kind`` with kind ``exact`` or
``near`` and the near-duplicate score) and ``<stem>.json`` (the
split's parameters and a fingerprint of the dataset's file listing); a rerun whose fingerprint
and parameters match reuses the manifest and says so (``--force`` re-splits).

CLI::

    python split_dataset.py DATA_DIR --manifest MANIFEST.csv [--val N|F] [--test N|F] [--seed S]
                            [--groups GROUPS.csv] [--near-duplicates on|off]
                            [--cache-dir DIR|none]

``--val/--test`` are images per class (an integer, default 60 as in the study) or a fraction of
each class (a number below 1, e.g. 0.1). ``--groups`` merges groups by a CSV with columns
``path,group`` (path relative to DATA_DIR; group e.g. NIH ChestX-ray14's Patient ID or
CheXpert's patient folder), so one patient never straddles splits either.
``--near-duplicates off`` groups identical images only (the behaviour before near-duplicates).
``--cache-dir`` (default ``.cache/decoded``, the decoded-image cache's folder; ``none``: keep
nothing) keeps what was decoded (``validate_images``) and the near-duplicate scores verified
(``near_duplicates.ScoreStore``): a re-split of the same images (another seed, other counts)
decodes and verifies none of them again, and one with new images only what involves them; the
manifest is the same as without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import config
import near_duplicates as nd
from dataset_folder import read_sources, scan_dataset
from files import atomic_write, file_sha256, process_pool, stamp_key, write_csv_atomic
from xray_io import read_xray

SPLITS = ("train", "val", "test")


def _decode_digest(path: str) -> tuple[str | None, np.ndarray | None, str | None]:
    """(pixel digest, fingerprint, None) for a readable image, (None, None, reason) otherwise;
    the fingerprint is None for an image that cannot be fingerprinted (one gray level)."""
    try:
        a = read_xray(path)
    except (ValueError, OSError) as e:
        return None, None, str(e).replace(str(path) + ": ", "", 1)
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(a.shape, np.int64).tobytes())
    h.update(a.tobytes())
    try:
        fp = nd.fingerprint(a)
    except nd.NotFingerprintable:
        fp = None
    return h.hexdigest(), fp, None


def validate_images(data_dir: str | os.PathLike, paths: list[str], workers: int | None = None,
                    cache_dir: str | os.PathLike | None = None
                    ) -> tuple[list[str | None], list[np.ndarray | None], list[str | None]]:
    """Decode every image (in ``workers`` processes); returns per-path pixel digests,
    near-duplicate fingerprints and reasons (``None`` where there is none). ``cache_dir``: the
    digest and fingerprint of each image that decoded are kept there (``decoded_cache_path``),
    keyed by the file's absolute path, size and modification time and by the decoder's
    version, so an unchanged file is not decoded again; an unreadable one always is."""
    full = [str(Path(data_dir, p)) for p in paths]
    cache = None if cache_dir is None else decoded_cache_path(cache_dir)
    known = _read_decoded(cache) if cache is not None else {}
    keys = [stamp_key(p) for p in full]
    results: list = [known.get(k) if k else None for k in keys]
    todo = [n for n, r in enumerate(results) if r is None]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) // 256 + 1))
    if workers == 1:
        found = [_decode_digest(full[n]) for n in todo]
    else:
        with process_pool(workers) as pool:
            found = pool.map(_decode_digest, [full[n] for n in todo], chunksize=64)
    for n, r in zip(todo, found):
        results[n] = r
        if r[0] is not None and keys[n]:
            known[keys[n]] = r
    if cache is not None and any(r[0] is not None and keys[n] for n, r in zip(todo, found)):
        _write_decoded(cache, known)
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def decoded_cache_path(cache_dir: str | os.PathLike) -> Path:
    """Where ``validate_images`` keeps what it decoded: ``split-images-<fingerprint version>-
    <decoder version>.npz`` in ``cache_dir`` (another version of either is another file)."""
    from image_cache import decoder_version  # noqa: PLC0415  (only a cached split needs it)
    return Path(cache_dir) / f"split-images-{nd.FINGERPRINT_VERSION}-{decoder_version()}.npz"


def _read_decoded(cache: Path) -> dict[str, tuple]:
    try:
        with np.load(cache) as z:
            fps, has = z["fps"], z["has_fp"]
            return {k: (d, fps[n] if has[n] else None, None)
                    for n, (k, d) in enumerate(zip(z["keys"].tolist(), z["digests"].tolist()))}
    except (OSError, ValueError, KeyError):
        return {}  # none yet, or damaged: rebuilt


def _write_decoded(cache: Path, known: dict[str, tuple]) -> None:
    blank = np.zeros((nd.SIDE, nd.SIDE), np.uint8)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(list(known), dtype=str),
                     digests=np.array([r[0] for r in known.values()], dtype=str),
                     has_fp=np.array([r[1] is not None for r in known.values()]),
                     fps=np.stack([blank if r[1] is None else r[1] for r in known.values()]))
    except OSError:
        pass  # a cache that cannot be written only costs time next run


DUPLICATE_COLUMNS = ["group", "path", "matched_path", "score", "kind"]


def duplicate_edges(cand: pd.DataFrame, fps: list[np.ndarray | None], near: bool = True,
                    workers: int | None = None, cache_dir: str | os.PathLike | None = None
                    ) -> pd.DataFrame:
    """The pairs of ``cand`` rows (``path``, ``digest``) that show one radiograph: columns
    ``path``, ``matched_path``, ``score`` and ``kind`` (``exact``: identical decoded pixels,
    matched to the first path of their set, score 1; ``near``: ``nd.find_pairs``,
    with its score). Rows without a fingerprint are never near pairs. ``cache_dir``: where
    ``nd.find_pairs`` keeps the scores it verified (a re-split verifies only what is new)."""
    paths = cand["path"].tolist()
    edges = []
    first = cand.groupby("digest")["path"].transform("min")
    for p, f in zip(paths, first):
        if p != f:
            edges.append((p, f, 1.0, "exact"))
    if near and len(paths) > 1:
        ok = np.array([f is not None for f in fps])
        stack = np.stack([f if f is not None else np.zeros((nd.SIDE,) * 2, np.uint8)
                          for f in fps])
        digest = cand["digest"].tolist()
        for i, j, score in nd.find_pairs(stack, ok, workers, cache_dir=cache_dir)[["i", "j", "score"]
                                                                            ].itertuples(index=False):
            if digest[i] != digest[j]:  # identical ones are listed as exact already
                edges.append((paths[j], paths[i], float(score), "near"))
    return pd.DataFrame(edges, columns=DUPLICATE_COLUMNS[1:])


def read_groups(groups_csv: str | os.PathLike, paths: list[str]) -> tuple[dict[str, str], list]:
    """``--groups``: ``{path: group}`` from a CSV with columns ``path,group`` (paths relative to
    the dataset folder), and the CSV's paths that are not among ``paths``. ValueError naming
    the columns found when ``path`` or ``group`` is missing."""
    g = pd.read_csv(groups_csv, dtype=str, keep_default_na=False)
    if not {"path", "group"} <= set(g.columns):
        raise ValueError(f"--groups {groups_csv}: expected columns 'path' and 'group', found "
                         f"{list(g.columns)}")
    known = set(paths)
    g["path"] = g["path"].str.replace("\\", "/", regex=False).str.strip()
    missing = sorted(set(g["path"]) - known)
    g = g[g["path"].isin(known) & (g["group"].str.strip() != "")]
    return dict(zip(g["path"], g["group"].str.strip())), missing


def assign_groups(paths: list[str], edges: pd.DataFrame, given: dict[str, str] | None = None
                  ) -> list[str]:
    """Each path's group id: the smallest path of its connected component over ``edges``
    (``duplicate_edges``) and, with ``given`` (``read_groups``), over shared given groups."""
    index = {p: k for k, p in enumerate(paths)}
    pairs = [(index[a], index[b]) for a, b in zip(edges["path"], edges["matched_path"])]
    by_given: dict[str, int] = {}
    for p, g in (given or {}).items():
        if g in by_given:
            pairs.append((by_given[g], index[p]))
        else:
            by_given[g] = index[p]
    root = nd.groups(len(paths), pairs)
    smallest: dict[int, str] = {}
    for k, r in enumerate(root):
        smallest[r] = min(smallest.get(r, paths[k]), paths[k])
    return [smallest[r] for r in root]


def _per_class_count(spec: float, n: int, what: str) -> int:
    if spec < 0:
        raise ValueError(f"--{what} must be >= 0, got {spec}")
    return int(round(spec * n)) if 0 < spec < 1 else int(spec)


def _parse_amount(text: str) -> float:
    v = float(text)
    if v >= 1 and v != int(v):
        raise argparse.ArgumentTypeError(f"expected an integer count (e.g. 60) or a fraction "
                                         f"below 1 (e.g. 0.1), got {text}")
    return v


def make_split(data_dir: str | os.PathLike, val: float = 60, test: float = 60, seed: int = 42,
               workers: int | None = None, report: dict | None = None,
               near_duplicates: bool = True, groups: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Scan, validate and split ``data_dir``; returns the manifest DataFrame (nothing written).

    ``val``/``test``: images per class (integers >= 1) or fractions of each class (0 < f < 1).
    Duplicate groups are drawn as units, so a class's val/test counts can exceed the target by
    less than one group. Raises ValueError when a class is too small to hold val + test and
    leave training images. ``near_duplicates``: group resized, re-encoded, cropped, padded or
    re-windowed copies too (``duplicate_edges``), not only identical images; ``groups``: a CSV
    of ``path,group`` merged in (``read_groups``); ``cache_dir``: where what was decoded
    (``validate_images``) and the near-duplicate scores (``nd.ScoreStore``) are kept between
    runs (None: nowhere). If ``report`` is a dict it receives
    ``rejects`` (list of ``(path, reason)``), ``cross_class_duplicates`` (list of path lists),
    ``duplicates`` (``duplicate_edges`` with the ``group`` column first), ``groups_missing``
    (``--groups`` paths not in the dataset) and ``seconds``.
    """
    t0 = time.perf_counter()
    cand, rejects = scan_dataset(data_dir)
    digests, fps, reasons = validate_images(data_dir, cand["path"].tolist(), workers, cache_dir)
    bad = [i for i, d in enumerate(digests) if d is None]
    rejects = sorted(rejects + [(cand.at[i, "path"], reasons[i]) for i in bad])
    fps = [f for i, f in enumerate(fps) if digests[i] is not None]
    cand = cand.assign(digest=digests).drop(index=bad).reset_index(drop=True)

    edges = duplicate_edges(cand, fps, near_duplicates, workers, cache_dir)
    given, missing = read_groups(groups, cand["path"].tolist()) if groups else ({}, [])
    cand["group"] = assign_groups(cand["path"].tolist(), edges, given)
    cand = cand.drop(columns="digest")
    group_of = dict(zip(cand["path"], cand["group"]))
    edges.insert(0, "group", edges["path"].map(group_of))
    edges = edges.sort_values(["group", "path", "matched_path"], kind="stable"
                              ).reset_index(drop=True)
    same_image = cand.assign(group=assign_groups(cand["path"].tolist(), edges))
    cross = [sorted(g["path"]) for _, g in same_image.groupby("group")
             if g["label"].nunique() > 1]  # one radiograph filed under several classes

    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    # A group is drawn with the class of its first path; a cross-class group goes where its
    # first member's class puts it, and all its members follow.
    group_label = cand.groupby("group")["label"].first()
    group_size = cand.groupby("group").size()
    for label in sorted(cand["label"].unique()):
        groups = np.array(sorted(group_label.index[group_label == label]))
        n = int(group_size[groups].sum())
        n_val = _per_class_count(val, n, "val")
        n_test = _per_class_count(test, n, "test")
        if n_val + n_test >= n:
            raise ValueError(f"class {label!r} has {n} valid images: cannot hold val={n_val} + "
                             f"test={n_test} and keep training images; use smaller --val/--test "
                             f"counts or fractions (e.g. --val 0.1 --test 0.1)")
        rng.shuffle(groups)
        filled = {"test": 0, "val": 0}
        for g in groups:
            size = int(group_size[g])
            for split, target in (("test", n_test), ("val", n_val)):
                if filled[split] < target:
                    split_of_group[g] = split
                    filled[split] += size
                    break
            else:
                split_of_group[g] = "train"
    cand["split"] = cand["group"].map(split_of_group)
    order = {s: i for i, s in enumerate(SPLITS)}
    cand = cand.sort_values(["split", "label", "path"], key=lambda c: c.map(order)
                            if c.name == "split" else c, kind="stable")
    sources = read_sources(data_dir)
    if sources:
        cand["source"] = [sources.get((lab, Path(p).stem.lower()), "")
                          for lab, p in zip(cand["label"], cand["path"])]
    extra = [c for c in ("mask_path", "lesion_mask_path", "source") if c in cand.columns
             and (cand[c] != "").any()]
    manifest = cand[["path", "label", "split", "group"] + extra].reset_index(drop=True)
    if report is not None:
        report.update(rejects=rejects, cross_class_duplicates=cross, duplicates=edges,
                      groups_missing=missing, seconds=time.perf_counter() - t0)
    return manifest


def listing_fingerprint(data_dir: str | os.PathLike) -> str:
    """A hash of every file's relative path, size and modification time under ``data_dir``
    (a listing, no decoding: it changes when a file is added, removed, replaced or touched)."""
    root = Path(data_dir)
    h = hashlib.blake2b(digest_size=16)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            try:
                st = p.stat()
                info = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                info = "unreadable"
            h.update(f"{p.relative_to(root).as_posix()}\0{info}\n".encode())
    return h.hexdigest()


def info_path(manifest_path: str | os.PathLike) -> Path:
    """Where a manifest's parameters + dataset fingerprint go: ``<stem>.json`` beside it."""
    p = Path(manifest_path)
    return p.with_name(p.stem + ".json")


def rejects_path(manifest_path: str | os.PathLike) -> Path:
    """Where the rejects report of a manifest goes: ``<stem>.rejects.csv`` beside it."""
    p = Path(manifest_path)
    return p.with_name(p.stem + ".rejects.csv")


def duplicates_path(manifest_path: str | os.PathLike) -> Path:
    """Where the duplicate pairs of a manifest go: ``<stem>.duplicates.csv`` beside it."""
    p = Path(manifest_path)
    return p.with_name(p.stem + ".duplicates.csv")


def duplicate_summary(manifest: pd.DataFrame, dup: pd.DataFrame, near: bool = True) -> str:
    """One sentence: how many images sit in exact and near-duplicate groups, all of them kept
    within one split."""
    def count(kind: str) -> tuple[int, int]:
        rows = dup[dup["kind"] == kind]
        paths = set(rows["path"]) | set(rows["matched_path"])
        return len(paths), manifest.loc[manifest["path"].isin(paths), "group"].nunique()

    (n_exact, g_exact), (n_near, g_near) = count("exact"), count("near")
    near_text = (f"{n_near} images in {g_near} near-duplicate groups (resized, re-encoded, "
                 f"cropped, padded or re-windowed copies)" if near
                 else "near-duplicates not looked for (--near-duplicates off)")
    return (f"{n_exact} images in {g_exact} exact-duplicate groups, {near_text}; every group "
            f"kept within one split")


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals, as the study tabulated them."""
    t = pd.crosstab(manifest["label"], manifest["split"]).reindex(columns=list(SPLITS),
                                                                  fill_value=0)
    t["total"] = t.sum(axis=1)
    t.loc["total"] = t.sum(axis=0)
    t.index.name, t.columns.name = "class", None
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Seeded stratified split of a chest X-ray dataset "
                                            "folder into a manifest CSV (the folder is not modified).")
    p.add_argument("data_dir", help="dataset folder of class subfolders")
    # the manifest is a file, named as train.py / evaluate.py / predict.py name it when they read
    # it (--out is the folder a command writes into); --out is still read here, the old spelling
    p.add_argument("--manifest", "--out", dest="manifest", required=True,
                   help="manifest CSV to write (outside DATA_DIR); a .json of the split's "
                        "settings and a .duplicates.csv go beside it")
    p.add_argument("--val", type=_parse_amount, default=60,
                   help="validation images per class (int) or fraction (<1); default 60")
    p.add_argument("--test", type=_parse_amount, default=60,
                   help="test images per class (int) or fraction (<1); default 60")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all)")
    p.add_argument("--groups", default=None, metavar="GROUPS.csv",
                   help="CSV with columns path,group (e.g. patient IDs): images of one group "
                        "never straddle splits")
    p.add_argument("--near-duplicates", choices=("on", "off"), default="on",
                   help="on (default): resized, re-encoded, cropped, padded or re-windowed "
                        "copies of one radiograph form one group; off: identical images only")
    p.add_argument("--cache-dir", default=None,
                   help=f"where the near-duplicate scores verified are kept, so that a re-split "
                        f"(another seed, other counts, a few new images) verifies only what is "
                        f"new (default {config.CACHE_DIR}; 'none': keep nothing)")
    p.add_argument("--force", action="store_true",
                   help="re-split even if the existing manifest matches the data")
    a = p.parse_args(argv)
    data_dir, out = Path(a.data_dir).resolve(), Path(a.manifest).resolve()
    if data_dir == out.parent or data_dir in out.parents:
        p.error(f"--manifest {a.manifest} is inside the dataset folder {a.data_dir}; the dataset is never "
                f"written to: choose a path outside it (e.g. outputs/manifest.csv)")
    if not data_dir.is_dir():
        print(f"error: dataset folder {a.data_dir} does not exist", file=sys.stderr)
        return 2
    if a.groups and not Path(a.groups).is_file():
        print(f"error: --groups {a.groups} is not a file (expected a CSV with columns path,group)",
              file=sys.stderr)
        return 2
    params = {"data_dir": str(data_dir), "val": a.val, "test": a.test, "seed": a.seed,
              "fingerprint": listing_fingerprint(data_dir),
              "near_duplicates": nd.VERSION if a.near_duplicates == "on" else "off",
              "groups": file_sha256(a.groups) if a.groups else None}
    if not a.force and out.is_file() and info_path(out).is_file():
        # the JSON records the CSV's hash: a kill between writing the two (or an edited CSV)
        # makes the pair disagree, and the split is drawn again
        try:
            same = json.loads(info_path(out).read_text()) == {**params, "manifest_sha256":
                                                              file_sha256(out)}
        except ValueError:
            same = False
        if same:
            print(split_table(pd.read_csv(out, keep_default_na=False)).to_string())
            print(f"{out} still matches {a.data_dir} (same files, val/test/seed): reusing it; "
                  f"use --force to re-split")
            return 0
        print(f"{out} does not match the data or parameters any more: re-splitting")
    report: dict = {}
    try:
        manifest = make_split(data_dir, a.val, a.test, a.seed, a.workers, report,
                              a.near_duplicates == "on", a.groups,
                              config.cache_folder(a.cache_dir))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_csv_atomic(manifest, out)
    rej = pd.DataFrame(report["rejects"], columns=["path", "reason"])
    write_csv_atomic(rej, rejects_path(out))
    with atomic_write(info_path(out)) as tmp:
        tmp.write_text(json.dumps({**params, "manifest_sha256": file_sha256(out)}, indent=2) + "\n")
    dup = report["duplicates"]
    write_csv_atomic(dup, duplicates_path(out))
    print(split_table(manifest).to_string())
    print(f"{len(manifest)} images in {out} ({report['seconds']:.1f} s, seed {a.seed}); "
          f"{len(rej)} rejected (see {rejects_path(out).name})")
    print(duplicate_summary(manifest, dup, a.near_duplicates == "on") +
          f" (see {duplicates_path(out).name})")
    if a.groups:
        n_multi = int(manifest.duplicated("group", keep=False).sum())
        print(f"--groups {a.groups}: {n_multi} images share a group with another image; "
              f"{len(report['groups_missing'])} of its paths are not in the dataset"
              + (f" (e.g. {', '.join(report['groups_missing'][:3])})"
                 if report["groups_missing"] else ""))
    for r in rej.head(20).itertuples():
        print(f"  rejected {r.path}: {r.reason}")
    if len(rej) > 20:
        print(f"  ... and {len(rej) - 20} more in {rejects_path(out)}")
    for paths in report["cross_class_duplicates"]:
        print(f"  warning: the same image is filed under several classes: {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
