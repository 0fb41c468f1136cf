"""Figure builders draw the data they are given: axes, labels and values, not just a file."""

import numpy as np
import pandas as pd
import pytest

import metrics
import plot_utils


def test_reliability_figure_plots_the_bins_and_the_diagonal():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    bins = metrics.reliability_bins(y, p, n_bins=10)
    fig = plot_utils.reliability_figure({"before": bins}, title="t")
    ax = fig.axes[0]
    line, diagonal = ax.lines[0], ax.lines[-1]
    full = bins[bins["count"] > 0]
    np.testing.assert_allclose(line.get_xdata(), full["confidence"])
    np.testing.assert_allclose(line.get_ydata(), full["accuracy"])
    np.testing.assert_allclose(diagonal.get_xdata(), [0, 1])
    assert ax.get_legend().get_texts()[0].get_text() == "before"


def test_training_curves_draw_each_history_column_and_the_best_epoch():
    h = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.8, 0.5], "val_loss": [1.1, 0.7, 0.9],
                      "train_acc": [0.4, 0.7, 0.9], "val_acc": [0.5, 0.8, 0.75]})
    fig = plot_utils.training_curves(h, best_epoch=2, title="resnet18")
    loss, acc = fig.axes
    assert (loss.get_ylabel(), acc.get_ylabel()) == ("cross-entropy loss", "accuracy")
    assert loss.get_xlabel() == acc.get_xlabel() == "epoch"
    np.testing.assert_allclose(loss.lines[0].get_ydata(), h["train_loss"])
    np.testing.assert_allclose(loss.lines[1].get_ydata(), h["val_loss"])
    np.testing.assert_allclose(acc.lines[1].get_ydata(), h["val_acc"])
    assert list(acc.lines[2].get_xdata()) == [2, 2]  # the best epoch's dashed line
    assert [t.get_text() for t in acc.get_legend().get_texts()] == [
        "train", "validation", "best epoch 2"]
    assert fig._suptitle.get_text() == "resnet18"


def test_confusion_matrix_shows_counts_or_row_shares_with_true_classes_as_rows():
    cm = np.array([[8, 2], [1, 3]])
    counts = plot_utils.confusion_matrix_figure(cm, ["A", "B"]).axes[0]
    assert [t.get_text() for t in counts.texts] == ["8", "2", "1", "3"]
    assert (counts.get_ylabel(), counts.get_xlabel()) == ("true class", "predicted class")
    assert [t.get_text() for t in counts.get_yticklabels()] == ["A", "B"]
    shares = plot_utils.confusion_matrix_figure(cm, ["A", "B"], normalize=True).axes[0]
    assert [t.get_text() for t in shares.texts] == ["0.80", "0.20", "0.25", "0.75"]
    assert "recall on the diagonal" in shares.get_title()


def test_roc_figure_draws_each_curve_with_its_auc():
    curves = {"COVID": (np.array([0, 0.1, 1]), np.array([0, 0.9, 1]), 0.95),
              "Normal": (np.array([0, 0.5, 1]), np.array([0, 0.5, 1]), 0.5)}
    ax = plot_utils.roc_figure(curves, title="roc").axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0, 0.9, 1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "COVID (AUC 0.950)", "Normal (AUC 0.500)"]
    assert ax.get_xlabel().startswith("false positive rate") and ax.get_title() == "roc"


def test_bar_table_bars_have_the_table_values():
    t = pd.DataFrame({"train": [10, 20], "test": [3, 4]}, index=["A", "B"])
    ax = plot_utils.bar_table(t, title="split", ylabel="images").axes[0]
    assert sorted(p.get_height() for p in ax.patches) == [3, 4, 10, 20]
    assert ax.get_ylabel() == "images" and ax.get_title() == "split"


def test_image_grid_shows_every_image_with_its_title_and_hides_empty_cells():
    imgs = [np.full((4, 4), v, np.uint8) for v in (0, 128, 255)]
    fig = plot_utils.image_grid(imgs, ["a", "b", "c"], ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 4 and len(shown) == 3
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]
    assert shown[1].images[0].get_array()[0, 0] == 128


def test_overlay_cam_is_rgb_and_rings_the_peak():
    gray = np.zeros((64, 64), np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[1, 6] = 1.0  # the peak, top right
    out = plot_utils.overlay_cam(gray, cam, alpha=1.0, peak=True)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    ring = np.argwhere((out == 255).all(2))  # the white ring around the peak
    cy, cx = ring.mean(0)
    assert cy < 32 < cx  # drawn where the map peaks (top right), not elsewhere
    cold = plot_utils.overlay_cam(gray, np.zeros((8, 8)), alpha=1.0)
    assert cold[0, 0, 2] > cold[0, 0, 0]  # jet's cold end is blue in RGB order


def test_overlay_mask_tints_inside_and_outlines_the_mask():
    gray = np.zeros((20, 20), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = plot_utils.overlay_mask(gray, mask, color=(0, 200, 0), alpha=0.5)
    assert out[10, 10, 1] == 100 and out[0, 0].tolist() == [0, 0, 0]
    assert out[5, 10, 1] == 200  # the outline, solid


def test_cam_comparison_titles_each_call_red_when_wrong():
    img = np.zeros((8, 8), np.uint8)
    ov = np.zeros((8, 8, 3), np.uint8)
    fig = plot_utils.cam_comparison([img, img], {"m": [ov, ov]}, ["A", "B"],
                                    {"m": [("A", 0.9), ("A", 0.6)]})
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_title() == "true: A" and axes[0, 1].get_title() == "m: A (0.90)"
    assert axes[0, 1].title.get_color() == "black" and axes[1, 1].title.get_color() == "red"


def test_cam_strip_puts_each_panel_side_by_side_and_checks_its_captions():
    gray = np.full((30, 30), 200, np.uint8)
    out = plot_utils.cam_strip(gray, [np.zeros((30, 30, 3), np.uint8)] * 2, ["a", "b"],
                               title="t", tile=64)
    assert out.shape == (22 + 22 + 64, 3 * 64, 3)
    assert out[-1, 10].tolist() == [200, 200, 200] and out[-1, 64 + 10].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="2 overlays but 1 captions"):
        plot_utils.cam_strip(gray, [np.zeros((30, 30, 3), np.uint8)] * 2, ["a"])


def test_evaluation_figures_names_every_figure_and_skips_empty_galleries():
    data = {"class_names": ["A", "B"], "split": "test",
            "confusion": [("m", "test", [[3, 1], [0, 4]])],
            "roc": {"m": {"A": (np.array([0, 1]), np.array([0, 1]), 0.5)}}, "galleries": {}}
    figs = dict(plot_utils.evaluation_figures(data))
    assert set(figs) == {"confusion_matrices/m_test.png", "confusion_matrices/m_test_normalized.png",
                         "roc/m.png", "grad_cam/comparison.png", "grad_cam/misclassified.png",
                         "grad_cam/outside_lungs.png"}
    assert figs["grad_cam/comparison.png"] is None and figs["grad_cam/outside_lungs.png"] is None
    assert "m test (counts)" == figs["confusion_matrices/m_test.png"].axes[0].get_title()
