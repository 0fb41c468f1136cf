"""How familiar an image is to a model, and which classes it could be: the out-of-distribution
flag and conformal prediction sets, fitted once after training and kept in the checkpoint.

**Familiarity** (``fit_familiarity``, ``familiarity_scores``). A model's features at its last
stages (``feature_layers``: the last module output at each of the last three feature-map
resolutions, plus the input of its classification head), each globally average-pooled, are
compared with the training images' in the FRODO line (Calli et al., MIDL 2019; Lee et al.,
NeurIPS 2018): per layer, the Mahalanobis distance to the nearest class mean with one shared,
shrunk covariance (Ledoit-Wolf), in the layer's top ``COMPONENTS`` principal directions, plus
the energy left outside them (what the training images never varied in). A last component is
model-free: the Mahalanobis distance of the image's *layout* (``near_duplicates.layouts``:
the equalised 8 x 8 picture of its fingerprint) to the training images' layouts: a chest
radiograph has lungs left and right of a bright mediastinum; a photograph, a CT or MR slice or a
drawing does not. Each component is standardised on the validation images (median and spread);
the model's components are averaged, the layout's are averaged, and the score is the mean of the
two halves, rescaled so that 0 is the median validation image and 1 the threshold, the
validation images' ``RATE`` quantile (95% of them pass): ``ood_score`` above 1 is flagged
(``flagged``). The choice was measured (docs/methods.md, "Familiarity").

**Prediction sets** (``fit_conformal``, ``prediction_sets``): split conformal prediction with the
score 1 - p(true class) on the validation split's calibrated probabilities (Angelopoulos &
Bates; Sadinle et al. 2019): every class whose probability is at least ``1 - qhat`` is in the
set, which then holds the true class with probability at least ``1 - alpha`` on exchangeable
images (the set always keeps the top class, so it is never empty). The validation split also
chose the epoch and the temperature, so the guarantee is approximate; the test split measures
it (``evaluation``).

Both are plain tensors and numbers in the checkpoint's ``meta`` (``checkpoints.META``:
``familiarity``, ``conformal``); nothing here trains, plots or writes files but the refit CLI::

    python familiarity.py MODEL.pt [MODEL.pt ...] --manifest M [--data-dir D] [--alpha 0.1]

which adds both to existing checkpoints from their manifest, leaving the weights untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import config
import near_duplicates

COMPONENTS = 64   # principal directions kept per layer
RATE = 0.95       # share of validation images below the threshold
ALPHA = 0.1       # prediction sets hold the true class at least 90% of the time
VERSION = 1


# --------------------------------------------------------------------------- features
def _pool(t) -> torch.Tensor | None:
    """(N, C) from a module output: 4-D maps averaged over space, token sequences (N, L, C)
    over tokens; None for anything else (tuples, scalars)."""
    if not isinstance(t, torch.Tensor):
        return None
    if t.dim() == 4:
        return t.float().mean((2, 3))
    if t.dim() == 3:
        return t.float().mean(1)
    if t.dim() == 2:
        return t.float()
    return None


def feature_layers(model: nn.Module, image_size: int, head: str | None = None) -> list[str]:
    """The modules whose pooled outputs describe an image: at each of the last three spatial
    resolutions of the model's feature maps (square, wider than 1 pixel, shrinking), the last
    module that outputs it, found by one forward pass of a blank image; then the classification
    head (its *input* is used). Works for any torchvision classifier (a ViT: its patch
    embedding and its head)."""
    order: list[tuple[str, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: order.append(
        (n, tuple(out.shape)) if isinstance(out, torch.Tensor) else (n, ())))
        for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size,
                              device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    stages: list[list] = []  # [resolution, last module name at it], in order, shrinking
    for name, shape in order:
        # a feature map: (N, C, H, W) with H == W (inputs are square; ConvNeXt's and Swin's
        # channels-last (N, H, W, C) tensors are not maps), wider than 1 pixel, and never
        # larger than the last stage's (VGG's adaptive pooling blows 2 x 2 up to 7 x 7)
        if len(shape) != 4 or shape[2] != shape[3] or shape[2] <= 1:
            continue
        if not stages or shape[2] < stages[-1][0]:
            stages.append([shape[2], name])
        elif shape[2] == stages[-1][0]:
            stages[-1][1] = name
    layers = [name for _, name in stages[-3:]]
    head = head or _head_name(model)
    return layers + [head]


def _head_name(model: nn.Module) -> str:
    """The last Linear (or 1x1 Conv2d) of the model: its classification head."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [n for n, m in model.named_modules() if isinstance(m, kind)]
        if found:
            return found[-1]
    raise ValueError(f"{type(model).__name__}: no Linear or Conv2d layer to read features from")


class Features:
    """Context manager: while open, every forward pass of ``model`` stores the pooled output
    (input, for the last name: the head) of ``layers`` in ``self.batch``, float32 (N, C) each."""

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model, self.layers, self.batch, self._hooks = model, layers, {}, []

    def __enter__(self) -> "Features":
        mods = dict(self.model.named_modules())
        missing = [n for n in self.layers if n not in mods]
        if missing:
            raise ValueError(f"the model has no layer {missing[0]!r} (familiarity layers "
                             f"{self.layers})")
        for n in self.layers[:-1]:
            self._hooks.append(mods[n].register_forward_hook(
                lambda m, i, o, n=n: self.batch.__setitem__(n, _pool(o).detach().cpu())))
        head = self.layers[-1]
        self._hooks.append(mods[head].register_forward_pre_hook(
            lambda m, i: self.batch.__setitem__(head, _pool(i[0].flatten(1) if i[0].dim() > 2
                                                             and not isinstance(m, nn.Conv2d)
                                                             else i[0]).detach().cpu())))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


# --------------------------------------------------------------------------- Gaussian fits
def _ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of centred rows ``x`` (N, D) (Ledoit & Wolf, 2004)."""
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    x2 = x ** 2
    beta = ((x2.T @ x2) / n - s ** 2).sum() / n
    delta = ((s - mu * np.eye(d)) ** 2).sum()
    shrink = 0.0 if delta == 0 else min(beta, delta) / delta
    return (1 - shrink) * s + shrink * mu * np.eye(d)


def fit_gaussian(feats: np.ndarray, labels: np.ndarray, k: int = COMPONENTS) -> dict:
    """One layer's statistics from training features (N, C) and labels: ``mean`` (C,),
    ``basis`` (C, k) principal directions (float16), ``class_means`` (K, k), ``precision``
    (k, k) of the within-class scatter (Ledoit-Wolf), ``residual`` (the training images' median
    energy outside the basis)."""
    f = np.asarray(feats, np.float64)
    mean = f.mean(0)
    x = f - mean
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    k = int(min(k, (sv > sv[0] * 1e-6).sum() if len(sv) else 1))
    basis = vt[:k].T                                   # (C, k)
    z = x @ basis
    classes = np.unique(labels)
    cm = np.stack([z[labels == c].mean(0) for c in classes])
    within = z - cm[np.searchsorted(classes, labels)]
    precision = np.linalg.pinv(_ledoit_wolf(within))
    resid = ((x - z @ basis.T) ** 2).sum(1)
    stats = {"mean": mean, "basis": basis, "class_means": cm, "precision": precision,
             "residual": float(np.median(resid)) + 1e-12}
    # the basis (C x k, orthonormal columns: entries <= 1) is the only large part, kept in
    # float16; the rest stays float32 (a precision matrix overflows float16's 65,504)
    return {k_: (torch.from_numpy(v.astype(np.float32)).to(torch.float16 if k_ == "basis"
                                                             else torch.float32)
                 if isinstance(v, np.ndarray) else v) for k_, v in stats.items()}


def gaussian_scores(stats: dict, feats: np.ndarray) -> np.ndarray:
    """(N, 2): the Mahalanobis distance to the nearest class mean in the principal directions,
    and the log of the energy outside them relative to the training images'."""
    t = {k: (v.float().numpy().astype(np.float64) if torch.is_tensor(v) else v)
         for k, v in stats.items()}
    x = np.asarray(feats, np.float64) - t["mean"]
    z = x @ t["basis"]
    d = z[:, None, :] - t["class_means"][None]         # (N, K, k)
    maha = np.einsum("nkd,de,nke->nk", d, t["precision"], d).min(1)
    resid = ((x - z @ t["basis"].T) ** 2).sum(1)
    return np.stack([np.sqrt(np.maximum(maha, 0)), np.log((resid + 1e-12) / t["residual"])], 1)


def layout(fingerprints: np.ndarray) -> np.ndarray:
    """The model-free part: each image's layout, ``near_duplicates.layouts`` of its
    fingerprint (64 numbers)."""
    return near_duplicates.layouts(fingerprints)


@torch.no_grad()
def extract(model: nn.Module, layers: list[str], images, device: torch.device,
            batch_size: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pooled features of ``layers`` (``Features``) and the logits for uint8 images: an array
    (N, S, S) or an iterable of loader batches ``(x uint8 (n, 1, S, S), ...)``. Returns
    ``({layer: float32 (N, C)}, logits float32 (N, K))``."""
    import utils  # torch-side helpers; imported here so the module stays light to import
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(images)[:, None]
        batches = ((t[i:i + batch_size],) for i in range(0, len(t), batch_size))
    else:
        batches = images
    model.eval()
    feats: dict[str, list] = {n: [] for n in layers}
    logits = []
    with Features(model, layers) as f:
        for b in batches:
            if b is None:
                continue
            logits.append(model(utils.prepare_batch(b[0], device)).float().cpu())
            for n in layers:
                feats[n].append(f.batch[n])
    return ({n: torch.cat(v).numpy() for n, v in feats.items()},
            torch.cat(logits).numpy() if logits else np.zeros((0, 0), np.float32))


# --------------------------------------------------------------------------- familiarity
def _components(record: dict, feats: dict[str, np.ndarray], fingerprints: np.ndarray
                ) -> np.ndarray:
    """(N, J) raw components in ``record["components"]`` order."""
    cols = []
    for n in record["layers"]:
        cols.append(gaussian_scores(record["stats"][n], feats[n]))
    cols.append(gaussian_scores(record["layout"], layout(fingerprints)))
    return np.concatenate(cols, 1)


def component_names(layers: list[str]) -> list[str]:
    return [f"{n}:{k}" for n in [*layers, "layout"] for k in ("mahalanobis", "residual")]


def familiarity_scores(record: dict, feats: dict[str, np.ndarray], fingerprints: np.ndarray
                       ) -> np.ndarray:
    """``ood_score`` (N,) of images from their pooled features (``extract``) and
    fingerprints: the mean of the standardised components, rescaled so that 0 is the median
    validation image and 1 the threshold (above 1: flagged)."""
    raw = _combine((_components(record, feats, fingerprints) - record["center"].numpy())
                   / record["scale"].numpy())
    return (raw - record["raw_median"]) / (record["raw_threshold"] - record["raw_median"])


def _combine(z: np.ndarray) -> np.ndarray:
    """The model's standardised components (all but the last two) and the layout's (the last
    two), each averaged, then the two halves averaged: the model-free layout weighs as much as
    the model's own features."""
    return (z[:, :-2].mean(1) + z[:, -2:].mean(1)) / 2


def fit_familiarity(train: tuple[dict, np.ndarray, np.ndarray], val: tuple[dict, np.ndarray],
                    layers: list[str], rate: float = RATE, k: int = COMPONENTS) -> dict:
    """The checkpoint's ``familiarity`` record from the training images' ``(features, labels,
    fingerprints)`` and the validation images' ``(features, fingerprints)``: per layer
    ``fit_gaussian``, the layout's Gaussian, each component's validation median and spread
    (1.4826 x the median absolute deviation), and the validation quantile ``rate`` of the mean
    standardised component (the threshold)."""
    feats, labels, fps = train
    rec = {"version": VERSION, "layers": list(layers), "rate": rate,
           "components": component_names(layers),
           "stats": {n: fit_gaussian(feats[n], labels, k) for n in layers},
           "layout": fit_gaussian(layout(fps), np.zeros(len(fps), int), 32),
           "n_train": int(len(labels)), "n_val": int(len(val[1]))}
    comp = _components(rec, val[0], val[1])
    center = np.median(comp, 0)
    scale = 1.4826 * np.median(np.abs(comp - center), 0) + 1e-6
    raw = _combine((comp - center) / scale)
    rec.update(center=torch.from_numpy(center.astype(np.float32)),
               scale=torch.from_numpy(scale.astype(np.float32)),
               raw_median=float(np.median(raw)), raw_threshold=float(np.quantile(raw, rate)))
    if not np.isfinite(comp).all():
        raise ValueError(f"familiarity: non-finite scores on the validation images (layers "
                         f"{layers}); the features are degenerate")
    if rec["raw_threshold"] <= rec["raw_median"]:
        rec["raw_threshold"] = rec["raw_median"] + 1e-6
    return rec


def flagged(scores: np.ndarray) -> np.ndarray:
    """``out_of_distribution``: the score above the threshold (1 by construction)."""
    return np.asarray(scores) > 1.0


# --------------------------------------------------------------------------- prediction sets
def fit_conformal(probs: np.ndarray, labels: np.ndarray, alpha: float = ALPHA) -> dict:
    """Split conformal prediction on calibrated validation probabilities (N, K): the score
    1 - p(true class) and its finite-sample quantile ``qhat`` (the ceil((n + 1)(1 - alpha))-th
    smallest); ``{"alpha", "qhat", "n", "score"}``."""
    p = np.asarray(probs, np.float64)
    s = 1.0 - p[np.arange(len(p)), np.asarray(labels)]
    n = len(s)
    rank = int(np.ceil((n + 1) * (1 - alpha)))
    qhat = 1.0 if rank > n else float(np.sort(s)[rank - 1])
    return {"alpha": float(alpha), "qhat": qhat, "n": int(n), "score": "1 - p(true class)"}


def prediction_sets(probs: np.ndarray, qhat: float) -> np.ndarray:
    """bool (N, K): the classes whose probability is at least ``1 - qhat``, and always the top
    class (a set is never empty)."""
    p = np.asarray(probs, np.float64)
    sets = p >= 1.0 - qhat - 1e-12
    sets[np.arange(len(p)), p.argmax(1)] = True
    return sets


def set_names(sets: np.ndarray, class_names: list[str]) -> list[str]:
    """Each row's classes joined by ``|`` (CSV form); ``""`` for a row of NaN (unread)."""
    return ["|".join(c for c, on in zip(class_names, row) if on) for row in sets]


# --------------------------------------------------------------------------- fitting a model
def training_rows(manifest, max_per_class: int | None, seed: int):
    """The training images the familiarity is fitted on: the train split's images the model
    trained on (``utils.cap_per_class``: at most ``max_per_class`` per class, drawn with
    ``seed``, as the training loader and evaluation draw them)."""
    import utils
    rows = manifest[manifest["split"] == "train"]
    return utils.cap_per_class(rows, max_per_class, seed).reset_index(drop=True)


def fit_for_checkpoint(model: nn.Module, manifest, data_dir, image_size: int,
                       device: torch.device, temperature: float = 1.0,
                       cache_dir=None, max_per_class: int | None = None, seed: int = 0,
                       batch_size: int = 64, alpha: float = ALPHA) -> tuple[dict, dict]:
    """``(familiarity, conformal)`` records for a trained model from its manifest: features of
    its training images (``training_rows``) and validation images, their fingerprints, and the
    validation images' calibrated probabilities (logits / ``temperature``)."""
    from pathlib import Path

    import utils
    class_names = utils.class_names_from(manifest)
    layers = feature_layers(model, image_size)
    parts = {}
    for name, rows in (("train", training_rows(manifest, max_per_class, seed)),
                       ("val", manifest[manifest["split"] == "val"].reset_index(drop=True))):
        loader = utils.eval_loader(rows, data_dir, class_names, image_size, batch_size, 0,
                                   cache_dir=cache_dir)
        seen: list = []   # (labels, row indices) of the batches read: unreadable rows drop out

        def batches(loader=loader, seen=seen):
            for b in loader:
                if b is not None:
                    seen.append((b[1], b[2]))
                    yield b

        feats, logits = extract(model, layers, batches(), device)
        index = torch.cat([i for _, i in seen]).numpy()
        fps, _, _ = near_duplicates.fingerprint_files(
            [Path(data_dir) / rows["path"].iat[i] for i in index], cache_dir)
        parts[name] = (feats, torch.cat([y for y, _ in seen]).numpy(), fps, logits)
    feats, y, fps, _ = parts["train"]
    vfeats, vy, vfps, vlogits = parts["val"]
    fam = fit_familiarity((feats, y, fps), (vfeats, vfps), layers)
    z = vlogits / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    conf = fit_conformal(p / p.sum(1, keepdims=True), vy, alpha)
    return fam, conf


# --------------------------------------------------------------------------- the refit CLI
def refit(paths: list[str], manifest_path: str, data_dir: str | None = None,
          alpha: float = ALPHA, cache_dir: str | None = config.CACHE_DIR,
          device: str | None = None, say=print) -> int:
    """Add ``familiarity`` and ``conformal`` to existing checkpoints from the manifest they were
    trained with (their weights untouched: ``checkpoints.update_checkpoint_meta``). Refuses a
    manifest whose training or validation images are not the checkpoint's (``data``)."""
    import json
    from pathlib import Path

    import checkpoints
    import image_cache
    import utils
    from runtime import choose_device
    manifest = utils.read_manifest(manifest_path)
    info = Path(manifest_path).with_suffix(".json")
    if data_dir is None and info.is_file():
        data_dir = json.loads(info.read_text()).get("data_dir")
    if data_dir is None:
        raise ValueError(f"{manifest_path}: pass --data-dir (no {info.name} beside it says "
                         f"where its images are)")
    dev = choose_device(device)
    digests = image_cache.content_digests(manifest, data_dir, cache_dir)
    for p in paths:
        model, meta = checkpoints.load_checkpoint(p, dev)
        if meta.get("data") and meta["data"] != image_cache.split_fingerprint(manifest, digests):
            raise ValueError(f"{p} was not trained on {manifest_path} (its split or images "
                             f"differ): refit it with the manifest it was trained with")
        cfg = meta.get("config") or {}  # the same draw and batches as training's own fit
        fam, conf = fit_for_checkpoint(model, manifest, data_dir, meta["image_size"], dev,
                                       meta.get("temperature", 1.0), cache_dir,
                                       cfg.get("max_per_class"), meta.get("seed", 0),
                                       cfg.get("batch_size", 64), alpha=alpha)
        checkpoints.update_checkpoint_meta(p, familiarity=fam, conformal=conf)
        say(f"{p}: familiarity fitted on {fam['n_train']} training and {fam['n_val']} "
            f"validation images (layers {', '.join(fam['layers'])}); prediction sets at "
            f"{1 - alpha:.0%} coverage, qhat {conf['qhat']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(
        prog="familiarity.py",
        description="Add the out-of-distribution flag and conformal prediction sets to trained "
                    "checkpoints, from the manifest they were trained with (weights untouched).")
    p.add_argument("models", nargs="+", metavar="MODEL.pt")
    p.add_argument("--manifest", required=True, help="the split manifest the models trained on")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (default: the one recorded beside the manifest)")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help=f"prediction sets miss the true class at most this often (default "
                        f"{ALPHA})")
    p.add_argument("--cache-dir", default=None,
                   help=f"decoded-image cache (default {config.CACHE_DIR}; 'none': in RAM)")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if not 0 < a.alpha < 1:
        p.error(f"--alpha must be between 0 and 1, got {a.alpha}")
    try:
        return refit(a.models, a.manifest, a.data_dir, a.alpha,
                     config.cache_folder(a.cache_dir), a.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
