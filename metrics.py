"""Classification metrics with confidence intervals.

Convention everywhere: confusion matrix rows = true class, columns = predicted class.
(The published study read its matrix the other way round, so its "precision" was recall and its
"recall" was precision; see README.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

# scipy.stats.norm.ppf(0.975) to the last bit (tests/test_metrics.py): scipy.stats is imported
# only where ranks are needed, as its import costs every process 0.4 s
Z95 = 1.959963984540054


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 ``(C, C)`` counts; rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def wilson_interval(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``k`` successes in ``n`` trials (arrays broadcast);
    ``(nan, nan)`` where ``n == 0``."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z ** 2 / n
        centre = (p + z ** 2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / denom
    return centre - half, centre + half


def _rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class counts and rates from confusion matrices ``(..., C, C)``."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(-1).astype(float)            # row sums: true class counts
    predicted = cm.sum(-2).astype(float)          # column sums
    total = cm.sum((-2, -1))[..., None].astype(float)
    fn, fp = support - tp, predicted - tp
    tn = total - tp - fn - fp
    nan = np.full_like(tp, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a class absent from y_true has no recall (NaN: left out of macro averages); a class
        # present but never predicted has precision 0 (scikit-learn's zero_division=0)
        recall = np.where(support > 0, tp / support, nan)
        precision = np.where(predicted > 0, tp / predicted, np.where(support > 0, 0.0, nan))
        specificity = np.where(tn + fp > 0, tn / (tn + fp), nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), nan)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "support": support, "precision": precision,
            "recall": recall, "specificity": specificity, "f1": f1}


def _rankdata(a, **kw) -> np.ndarray:
    """Average ranks (ties share their mean rank): ``scipy.stats.rankdata``."""
    from scipy.stats import rankdata
    return rankdata(a, **kw)


def _ovr_auc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC-AUC per class, for a batch of resamples.

    ``y_true`` int ``(B, N)``, ``y_prob`` ``(B, N, C)`` -> ``(B, C)`` (nan where a class is absent
    or is the only one). Mann-Whitney U with average ranks, i.e. ties count one half.
    """
    B, N, C = y_prob.shape
    out = np.full((B, C), np.nan)
    for c in range(C):
        pos = y_true == c
        n_pos = pos.sum(1)
        n_neg = N - n_pos
        ranks = _rankdata(y_prob[..., c], axis=1)
        u = (ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2
        ok = (n_pos > 0) & (n_neg > 0)
        out[ok, c] = u[ok] / (n_pos[ok] * n_neg[ok])
    return out


def _validate(y_true, y_prob, class_names) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_prob = np.asarray(y_true, np.int64), np.asarray(y_prob, float)
    C = len(class_names)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), C):
        raise ValueError(f"y_prob must have shape (N={len(y_true)}, C={C}) for classes "
                         f"{list(class_names)}, got {y_prob.shape}")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= C):
        raise ValueError(f"y_true must hold class indices 0..{C - 1}, got values in "
                         f"[{y_true.min()}, {y_true.max()}]")
    return y_true, y_prob


def auroc(negatives, positives) -> float:
    """Area under the ROC curve of a score that should be higher for ``positives`` than for
    ``negatives`` (Mann-Whitney U, ties count one half); NaN when either side is empty."""
    neg, pos = np.asarray(negatives, float).ravel(), np.asarray(positives, float).ravel()
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    ranks = _rankdata(np.concatenate([neg, pos]))
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn with replacement from a ``seed``ed generator: the one
    resampling behind every percentile-bootstrap interval of the project."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def bootstrap_means(scores: pd.DataFrame, columns: dict[str, str], n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """``{key: mean of scores[col], key + "_ci": 95% percentile-bootstrap interval}`` for each
    ``key: col`` of ``columns`` (rows resampled with replacement, one ``seed``ed draw shared by
    all columns); NaN rows (e.g. an all-zero map's energy) are left out of their column's mean.
    With no row every value is None."""
    if scores.empty:
        return {k: v for key in columns for k, v in ((key, None), (key + "_ci", None))}
    idx = bootstrap_indices(len(scores), n_boot, seed)  # (B, n)
    out = {}
    for key, col in columns.items():
        v = scores[col].to_numpy(float)
        out[key] = float(np.nanmean(v))
        boots = np.nanmean(v[idx], 1) if n_boot else v[None].mean(1)
        out[key + "_ci"] = [float(np.nanpercentile(boots, 2.5)),
                            float(np.nanpercentile(boots, 97.5))]
    return out


def _bootstrap(y_true, y_prob, n_boot: int, seed: int):
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    yt, yp = y_true[idx], y_prob[idx]                           # (B, N), (B, N, C)
    C = y_prob.shape[1]
    cms = np.stack([confusion_matrix(t, p, C) for t, p in zip(yt, yp.argmax(-1))])  # (B, C, C)
    return _rates(cms), _ovr_auc(yt, yp)


def classification_report(y_true, y_prob, class_names, n_boot: int = 1000, seed: int = 0
                          ) -> pd.DataFrame:
    """Per-class and averaged metrics with 95% confidence intervals.

    ``y_true``: int class indices ``(N,)``; ``y_prob``: scores ``(N, C)`` (softmax), predicted
    class = argmax. Rows: each class, then ``macro avg`` (the mean over the classes where a
    metric is defined: a class absent from ``y_true`` has no recall or AUC and is left out rather
    than counted as 0; ``df.attrs["macro_classes"]`` = classes present) and ``weighted avg``
    (weights = support).
    Columns: ``precision``, ``recall`` (sensitivity), ``specificity``, ``f1``, ``support``,
    ``auc`` (one-vs-rest ROC-AUC), and ``<metric>_lo`` / ``<metric>_hi`` bounds: Wilson intervals
    for per-class precision, recall and specificity; a seeded percentile bootstrap (``n_boot``
    resamples of the N images) for F1 and AUC, and for every metric of the two average rows.

    Convention: the confusion matrix behind it has rows = true class, columns = predicted, so
    precision_c = M[c,c] / column sum and recall_c = M[c,c] / row sum.
    """
    y_true, y_prob = _validate(y_true, y_prob, class_names)
    C = len(class_names)
    cm = confusion_matrix(y_true, y_prob.argmax(1), C)
    r = _rates(cm)
    auc = _ovr_auc(y_true[None], y_prob[None])[0]
    df = pd.DataFrame({k: r[k] for k in ("precision", "recall", "specificity", "f1")},
                      index=list(class_names))
    df["support"] = r["support"].astype(int)
    df["auc"] = auc
    for metric, k, n in (("precision", r["tp"], r["tp"] + r["fp"]),
                         ("recall", r["tp"], r["support"]),
                         ("specificity", r["tn"], r["tn"] + r["fp"])):
        df[f"{metric}_lo"], df[f"{metric}_hi"] = wilson_interval(k, n)
    metrics = ("precision", "recall", "specificity", "f1", "auc")
    w = r["support"] / max(r["support"].sum(), 1)
    if n_boot:
        boot, boot_auc = _bootstrap(y_true, y_prob, n_boot, seed)
        boot["auc"] = boot_auc
        with np.errstate(invalid="ignore"):
            boot_w = boot["support"] / boot["support"].sum(-1, keepdims=True)

        def ci(values):  # (B, ...) -> 2.5 and 97.5 percentiles; NaN for an absent class
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
                return np.nanpercentile(values, [2.5, 97.5], axis=0)
    else:
        boot, boot_w = None, None

        def ci(values):
            return np.full((2,) + np.shape(values)[1:], np.nan)
    for m in ("f1", "auc"):
        df[f"{m}_lo"], df[f"{m}_hi"] = ci(boot[m]) if n_boot else ci(np.zeros((1, C)))
    def macro(values):  # mean over the classes where the metric is defined (not NaN)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            return np.nanmean(values, axis=-1)

    def weighted(values, weights):
        return np.nansum(values * weights, axis=-1)

    for name, avg, weights, bweights in (("macro avg", macro, None, None),
                                         ("weighted avg", weighted, w, boot_w)):
        args, bargs = ((), ()) if weights is None else ((weights,), (bweights,))
        row = {m: float(avg(df[m].to_numpy()[:C], *args)) for m in metrics}
        row["support"] = int(r["support"].sum())
        for m in metrics:
            vals = avg(boot[m], *bargs) if n_boot else np.zeros(1)
            row[f"{m}_lo"], row[f"{m}_hi"] = ci(vals)
        df.loc[name] = pd.Series(row)
    # a class absent from y_true has no recall or AUC: averages run over the classes present
    df.attrs["macro_classes"] = int((r["support"] > 0).sum())
    df["support"] = df["support"].astype(int)
    cols = ["precision", "recall", "specificity", "f1", "support", "auc"]
    cols += [f"{m}_{b}" for m in ("precision", "recall", "specificity", "f1", "auc")
             for b in ("lo", "hi")]
    return df[cols]


def summary_metrics(y_true, y_prob, class_names, n_boot: int = 1000, seed: int = 0,
                    report: pd.DataFrame | None = None) -> dict:
    """Headline numbers as plain floats: ``accuracy`` (Wilson CI), ``balanced_accuracy`` (macro
    recall), ``macro_f1``, ``macro_auc`` (bootstrap CIs; over the ``macro_classes`` classes
    present in ``y_true``), ``n``, and the confusion matrix
    (``confusion_matrix``: rows = true class, columns = predicted). ``report``: this data's
    ``classification_report(y_true, y_prob, class_names, n_boot, seed)`` when already computed
    (its bootstrap is the expensive part), else computed here."""
    y_true, y_prob = _validate(y_true, y_prob, class_names)
    C = len(class_names)
    cm = confusion_matrix(y_true, y_prob.argmax(1), C)
    rep = report if report is not None else classification_report(y_true, y_prob, class_names,
                                                                   n_boot, seed)
    macro = rep.loc["macro avg"]
    acc_lo, acc_hi = wilson_interval(np.trace(cm), cm.sum())
    return {
        "n": int(cm.sum()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "accuracy_ci": [float(acc_lo), float(acc_hi)],
        "balanced_accuracy": float(macro["recall"]),
        "balanced_accuracy_ci": [float(macro["recall_lo"]), float(macro["recall_hi"])],
        "macro_f1": float(macro["f1"]),
        "macro_f1_ci": [float(macro["f1_lo"]), float(macro["f1_hi"])],
        "macro_auc": float(macro["auc"]),
        "macro_auc_ci": [float(macro["auc_lo"]), float(macro["auc_hi"])],
        "macro_classes": rep.attrs["macro_classes"],  # classes present, averaged over
        "confusion_matrix": cm.tolist(),
    }


def roc_points(y_true, y_prob, class_names) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve per class: ``{name: (fpr, tpr, auc)}`` (thresholds at every
    distinct score, ties merged)."""
    y_true, y_prob = _validate(y_true, y_prob, class_names)
    auc = _ovr_auc(y_true[None], y_prob[None])[0]
    out = {}
    for c, name in enumerate(class_names):
        s, pos = y_prob[:, c], y_true == c
        order = np.argsort(-s, kind="stable")
        s, pos = s[order], pos[order]
        last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]   # last index of each distinct score
        tps, fps = np.cumsum(pos)[last], np.cumsum(~pos)[last]
        tpr = np.r_[0, tps / max(pos.sum(), 1)]
        fpr = np.r_[0, fps / max((~pos).sum(), 1)]
        out[name] = (fpr, tpr, float(auc[c]))
    return out


def format_ci(value: float, ci, digits: int = 3) -> str:
    """``"0.950 [0.894, 0.977]"``: a value and its interval, as the notebooks show them."""
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def accuracy_by_group(y_true, y_pred, groups) -> pd.DataFrame:
    """Accuracy per group (e.g. the image's source hospital): index = group (sorted), columns
    ``n``, ``correct``, ``accuracy`` and its 95% Wilson interval ``accuracy_lo``/``_hi``."""
    ok = np.asarray(y_true) == np.asarray(y_pred)
    frame = pd.DataFrame({"group": np.asarray(groups), "ok": ok})
    g = frame.groupby("group")["ok"].agg(n="size", correct="sum")
    lo, hi = wilson_interval(g["correct"].to_numpy(), g["n"].to_numpy())
    return g.assign(accuracy=g["correct"] / g["n"], accuracy_lo=lo, accuracy_hi=hi)


# --------------------------------------------------------------------------- calibration
def _bins(conf: np.ndarray, correct: np.ndarray, n_bins: int):
    """Equal-width bins over (0, 1] of top-label confidences: ``(edges, count, mean confidence,
    accuracy)`` per bin (NaN for an empty bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        acc = np.bincount(which, correct, n_bins) / count
    return edges, count, mean_conf, acc


def _top_label(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class's probability and whether it was right (1.0 / 0.0)."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    return y_prob.max(1), (y_prob.argmax(1) == y_true).astype(float)


def reliability_bins(y_true, y_prob, n_bins: int = 15) -> pd.DataFrame:
    """Top-label reliability table: the predicted class's probability (``confidence``) cut
    into ``n_bins`` equal-width bins over (0, 1]; per bin ``lo``, ``hi``, ``count``, mean
    ``confidence`` and ``accuracy`` (NaN for an empty bin)."""
    edges, count, mean_conf, acc = _bins(*_top_label(y_true, y_prob), n_bins)
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": count,
                         "confidence": mean_conf, "accuracy": acc})


def _ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    _, count, mean_conf, acc = _bins(conf, correct, n_bins)
    full = count > 0
    return float((count[full] / count.sum() * np.abs(acc[full] - mean_conf[full])).sum())


def expected_calibration_error(y_true, y_prob, n_bins: int = 15) -> float:
    """ECE (Guo et al., 2017): sum over ``reliability_bins`` of (count / N) x |accuracy -
    confidence|; 0 for perfectly calibrated top-label probabilities."""
    return _ece(*_top_label(y_true, y_prob), n_bins)


def ece_with_interval(y_true, y_prob, n_bins: int = 15, n_boot: int = 1000, seed: int = 0
                      ) -> tuple[float, list[float]]:
    """``expected_calibration_error`` and its 95% percentile-bootstrap interval over images
    (the top labels are found once; each resample re-bins them)."""
    conf, correct = _top_label(y_true, y_prob)
    ece = _ece(conf, correct, n_bins)
    if not n_boot:
        return ece, [float("nan"), float("nan")]
    idx = bootstrap_indices(len(conf), n_boot, seed)
    boots = [_ece(conf[i], correct[i], n_bins) for i in idx]
    return ece, [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def apply_temperature(y_prob, temperature: float) -> np.ndarray:
    """Softmax probabilities rescaled as if their logits were divided by ``temperature``
    (softmax(log p / T) equals softmax(z / T): the constant log-sum-exp shift cancels)."""
    logp = np.log(np.clip(np.asarray(y_prob, float), 1e-300, None)) / float(temperature)
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def negative_log_likelihood(y_true, y_prob) -> float:
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    return float(-np.mean(np.log(np.clip(y_prob[np.arange(len(y_true)), y_true], 1e-300, None))))


def fit_temperature(y_true, y_prob, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al., 2017): the T in ``bounds`` minimising the negative
    log-likelihood of ``apply_temperature(y_prob, T)`` on held-out (validation) images. It
    changes confidences, never the predicted class. When every held-out image is classified
    correctly the likelihood keeps rising as T -> 0 (no finite minimum: the fit would only
    sharpen the model to 0/1 on the strength of images it already gets right), so T = 1 is
    returned: the probabilities are left as trained."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, float)
    if (y_prob.argmax(1) == y_true).all():
        return 1.0
    from scipy.optimize import minimize_scalar
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda lt: negative_log_likelihood(y_true, apply_temperature(
        y_prob, np.exp(lt))), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))
