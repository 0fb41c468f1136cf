import numpy as np
import pytest
from sklearn import metrics as skm

import metrics


def _random(n=300, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed):
    y, p = _random(seed=seed)
    names = ["a", "b", "c", "d"]
    rep = metrics.classification_report(y, p, names, n_boot=200)
    pred = p.argmax(1)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=range(4),
                                                             zero_division=0)
    np.testing.assert_allclose(rep.loc[names, "precision"], prec)
    np.testing.assert_allclose(rep.loc[names, "recall"], rec)
    np.testing.assert_allclose(rep.loc[names, "f1"], f1)
    np.testing.assert_array_equal(rep.loc[names, "support"], sup)
    cm = skm.confusion_matrix(y, pred)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred, 4), cm)
    spec = [(cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]) / (cm.sum() - cm[c].sum())
            for c in range(4)]
    np.testing.assert_allclose(rep.loc[names, "specificity"], spec)
    auc = [skm.roc_auc_score(y == c, p[:, c]) for c in range(4)]
    np.testing.assert_allclose(rep.loc[names, "auc"], auc)
    np.testing.assert_allclose(rep.loc["macro avg", "auc"],
                               skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    np.testing.assert_allclose(rep.loc["macro avg", ["precision", "recall", "f1"]],
                               skm.precision_recall_fscore_support(y, pred, average="macro")[:3])
    np.testing.assert_allclose(rep.loc["weighted avg", ["precision", "recall", "f1"]],
                               skm.precision_recall_fscore_support(y, pred, average="weighted")[:3])
    s = metrics.summary_metrics(y, p, names, n_boot=200)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert s["accuracy_ci"][0] < s["accuracy"] < s["accuracy_ci"][1]
    for m in ("precision", "recall", "specificity", "f1", "auc"):
        assert (rep[f"{m}_lo"] <= rep[m] + 1e-12).all() and (rep[m] <= rep[f"{m}_hi"] + 1e-12).all()


def test_asymmetric_case_rows_are_true_labels():
    """3 classes; class 0 is over-predicted, so its precision < recall (the study swapped them)."""
    y = np.array([0] * 10 + [1] * 10 + [2] * 10)
    pred = np.array([0] * 10 + [0] * 4 + [1] * 6 + [0] * 2 + [2] * 8)
    p = np.eye(3)[pred] * 0.9 + 0.1 / 3
    rep = metrics.classification_report(y, p, ["x", "y", "z"], n_boot=0)
    assert rep.loc["x", "recall"] == 1.0
    assert rep.loc["x", "precision"] == pytest.approx(10 / 16)
    assert rep.loc["y", "recall"] == pytest.approx(0.6) and rep.loc["y", "precision"] == 1.0
    assert rep.loc["x", "specificity"] == pytest.approx(14 / 20)
    cm = metrics.confusion_matrix(y, pred, 3)
    assert cm[1, 0] == 4 and cm[0, 1] == 0   # row = true class


def test_wilson_known_values():
    from scipy.stats import norm
    assert metrics.Z95 == float(norm.ppf(0.975))  # the written constant, to the last bit
    lo, hi = metrics.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = metrics.wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = metrics.wilson_interval(57, 60)
    assert lo == pytest.approx(0.8628, abs=1e-3) and hi == pytest.approx(0.9829, abs=1e-3)
    assert np.isnan(metrics.wilson_interval(0, 0)[0])


def test_roc_points_match_sklearn():
    y, p = _random(seed=4)
    pts = metrics.roc_points(y, p, list("abcd"))
    for c, (fpr, tpr, auc) in enumerate(pts.values()):
        f, t, _ = skm.roc_curve(y == c, p[:, c], drop_intermediate=False)
        np.testing.assert_allclose(fpr, f)
        np.testing.assert_allclose(tpr, t)
        assert auc == pytest.approx(np.trapezoid(tpr, fpr))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        metrics.classification_report([0, 1], np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="class indices"):
        metrics.classification_report([0, 5], np.zeros((2, 2)), ["a", "b"])


def test_macro_averages_leave_out_an_absent_class():
    """Three classes predicted perfectly and a fourth absent from the test set: the macro AUC and
    recall are 1 (over the 3 classes present), not 0.75, and the report says it averaged 3."""
    y = np.repeat([0, 1, 2], 5)
    p = np.full((15, 4), 0.02)
    p[np.arange(15), y] = 0.94
    rep = metrics.classification_report(y, p, list("abcd"), n_boot=100)
    assert np.isnan(rep.loc["d", "recall"]) and np.isnan(rep.loc["d", "auc"])
    assert rep.loc["macro avg", "auc"] == 1.0 and rep.loc["macro avg", "recall"] == 1.0
    assert rep.attrs["macro_classes"] == 3
    s = metrics.summary_metrics(y, p, list("abcd"), n_boot=100)
    assert s["macro_auc"] == 1.0 and s["balanced_accuracy"] == 1.0 and s["macro_classes"] == 3
    assert s["macro_auc_ci"] == [1.0, 1.0]
    # sklearn agrees when told which classes there are
    assert s["balanced_accuracy"] == skm.recall_score(y, p.argmax(1), labels=[0, 1, 2],
                                                      average="macro")


@pytest.mark.slow
def test_bootstrap_intervals_equal_a_brute_force_bootstrap_on_the_same_draws():
    y, p = _random(n=120, seed=4)
    names = list("abcd")
    B, seed = 300, 3
    rep = metrics.classification_report(y, p, names, n_boot=B, seed=seed)
    idx = np.random.default_rng(seed).integers(0, len(y), (B, len(y)))  # metrics._bootstrap's draws
    f1 = np.array([skm.f1_score(y[i], p[i].argmax(1), labels=range(4), average=None,
                                zero_division=0) for i in idx])
    auc = np.array([[skm.roc_auc_score(y[i] == c, p[i][:, c]) for c in range(4)] for i in idx])
    for c, name in enumerate(names):
        lo, hi = np.percentile(f1[:, c], [2.5, 97.5])
        assert rep.loc[name, "f1_lo"] == pytest.approx(lo) and rep.loc[name, "f1_hi"] == pytest.approx(hi)
        lo, hi = np.percentile(auc[:, c], [2.5, 97.5])
        assert rep.loc[name, "auc_lo"] == pytest.approx(lo) and rep.loc[name, "auc_hi"] == pytest.approx(hi)
    for m, values in (("f1", f1.mean(1)), ("auc", auc.mean(1))):
        lo, hi = np.percentile(values, [2.5, 97.5])
        assert rep.loc["macro avg", f"{m}_lo"] == pytest.approx(lo)
        assert rep.loc["macro avg", f"{m}_hi"] == pytest.approx(hi)
    # and the intervals are informative, not [0, 1]
    assert (rep["f1_hi"] - rep["f1_lo"]).max() < 0.5


def test_ece_against_a_hand_computation():
    # top label, confidence, right?: 0 .9 yes | 0 .9 no | 0 .6 yes | 1 .55 yes | 0 .35 no (y = 2)
    p = np.array([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0], [0.2, 0.55, 0.25],
                  [0.35, 0.35, 0.30]])
    y = np.array([0, 1, 0, 1, 2])
    bins = metrics.reliability_bins(y, p, n_bins=3)            # (0, 1/3], (1/3, 2/3], (2/3, 1]
    assert bins["count"].tolist() == [0, 3, 2]
    # (2/3, 1]: accuracy 1/2, confidence 0.9; (1/3, 2/3]: accuracy 2/3, confidence 0.5
    expected = 2 / 5 * abs(0.5 - 0.9) + 3 / 5 * abs(2 / 3 - 0.5)
    assert expected == pytest.approx(0.26)
    assert metrics.expected_calibration_error(y, p, n_bins=3) == pytest.approx(expected)
    assert metrics.expected_calibration_error([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    ece, (lo, hi) = metrics.ece_with_interval(y, p, n_bins=3, n_boot=200)
    assert ece == pytest.approx(expected) and 0 <= lo <= hi <= 1


def test_ece_interval_is_the_percentile_of_the_resampled_tables():
    """The bootstrap re-bins the top labels found once; each resample's ECE must be, to the
    bit, the one computed from that resample's reliability table (the definition)."""
    rng = np.random.default_rng(3)
    for n, c, n_bins in [(7, 2, 3), (120, 4, 15), (333, 5, 10)]:
        z = rng.normal(0, 3, (n, c))
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        y = rng.integers(0, c, n)

        def by_table(i):
            b = metrics.reliability_bins(y[i], p[i], n_bins)
            full = b["count"] > 0
            return float((b.loc[full, "count"] / b["count"].sum()
                          * (b.loc[full, "accuracy"] - b.loc[full, "confidence"]).abs()).sum())

        boots = [by_table(i) for i in metrics.bootstrap_indices(n, 300, 11)]
        ece, ci = metrics.ece_with_interval(y, p, n_bins, n_boot=300, seed=11)
        assert ece == by_table(np.arange(n))
        assert ci == [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.0 * np.eye(c)[y]      # a calibrated model's logits ...
    over = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # ... made 4x too sharp
    half = n // 2                                               # fit on "validation", test on rest
    t = metrics.fit_temperature(y[:half], over[:half])
    assert 3.3 < t < 4.8
    fixed = metrics.apply_temperature(over[half:], t)
    assert (fixed.argmax(1) == over[half:].argmax(1)).all()    # predictions unchanged
    assert metrics.negative_log_likelihood(y[half:], fixed) < \
        metrics.negative_log_likelihood(y[half:], over[half:]) - 0.3
    assert metrics.expected_calibration_error(y[half:], fixed) < \
        0.5 * metrics.expected_calibration_error(y[half:], over[half:])
    np.testing.assert_allclose(metrics.apply_temperature(over, 1.0), over, atol=1e-12)
