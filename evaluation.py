"""Scoring trained models on labelled images: notebook 3's computation and ``evaluate.py``'s.

Two entry points, one per kind of image set, both read-only (nothing is written, checkpoints
least of all) and both returning an ``Evaluation``: ``metrics`` (what ``metrics.json`` holds),
``figures`` (the plain data ``plot_utils.evaluation_figures`` draws) and ``predictions``.

- ``evaluate_split``: a split of the manifest the models were trained with (the internal test).
  Refused when the split holds images a model was trained or validated on (by content:
  ``checkpoints.check_trained_on``), so a re-split cannot leak, while a copy of the data can
  be evaluated anywhere.
- ``external.evaluate_external``: every image under another collection's class folders (an
  external validation set), scored by ``score_models`` here.

Per model and scored set (``score_models``): metrics with intervals (``metrics``), Grad-CAM
localization against the finding masks where there are any, the shortcut audit against the
lung masks where there are any (``audit``), calibration with the checkpoint's temperature (a
checkpoint without one is scored uncalibrated, and the output says so) and accuracy by source.
"""

from __future__ import annotations

import datetime
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import audit
import checkpoints
import familiarity
import grad_cam
import image_cache
import inference
import metrics
import near_duplicates
import networks
import ood_sets
import utils
import xray_io
from config import EvalConfig  # declared with every other setting, in config.py
from runtime import library_versions

CONVENTION = "confusion_matrix rows = true class, columns = predicted"
MASK_COLUMNS = ("lesion_mask_path", "mask_path")  # localization prefers the finding's mask
Models = dict[str, tuple[nn.Module, dict]]          # name -> (model, checkpoint meta)


@dataclass
class Evaluation:
    metrics: dict                                      # metrics.json content
    figures: dict = field(default_factory=dict)        # data for plot_utils.evaluation_figures
    predictions: dict = field(default_factory=dict)    # name -> DataFrame path,true,pred,prob


# --------------------------------------------------------------------------- loading
def model_settings(meta: dict) -> dict:
    """What metrics.json's ``models`` says of a checkpoint: its epoch and validation numbers,
    the training settings that matter for reading its results, and the library versions."""
    cfg = meta.get("config") or {}  # a checkpoint from another tool may lack these
    lr = cfg.get("lr") or (networks.default_lr(meta["arch"], cfg.get("weights") is not None)
                           if meta["arch"] in networks.available() else None)
    return {"epoch": meta.get("epoch"), "val_loss": meta.get("val_loss"),
            "val_acc": meta.get("val_acc"),
            **{k: cfg.get(k) for k in ("weights", "image_size", "batch_size", "epochs",
                                       "patience", "lr", "seed", "max_per_class",
                                       "class_weight")},
            "lr_used": lr, "numeric_path": meta.get("numeric_path"),
            "numeric_path_reason": meta.get("numeric_path_reason"),
            "trained_with": meta.get("versions", {})}


# --------------------------------------------------------------------------- one set, all models
def _loader(rows, data_dir, class_names, size, cfg: EvalConfig, device, **kw):
    return utils.eval_loader(rows, data_dir, class_names, size, cfg.batch_size, cfg.num_workers,
                             pin_memory=device.type == "cuda", cache_dir=cfg.cache_dir, **kw)


def predictions_of(model: nn.Module, rows: pd.DataFrame, data_dir, class_names, size: int,
                   cfg: EvalConfig, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(y_true, y_prob raw softmax, table path/true/pred/prob)``; unreadable files are left
    out (an external set lists them before scoring)."""
    loader = _loader(rows, data_dir, class_names, size, cfg, device)
    y, p, idx = inference.predict_loader(model, loader, device)
    table = pd.DataFrame({"path": loader.dataset.df["path"].iloc[idx].values, "true": y,
                          "pred": p.argmax(1), "prob": p.max(1)})
    return y, p, table


def scores_with_intervals(y, p, class_names, cfg: EvalConfig) -> dict:
    """Headline metrics and the per-class table of one prediction set; the bootstrap runs once."""
    report = metrics.classification_report(y, p, class_names, cfg.n_boot, cfg.seed)
    summary = metrics.summary_metrics(y, p, class_names, cfg.n_boot, cfg.seed, report=report)
    return {**summary, "per_class": report.round(6).to_dict(orient="index")}


def localization_of(model, layer, layer_name: str, rows, data_dir, class_names, size: int,
                    mask_column: str, cfg: EvalConfig, device) -> dict:
    """Grad-CAM for the true class against the finding masks: the pointing game (with the
    original game's margin) and the energy inside the mask, with intervals and chance, and the
    per-class means."""
    loader = _loader(rows, data_dir, class_names, size, cfg, device, mask_column=mask_column)
    tolerance = grad_cam.margin_pixels(size, cfg.pointing_margin)
    with grad_cam.GradCAM(model, layer, cfg.cam_method) as cam:
        scores = grad_cam.localize_loader(cam, loader,
                                          functools.partial(utils.prepare_batch, device=device),
                                          tolerance=tolerance, target="true")
    by_class = (scores.assign(label=[class_names[i] for i in scores["label"]])
                .groupby("label")[["hit", "hit_strict", "energy", "chance"]].mean())
    return {"mask": mask_column, "method": cfg.cam_method, "layer": layer_name,
            "target": "true class", "image_size": size, "margin": cfg.pointing_margin,
            "tolerance_px": tolerance, **grad_cam.summarize_localization(scores, cfg.n_boot,
                                                                         cfg.seed),
            "per_class": by_class.round(6).to_dict(orient="index")}


def calibration_of(meta: dict, y, p, split: str, cfg: EvalConfig) -> dict:
    """ECE (with an interval) and NLL on these predictions before and after the checkpoint's
    validation-fitted temperature. Without one: the "after" values are None and ``note`` says
    the model is scored uncalibrated (evaluation never fits or writes a temperature)."""
    cal = meta.get("calibration")
    ece, ece_ci = metrics.ece_with_interval(y, p, n_boot=cfg.n_boot, seed=cfg.seed)
    part = {"n": int(len(y)), "ece_before": ece, "ece_before_ci": ece_ci}
    if cal is None or "temperature" not in meta:
        return {"temperature": None, "validation": None,
                "note": "no temperature in the checkpoint: scored uncalibrated",
                split: {**part, "ece_after": None, "ece_after_ci": None,
                        "nll_before": metrics.negative_log_likelihood(y, p), "nll_after": None}}
    scaled = metrics.apply_temperature(p, cal["temperature"])
    ece_t, ece_t_ci = metrics.ece_with_interval(y, scaled, n_boot=cfg.n_boot, seed=cfg.seed)
    return {"temperature": cal["temperature"], "validation": cal,
            split: {**part, "ece_after": ece_t, "ece_after_ci": ece_t_ci,
                    "nll_before": metrics.negative_log_likelihood(y, p),
                    "nll_after": metrics.negative_log_likelihood(y, scaled)}}


def prediction_sets_of(meta: dict, y, p, class_names: list[str], cfg: EvalConfig) -> dict | None:
    """Empirical coverage and size of the checkpoint's conformal prediction sets
    (``familiarity.prediction_sets`` on the calibrated probabilities), overall (Wilson and
    bootstrap intervals) and per true class; None without a conformal record or temperature."""
    conf = meta.get("conformal")
    if not conf or "temperature" not in meta:
        return None
    sets = familiarity.prediction_sets(metrics.apply_temperature(p, meta["temperature"]),
                                       conf["qhat"])
    scores = pd.DataFrame({"covered": sets[np.arange(len(y)), y].astype(float),
                           "size": sets.sum(1).astype(float), "label": np.asarray(y)})
    k, n = int(scores["covered"].sum()), len(scores)
    lo, hi = metrics.wilson_interval(k, n)
    size = metrics.bootstrap_means(scores, {"mean_size": "size"}, cfg.n_boot, cfg.seed)
    per = {}
    for c, g in scores.groupby("label"):
        c_lo, c_hi = metrics.wilson_interval(int(g["covered"].sum()), len(g))
        per[class_names[c]] = {"n": int(len(g)), "coverage": float(g["covered"].mean()),
                               "coverage_ci": [float(c_lo), float(c_hi)],
                               "mean_size": float(g["size"].mean())}
    return {"alpha": conf["alpha"], "nominal": 1 - conf["alpha"], "qhat": conf["qhat"], "n": n,
            "coverage": k / n if n else None, "coverage_ci": [float(lo), float(hi)], **size,
            "per_class": per}


def _share(flags) -> dict:
    flags = np.asarray(flags, bool)
    lo, hi = metrics.wilson_interval(int(flags.sum()), len(flags))
    return {"n": int(len(flags)), "share": float(flags.mean()) if len(flags) else None,
            "ci": [float(lo), float(hi)]}


def familiarity_of(model, meta: dict, rows, data_dir, size: int, cfg: EvalConfig, device,
                   table: pd.DataFrame, builtin: bool = True) -> dict | None:
    """The out-of-distribution flag on ``rows``: the share flagged (Wilson interval) and the
    accuracy on the images it passes and on those it flags (``table``: ``predictions_of``'s);
    with ``builtin``, its AUROC and share flagged against the same images turned, inverted and
    cropped (``ood_sets.turned``) and against pictures that are no radiographs
    (``ood_sets.non_radiographs``). None without a familiarity record."""
    fam = meta.get("familiarity")
    if not fam:
        return None
    paths = table["path"].tolist()
    files = [Path(data_dir) / p for p in paths]
    images = [xray_io.read_xray(f) for f in files]
    fps, _, _ = near_duplicates.fingerprint_files(files, cfg.cache_dir)

    def scores(pics, prints):
        feats, _ = familiarity.extract(model, fam["layers"],
                                       np.stack([xray_io.resize_uint8(a, size) for a in pics]),
                                       device, cfg.batch_size)
        return familiarity.familiarity_scores(fam, feats, prints)

    s = scores(images, fps)
    flag = familiarity.flagged(s)
    right = (table["true"] == table["pred"]).to_numpy()
    out = {"rate": fam["rate"], "flagged": _share(flag),
           "accuracy_passed": _share(right[~flag]), "accuracy_flagged": _share(right[flag]),
           "builtin": None}
    if builtin:
        sets = {k: [ood_sets.turned(a)[k] for a in images] for k in ood_sets.TURNS}
        sets["non_radiographs"] = list(ood_sets.non_radiographs().values())
        out["builtin"] = {}
        for kind, pics in sets.items():
            other = scores(pics, np.stack([near_duplicates.fingerprint(a) for a in pics]))
            out["builtin"][kind] = {"n": len(pics), "auroc": metrics.auroc(s, other),
                                    "flagged": float(familiarity.flagged(other).mean())}
    return out


def by_source_of(table: pd.DataFrame, rows: pd.DataFrame) -> dict | None:
    """Accuracy per source (the ``source`` column, Kaggle's metadata URL) with Wilson
    intervals; None when the rows record no source."""
    if "source" not in rows.columns or not (rows["source"] != "").any():
        return None
    sources = table["path"].map(rows.set_index("path")["source"]).replace("", "(unknown)")
    acc = metrics.accuracy_by_group(table["true"], table["pred"], sources).round(6)
    return acc.to_dict(orient="index")


def score_models(models: Models, rows: pd.DataFrame, data_dir, class_names: list[str],
                 cfg: EvalConfig, device: torch.device, split: str = "test",
                 train_rows: pd.DataFrame | None = None) -> Evaluation:
    """Score every model on ``rows`` (columns path, label[, mask_path, lesion_mask_path,
    source]) under the key ``split``. ``train_rows`` (the train split): each model also gets
    metrics on the training images it drew from (its checkpoint's seeded ``max_per_class``
    subset). Returns the per-model results (``metrics["archs"]``), the predictions, and the
    figure data (confusion matrices, ROC and reliability curves, Grad-CAM galleries)."""
    mask_column = next((c for c in MASK_COLUMNS if c in rows.columns
                        and (rows[c] != "").any()), None)
    has_lungs = "mask_path" in rows.columns and (rows["mask_path"] != "").any()
    results, preds, figs, audit_rows = {}, {}, {}, {}
    layers, layer_names = {}, {}
    for name, (model, meta) in models.items():
        size, arch = meta["image_size"], meta["arch"]
        layers[name] = networks.cam_target_layer(model, arch,
                                                 networks.cam_layer_for(cfg.cam_layers, arch))
        layer_names[name] = networks.module_path(model, layers[name])
        results[name] = {}
        if train_rows is not None:
            c = meta.get("config") or {}
            drawn = utils.cap_per_class(train_rows, c.get("max_per_class"), c.get("seed", 0))
            y, p, _ = predictions_of(model, drawn, data_dir, class_names, size, cfg, device)
            results[name]["train"] = scores_with_intervals(y, p, class_names, cfg)
            figs.setdefault("confusion", []).append(
                (name, "train", results[name]["train"]["confusion_matrix"]))
        y, p, preds[name] = predictions_of(model, rows, data_dir, class_names, size, cfg, device)
        results[name][split] = scores_with_intervals(y, p, class_names, cfg)
        results[name]["prediction_sets"] = prediction_sets_of(meta, y, p, class_names, cfg)
        results[name]["familiarity"] = familiarity_of(model, meta, rows, data_dir, size, cfg,
                                                      device, preds[name],
                                                      builtin=split != "external")
        figs.setdefault("confusion", []).append(
            (name, split, results[name][split]["confusion_matrix"]))
        figs.setdefault("roc", {})[name] = metrics.roc_points(y, p, class_names)
        results[name]["localization"] = None if mask_column is None else localization_of(
            model, layers[name], layer_names[name], rows, data_dir, class_names, size,
            mask_column, cfg, device)
        results[name]["lung_audit"] = None
        if has_lungs:
            lung_rows = rows[rows["mask_path"] != ""]
            loader = _loader(lung_rows, data_dir, class_names, size, cfg, device,
                             mask_column="mask_path")
            results[name]["lung_audit"], scores = audit.audit_model(
                model, loader, device, class_names, layers[name], layer_names[name],
                cfg.cam_method, grad_cam.margin_pixels(size, cfg.lung_margin), cfg.n_boot,
                cfg.seed)
            worst = scores.sort_values("energy_in_lungs").head(cfg.audit_gallery)
            if len(worst):  # no scorable map (all constant: an untrained model) shows nothing
                audit_rows[name] = (loader.dataset.df.iloc[worst["index"]], worst)
        results[name]["calibration"] = calibration_of(meta, y, p, split, cfg)
        figs.setdefault("reliability", {})[name] = _reliability(y, p, results[name]["calibration"])
        results[name]["by_source"] = by_source_of(preds[name], rows)
    figs["galleries"] = _galleries(models, layers, layer_names, rows, preds, audit_rows, data_dir,
                                   class_names, mask_column, cfg, device)
    figs.update(cam_method=cfg.cam_method, synthetic=utils.dataset_info(data_dir)["synthetic"],
                class_names=list(class_names), split=split, prefix="")
    return Evaluation(metrics={"archs": results}, figures=figs, predictions=preds)


def _reliability(y, p, cal: dict) -> dict:
    curves = {"as trained": metrics.reliability_bins(y, p)}
    if cal["temperature"] is not None:
        curves[f"T = {cal['temperature']:.2f}"] = metrics.reliability_bins(
            y, metrics.apply_temperature(p, cal["temperature"]))
    return curves


# --------------------------------------------------------------------------- Grad-CAM galleries
def _cam_batch(model, layer, rows, data_dir, class_names, size, mask_column, cfg, device):
    """One batch of ``rows`` through Grad-CAM: uint8 images ``(N, S, S)``, maps, masks (or
    None), predicted classes and their probabilities; and the rows actually read."""
    loader = utils.eval_loader(rows, data_dir, class_names, size, len(rows), 0,
                               mask_column=mask_column)
    batch = next(iter(loader))
    x, masks = batch[0], (batch[3].numpy() if mask_column else None)
    with grad_cam.GradCAM(model, layer, cfg.cam_method) as cam:
        classes, maps = cam(utils.prepare_batch(x, device))
        probs = torch.softmax(cam.logits.float(), 1).cpu().numpy()
    calls = [(class_names[c], float(probs[i, c])) for i, c in enumerate(classes.tolist())]
    return {"gray": x[:, 0].numpy(), "maps": maps, "masks": masks, "preds": calls,
            "classes": classes.numpy()}, loader.dataset.df


def _galleries(models, layers, layer_names, rows, preds, audit_rows, data_dir, class_names,
               mask_column, cfg: EvalConfig, device) -> dict:
    """The comparison gallery (the first ``cam_per_class`` images of each class), the
    misclassified one (images any model got wrong) and the outside-the-lungs one (each model's
    images whose maps the audit found most outside the lungs). An empty gallery is None."""
    wrong = set().union(*(set(p.loc[p["true"] != p["pred"], "path"]) for p in preds.values()))
    picks = {"comparison": rows.groupby("label", group_keys=False).head(cfg.cam_per_class),
             "misclassified": rows[rows["path"].isin(wrong)].head(cfg.cam_max_wrong)}
    out = {}
    for gallery, picked in picks.items():
        if picked.empty:
            out[gallery] = None
            continue
        per_model = {}
        for name, (model, meta) in models.items():
            per_model[name], shown = _cam_batch(model, layers[name], picked, data_dir,
                                                class_names, meta["image_size"], mask_column,
                                                cfg, device)
        raw = [xray_io.read_xray(Path(data_dir) / p) for p in shown["path"]]
        raw_masks = None if mask_column is None else [
            utils.binary_mask(xray_io.read_xray(Path(data_dir) / m)) if m else np.zeros(r.shape, bool)
            for r, m in zip(raw, shown[mask_column])]
        out[gallery] = {"raw": raw, "raw_masks": raw_masks, "labels": shown["label"].tolist(),
                        "models": per_model, "layers": layer_names,
                        "custom_layers": cfg.cam_layers is not None}
    tiles = []
    for name, (picked, worst) in audit_rows.items():
        model, meta = models[name]
        got, _ = _cam_batch(model, layers[name], picked, data_dir, class_names,
                            meta["image_size"], "mask_path", cfg, device)
        for k, (energy, true, pred) in enumerate(zip(worst["energy_in_lungs"], worst["label"],
                                                     worst["predicted"])):
            tiles.append({"gray": got["gray"][k], "map": got["maps"][k], "lungs": got["masks"][k],
                          "caption": f"{name}, {energy:.0%} in lungs\n{class_names[true]} → "
                                     f"{class_names[pred]}"})
    out["outside_lungs"] = {"tiles": tiles, "ncols": cfg.audit_gallery} if tiles else None
    return out


# --------------------------------------------------------------------------- the internal split
def check_split(models: Models, manifest: pd.DataFrame, data_dir, split: str = "test",
                cache_dir: str | None = None) -> pd.DataFrame:
    """Refuse (ValueError) models trained on other classes than the manifest's, or a ``split``
    that holds images a model was trained or validated on byte for byte (content digests, so
    the same split of a copied dataset passes and a re-split does not). Returns the ``split``'s
    near copies of training or validation images (``checkpoints.training_overlap`` columns and
    ``models``), which ``evaluate_split`` leaves out; empty when there are none."""
    names = utils.class_names_from(manifest)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} rows; it has splits "
                         f"{sorted(manifest['split'].unique())}")
    digests = image_cache.content_digests(rows, data_dir, cache_dir)
    fps = ok = None
    if any(checkpoints.has_fingerprints(meta) for _, meta in models.values()):
        fps, ok, _ = near_duplicates.fingerprint_files(
            [Path(data_dir) / p for p in rows["path"]], cache_dir)
    near = []
    for name, (_, meta) in models.items():
        if meta["class_names"] != names:
            raise ValueError(f"{name} was trained on classes {meta['class_names']}; the "
                             f"manifest has {names}")
        near.append(checkpoints.check_trained_on(meta, rows, digests, name, fps, ok, cache_dir)
                    .assign(models=name))
    return merge_overlaps(near)


def merge_overlaps(found: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (image, training twin) over several models' ``training_overlap`` tables
    (each with a ``models`` column): the models joined by ", "."""
    cols = checkpoints.OVERLAP_COLUMNS + ["models"]
    found = [f for f in found if len(f)]
    if not found:
        return pd.DataFrame(columns=cols)
    dup = pd.concat(found, ignore_index=True)
    return (dup.groupby(checkpoints.OVERLAP_COLUMNS, as_index=False, sort=True)["models"]
            .agg(lambda m: ", ".join(sorted(set(m)))))[cols]


def evaluate_split(models: Models, manifest: pd.DataFrame, data_dir, cfg: EvalConfig,
                   device: torch.device, split: str = "test") -> Evaluation:
    """Notebook 3: score every model on the manifest's ``split`` and on the training images it
    drew from (the train split, or its seeded ``max_per_class`` subset), after ``check_split``.
    ``split`` images that are near copies of a model's training or validation images (resized,
    re-encoded, cropped, re-windowed) are left out, with a warning, and listed in
    ``metrics["training_duplicates"]`` (a key present only when there are some).
    ``metrics`` is the whole ``metrics.json``: dataset, creation time, class names, the
    convention, library versions, each model's settings and results."""
    near = check_split(models, manifest, data_dir, split, cfg.cache_dir)
    if len(near):
        warnings.warn(f"{near['path'].nunique()} {split} images are near copies of training or "
                      f"validation images (e.g. {near['path'].iloc[0]} ~ "
                      f"{near['trained_path'].iloc[0]}, score {near['score'].iloc[0]:.3f}); "
                      f"they are left out of the scores: re-split with split_dataset.py, which "
                      f"groups them", stacklevel=2)
    class_names = utils.class_names_from(manifest)
    rows = manifest[(manifest["split"] == split) & ~manifest["path"].isin(set(near["path"]))]
    ev = score_models(models, rows, data_dir, class_names, cfg,
                      device, split, train_rows=manifest[manifest["split"] == "train"])
    ev.metrics = {**header(utils.dataset_info(data_dir), class_names, models),
                  "archs": ev.metrics["archs"]}
    if len(near):
        ev.metrics["training_duplicates"] = near.to_dict(orient="records")
    return ev


def header(dataset: dict, class_names: list[str], models: Models) -> dict:
    """What every metrics.json starts with: the models' training dataset, when it was written,
    the class names, the confusion-matrix convention, library versions, each model's settings."""
    return {"dataset": dataset, "created": now(), "class_names": list(class_names),
            "convention": CONVENTION, "versions": library_versions(),
            "models": {n: model_settings(m) for n, (_, m) in models.items()}}


def now() -> str:
    """The creation stamp of a metrics file: UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
