"""Classify new chest radiographs with trained checkpoints and show where each model looked.

SYNOPSIS
    python predict.py MODEL.pt [MODEL.pt ...] INPUT [INPUT ...] [--out DIR]
                      [--cam gradcam|gradcam++|hirescam|none] [--cam-layer [ARCH=]LAYER[,...]]
                      [--batch-size N] [--device D] [--split SPLIT] [--data-dir DIR]
                      [--uncalibrated]

DESCRIPTION
    Every argument ending in .pt or .pth is a model: a checkpoint written by notebook 2
    (checkpoints.save_checkpoint; an <arch>_last.pt resumable state beside its <arch>.pt is skipped,
    so models/*.pt means the best epoch of each model). It carries everything needed:
    architecture, class names, image size and normalisation, so nothing else is asked for. Every other argument is an input:

      an image file   PNG, JPEG, TIFF, BMP or DICOM (.dcm), any bit depth or colour mode
      a folder        searched recursively for files with those extensions (others are ignored)
      a manifest CSV  written by split_dataset.py; its rows of --split are predicted, paths
                      relative to --data-dir (default: the folder recorded in the manifest's .json)

    With several models each image gets every model's probabilities and their mean (an
    ensemble); the models must share one class list.

    Probabilities are calibrated: each model's logits are divided by the temperature fitted on
    its validation split when it was trained (the checkpoint's "temperature", written by
    notebook 2 / train.py; notebook 3 reports the calibration error before and after). A
    checkpoint without one is used as it is. --uncalibrated gives the raw softmax. The
    predicted class is the same either way for a single model.

OUTPUT
    DIR/predictions.csv (written atomically), one row per input file:
      path, status ("ok" or why the file could not be read), [label: the manifest's class],
      predicted, probability (the ensemble's, or the single model's), then per model
      <model>_predicted and <model>_<class> for each class, and with several models
      ensemble_predicted and ensemble_<class>; training_copy ("<split>:<path>" of the
      training or validation image this input is a copy of, byte-identical or resized,
      re-encoded, cropped or re-windowed: a call on it is no test; empty otherwise),
      training_copy_kind (exact or near), training_copy_score; cam (the PNG written for the
      row). Checkpoints written before near-duplicate fingerprints were recorded find exact
      copies only, and the output says so.
    DIR/cams/<n>_<name>.png unless --cam none: the radiograph and each model's map over it,
      titled with the model's call and probability, the map's peak ringed.
    A file that cannot be read is a row with its reason, never a crash.

EXIT STATUS
    0  at least one image was read and predicted
    1  no input image could be read
    2  a model file is missing or not a checkpoint, the models' class lists differ, or the
       arguments are wrong (the message names the file and what was expected)

EXAMPLES
    python predict.py models/resnet18.pt patient.dcm
    python predict.py models/*.pt ../shared/realcxr --out outputs/predictions --cam gradcam++
    python predict.py models/resnet18.pt outputs/manifest.csv --split test --cam none
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import checkpoints
import config
import familiarity
import grad_cam
import inference
import near_duplicates
import networks
import plot_utils
import files
import utils
from runtime import autocast, choose_device
from split_dataset import info_path
from files import file_sha256
from xray_io import IMAGE_EXTENSIONS, read_xray, resize_uint8

MODEL_SUFFIXES = (".pt", ".pth")


@dataclasses.dataclass
class Call:
    """One model's (or the ensemble's) answer for one image."""
    predicted: str                   # "" when the image could not be read
    probabilities: dict[str, float]  # per class, calibrated unless asked otherwise; NaN unread
    ood_score: float                 # unfamiliarity, 1 = the model's threshold; NaN: no record
    out_of_distribution: bool | None  # ood_score above 1; None without a score
    prediction_set: list[str] | None  # classes of the conformal set; None: no record, or
    #                                   uncalibrated probabilities (sets are fitted on calibrated)

    @property
    def probability(self) -> float:
        """The predicted class's probability (NaN when unread)."""
        return self.probabilities.get(self.predicted, math.nan)


@dataclasses.dataclass
class Prediction:
    """What predict.py says about one input: ``calls`` per model and, with several models, the
    ``"ensemble"`` (the mean of their probabilities; flagged when any model flags the image;
    its set the union of theirs); ``head`` names the call that decides. ``predictions_table``
    renders a list of them as predictions.csv, the app as a page."""
    path: str
    status: str                      # "ok", or why the file could not be read
    label: str                       # the manifest's class ("" for plain files)
    head: str
    calls: dict[str, Call]
    training_copy: str = ""          # "<split>:<path>" of the training image this is a copy of
    training_copy_kind: str = ""     # exact or near
    training_copy_score: float = math.nan
    cam: str = ""                    # the picture written for this input

    @property
    def call(self) -> Call:
        """The deciding call (the ensemble's, or the single model's)."""
        return self.calls[self.head]


def collect_inputs(inputs: list[str], split: str = "test", data_dir: str | None = None
                   ) -> pd.DataFrame:
    """The files to predict: ``path`` (as shown in the CSV), ``file`` (to open) and ``label``
    (the manifest's class, else empty), in argument order; folders sorted, recursive.
    Raises ValueError for an input that does not exist or a manifest without ``split`` rows."""
    rows = []
    for arg in inputs:
        p = Path(arg)
        if p.suffix.lower() == ".csv" and p.is_file():
            manifest = utils.read_manifest(p)
            root = data_dir
            if root is None and info_path(p).is_file():
                root = json.loads(info_path(p).read_text()).get("data_dir")
            if root is None:
                raise ValueError(f"{p}: a manifest's paths are relative to its dataset folder; "
                                 f"pass --data-dir (no {info_path(p).name} beside it says where)")
            part = manifest[manifest["split"] == split]
            if part.empty:
                raise ValueError(f"{p}: no rows with split {split!r}; it has "
                                 f"{sorted(manifest['split'].unique())}")
            rows += [{"path": r, "file": str(Path(root) / r), "label": lab}
                     for r, lab in zip(part["path"], part["label"])]
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            rows += [{"path": str(f), "file": str(f), "label": ""} for f in found]
        elif p.exists() or p.is_symlink():
            rows.append({"path": str(p), "file": str(p), "label": ""})
        else:
            raise ValueError(f"input {arg} does not exist (expected an image file, a folder or "
                             f"a manifest .csv)")
    return pd.DataFrame(rows, columns=["path", "file", "label"])


def _decode(file: str, sizes: tuple[int, ...]) -> tuple[dict | None, np.ndarray | None, str]:
    """``({size: uint8 (S, S), "fingerprint": uint8 (64, 64) or None, "sha256": hex}, gray
    float32 for the picture, "ok")`` or ``(None, None, reason)``."""
    try:
        a = read_xray(file)
    except (ValueError, OSError) as e:
        return None, None, str(e)
    try:
        fp = near_duplicates.fingerprint(a)
    except near_duplicates.NotFingerprintable:
        fp = None
    return ({**{s: resize_uint8(a, s) for s in sizes}, "fingerprint": fp,
             "sha256": file_sha256(file)}, a, "ok")


def training_copies(models: dict, paths: list[str], decoded: list[dict]) -> pd.DataFrame:
    """Which of these decoded inputs (``_decode``'s dicts) are copies of an image a model was
    trained or validated on: ``checkpoints.training_overlap`` rows (the best twin per input:
    exact first, then the highest score) with ``models``; a call on such an image is no test."""
    fps = _fingerprints(decoded)
    ok = [d["fingerprint"] is not None for d in decoded]
    found = [checkpoints.training_overlap(meta, paths, [d["sha256"] for d in decoded], fps, ok)
             .assign(models=n) for n, (_, meta) in models.items()]
    found = [f for f in found if len(f)]
    if not found:
        return pd.DataFrame(columns=[*checkpoints.OVERLAP_COLUMNS, "models"])
    dup = pd.concat(found, ignore_index=True).sort_values(["path", "kind", "score"],
                                                          ascending=[True, True, False])
    models_of = dup.groupby("path")["models"].agg(lambda m: ", ".join(sorted(set(m))))
    dup = dup.drop_duplicates("path").drop(columns="models")
    return dup.assign(models=dup["path"].map(models_of)).reset_index(drop=True)


def _batches(files: list[str], sizes: tuple[int, ...], batch_size: int, keep_gray: bool):
    """Decoded batches, the next one decoded in a background thread while the models run
    (PIL and OpenCV release the GIL), so decoding overlaps the forward passes."""
    def load(chunk):
        return [_decode(f, sizes) for f in chunk]

    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as ex:
        pending = ex.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            batch = pending.result()
            pending = ex.submit(load, chunks[k + 1]) if k + 1 < len(chunks) else None
            if not keep_gray:
                batch = [(imgs, None, status) for imgs, _, status in batch]
            yield batch


def _safe_name(path: str) -> str:
    stem = Path(path).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"


def _forward(model, meta, x, cam, cam_layer, device) -> tuple[torch.Tensor, np.ndarray | None,
                                                             dict]:
    """One model on one batch: ``(logits, CAMs or None, pooled features for its familiarity
    record, {} when it has none)``."""
    fam = meta.get("familiarity")
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(familiarity.Features(model, fam["layers"])) if fam else None
        if cam == "none":
            with torch.no_grad(), autocast(device):
                logits, maps = model(x), None
        else:
            with grad_cam.GradCAM(model, cam_layer, cam) as g:
                _, maps = g(x)
                logits = g.logits
        feats = {k: v.numpy() for k, v in f.batch.items()} if f else {}
    return logits, maps, feats


def predict_files(models: dict[str, tuple[torch.nn.Module, dict]], table: pd.DataFrame,
                  device: torch.device, out_dir: Path, cam: str = "gradcam",
                  cam_layer: str | dict | None = None, batch_size: int = 32, progress: bool = True,
                  calibrated: bool = True) -> list[Prediction]:
    """Predict every row of ``collect_inputs``'s table; returns one ``Prediction`` per row
    (``predictions_table`` makes predictions.csv of them) and writes the CAM pictures under
    ``out_dir/cams`` unless ``cam`` is ``"none"``. ``calibrated``: softmax of the logits
    divided by each checkpoint's ``temperature``."""
    if cam != "none" and cam not in grad_cam.METHODS:
        raise ValueError(f"--cam {cam!r}: expected one of {', '.join(grad_cam.METHODS)}, none")
    names = list(models)
    class_names = models[names[0]][1]["class_names"]
    sizes = tuple(sorted({m[1]["image_size"] for m in models.values()}))
    cams_dir = out_dir / "cams"
    if cam != "none":
        cams_dir.mkdir(parents=True, exist_ok=True)
    probs = {n: np.full((len(table), len(class_names)), np.nan) for n in names}
    ood = {n: np.full(len(table), np.nan) for n in names}
    status = ["ok"] * len(table)
    cam_files = [""] * len(table)
    copy_of: dict[int, object] = {}
    layers = {n: networks.cam_target_layer(m, meta["arch"],
                                           networks.cam_layer_for(cam_layer, meta["arch"]))
              for n, (m, meta) in models.items()}
    bar = tqdm(total=len(table), desc="predict", unit="img", disable=not progress)
    row = 0
    for batch in _batches(table["file"].tolist(), sizes, batch_size, keep_gray=cam != "none"):
        ok = [i for i, (imgs, _, _) in enumerate(batch) if imgs is not None]
        status[row:row + len(batch)] = [reason for _, _, reason in batch]
        maps: dict[str, np.ndarray] = {}
        copies = training_copies(models, [str(row + i) for i in ok], [batch[i][0] for i in ok])
        copy_of.update({int(r.path): r for r in copies.itertuples()})
        rows = [row + i for i in ok]
        fps = _fingerprints([batch[i][0] for i in ok])
        for n, (model, meta) in models.items() if ok else ():
            size = meta["image_size"]
            x = torch.from_numpy(np.stack([batch[i][0][size] for i in ok]))[:, None]  # (n,1,S,S)
            logits, maps[n], feats = _forward(model, meta, utils.prepare_batch(x, device), cam,
                                              layers[n], device)
            p = torch.softmax(logits.float() / inference.temperature(meta, calibrated), 1)
            probs[n][rows] = p.cpu().double().numpy()
            if feats:
                ood[n][rows] = familiarity.familiarity_scores(meta["familiarity"], feats, fps)
        for k, i in enumerate(ok if cam != "none" else ()):
            r = row + i
            tiles, captions = [], []
            for n in names:
                c = int(np.argmax(probs[n][r]))
                tiles.append(plot_utils.overlay_cam(batch[i][0][models[n][1]["image_size"]],
                                                    maps[n][k], peak=True))
                captions.append(f"{n}: {class_names[c]} {probs[n][r, c]:.2f}"
                                + (" UNFAMILIAR" if ood[n][r] > 1 else ""))
            title = table["path"].iat[r]
            if any(ood[n][r] > 1 for n in names):
                title += ("\nUNLIKE THE TRAINING IMAGES (out of distribution): "
                          "the call is not to be trusted")
            if r in copy_of:
                title += (f"\nA COPY OF A TRAINING IMAGE ({copy_of[r].kind}, "
                          f"{copy_of[r].trained_path}): this call is no test")
            picture = plot_utils.cam_strip(batch[i][1], tiles, captions, title=title)
            dst = cams_dir / f"{r + 1:05d}_{_safe_name(table['path'].iat[r])}.png"
            plot_utils.save_image(picture, dst)
            cam_files[r] = str(dst)
        row += len(batch)
        bar.update(len(batch))
    bar.close()
    return _predictions(table, models, class_names, probs, ood, calibrated, status, cam_files,
                        copy_of)


def _fingerprints(decoded: list[dict]) -> np.ndarray:
    """uint8 (n, 64, 64) fingerprints of decoded inputs; zeros for one that has none (one gray
    level: unlike any radiograph)."""
    side = near_duplicates.SIDE
    return np.stack([d["fingerprint"] if d["fingerprint"] is not None
                     else np.zeros((side, side), np.uint8) for d in decoded]) \
        if decoded else np.zeros((0, side, side), np.uint8)


def _predictions(table, models, class_names, probs, ood, calibrated, status, cam_files,
                 copy_of) -> list[Prediction]:
    """The ``Prediction`` of each row. The ensemble's rules: the mean of the models'
    probabilities; its unfamiliarity the largest of theirs (each scaled so that 1 is its own
    threshold; NaN when any model has no record), so it is flagged when any model flags the
    image; its set the union of theirs (none unless every model has one)."""
    names = list(models)
    sets = {}
    for n in names:
        if "conformal" in models[n][1] and calibrated:
            read = ~np.isnan(probs[n]).any(1)
            sets[n] = familiarity.prediction_sets(np.nan_to_num(probs[n]),
                                                  models[n][1]["conformal"]["qhat"]) & read[:, None]
    blocks, scores = dict(probs), dict(ood)
    head = names[0]
    if len(names) > 1:
        head = "ensemble"
        blocks["ensemble"] = np.mean([probs[n] for n in names], axis=0)
        scores["ensemble"] = np.max([ood[n] for n in names], 0)
        if len(sets) == len(names):
            sets["ensemble"] = np.any([sets[n] for n in names], 0)
    out = []
    for i in range(len(table)):
        calls = {}
        for b, p in blocks.items():
            score = float(scores[b][i])
            calls[b] = Call(
                predicted="" if np.isnan(p[i]).any() else class_names[int(np.argmax(p[i]))],
                probabilities={c: float(v) for c, v in zip(class_names, p[i])},
                ood_score=score,
                out_of_distribution=None if math.isnan(score) else bool(familiarity.flagged(score)),
                prediction_set=([c for c, on in zip(class_names, sets[b][i]) if on]
                                if b in sets else None))
        twin = copy_of.get(i)
        out.append(Prediction(
            path=table["path"].iat[i], status=status[i], label=table["label"].iat[i], head=head,
            calls=calls, cam=cam_files[i],
            **({} if twin is None else {
                "training_copy": f"{twin.trained_split}:{twin.trained_path}",
                "training_copy_kind": twin.kind, "training_copy_score": float(twin.score)})))
    return out


def predictions_table(predictions: list[Prediction]) -> pd.DataFrame:
    """predictions.csv (the module docstring's columns): path, status, [label], the deciding
    call (predicted, probability, ood_score, out_of_distribution, prediction_set), each call's
    class and probabilities, each call's familiarity and set, the training copy, the picture.
    A set is its classes joined by ``|``; a missing score, flag or set an empty cell."""
    if not predictions:
        return pd.DataFrame(columns=["path", "status", "predicted", "probability", "cam"])
    first = predictions[0]
    blocks = list(first.calls)

    def trust(c: Call) -> tuple:
        return (round(c.ood_score, 4),
                "" if c.out_of_distribution is None else c.out_of_distribution,
                "" if c.prediction_set is None else "|".join(c.prediction_set))

    rows = []
    for p in predictions:
        row = {"path": p.path, "status": p.status, "label": p.label,
               "predicted": p.call.predicted, "probability": p.call.probability}
        for b in blocks:
            row[f"{b}_predicted"] = p.calls[b].predicted
            row.update({f"{b}_{c}": v for c, v in p.calls[b].probabilities.items()})
        row.update(zip(("ood_score", "out_of_distribution", "prediction_set"), trust(p.call)))
        for b in blocks:
            row.update(zip((f"{b}_ood_score", f"{b}_out_of_distribution",
                            f"{b}_prediction_set"), trust(p.calls[b])))
        row.update(training_copy=p.training_copy, training_copy_kind=p.training_copy_kind,
                   training_copy_score=p.training_copy_score, cam=p.cam)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not (out["label"] != "").any():
        out = out.drop(columns="label")
    return out


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\nSYNOPSIS", 1)
    p = argparse.ArgumentParser(
        prog="predict.py", description=doc[0].strip(), epilog="SYNOPSIS" + doc[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", metavar="MODEL.pt|INPUT",
                   help="checkpoints (.pt/.pth), then image files, folders or a manifest .csv")
    p.add_argument("--out", default="outputs/predictions",
                   help="folder for predictions.csv and cams/ (default: outputs/predictions)")
    p.add_argument("--cam", default="gradcam", choices=[*grad_cam.METHODS, "none"],
                   help="class activation maps to draw (default gradcam; none: probabilities only)")
    p.add_argument("--cam-layer", default=None,
                   help="Grad-CAM target layer: LAYER for every model, e.g. layer3, or "
                        "ARCH=LAYER,... per architecture (default: each model's last "
                        "convolutional block, as in the study)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best found)")
    p.add_argument("--split", default="test", help="manifest rows to predict (default test)")
    p.add_argument("--data-dir", default=None, help="dataset folder a manifest's paths are in")
    p.add_argument("--uncalibrated", action="store_true",
                   help="raw softmax probabilities (default: divided by each checkpoint's "
                        "validation-fitted temperature)")
    a = p.parse_args(argv)
    model_paths = checkpoints.best_epoch_files(
        [x for x in a.items if Path(x).suffix.lower() in MODEL_SUFFIXES])
    inputs = [x for x in a.items if Path(x).suffix.lower() not in MODEL_SUFFIXES]
    if not model_paths or not inputs:
        p.error(f"expected at least one MODEL.pt and one INPUT; got {len(model_paths)} model(s) "
                f"and {len(inputs)} input(s)")
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {a.batch_size}")
    device = choose_device(a.device)
    try:
        models = checkpoints.load_models(model_paths, device)
        table = collect_inputs(inputs, a.split, a.data_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if table.empty:
        print(f"error: no image files in {' '.join(inputs)} (looked for "
              f"{', '.join(IMAGE_EXTENSIONS)})", file=sys.stderr)
        return 1
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        predictions = predict_files(models, table, device, out_dir, a.cam,
                               config.cam_layers_arg(a.cam_layer), a.batch_size,
                               calibrated=not a.uncalibrated)
    except ValueError as e:  # e.g. --cam-layer that a model lacks
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = predictions_table(predictions)
    files.write_csv_atomic(result, out_dir / "predictions.csv")
    n_ok = int((result["status"] == "ok").sum())
    temps = {n: inference.temperature(meta, not a.uncalibrated) for n, (_, meta) in models.items()}
    print("probabilities: " + ("raw softmax (--uncalibrated)" if a.uncalibrated else ", ".join(
        f"{n} T = {t:.3g}" + ("" if "temperature" in models[n][1] else " (none in checkpoint)")
        for n, t in temps.items())))
    print(f"{n_ok} of {len(result)} images predicted with {', '.join(models)} -> "
          f"{out_dir / 'predictions.csv'}" + ("" if a.cam == "none" else f" and {out_dir / 'cams'}/"))
    n_copies = int((result["training_copy"] != "").sum())
    if n_copies:
        print(f"{n_copies} inputs are copies of training or validation images (column "
              f"training_copy): their calls are no test")
    n_flag = int((result["out_of_distribution"] == True).sum())  # noqa: E712 - "" for unread
    if n_flag:
        print(f"{n_flag} inputs are unlike the training images (out_of_distribution): their "
              f"calls are not to be trusted")
    missing = [n for n, (_, meta) in models.items() if "familiarity" not in meta]
    if missing:
        print(f"note: {', '.join(missing)}: no familiarity record in the checkpoint (trained "
              f"before it existed): ood_score and out_of_distribution are empty; add it with "
              f"python familiarity.py MODEL.pt --manifest MANIFEST.csv")
    for n, (_, meta) in models.items():
        if not checkpoints.has_fingerprints(meta):
            print(f"note: {n}'s checkpoint has no near-duplicate fingerprints of its training "
                  f"images: only byte-identical copies of them are recognised")
    for r in result[result["status"] != "ok"].head(10).itertuples():
        print(f"  not read: {r.status}")
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
