"""Figure builders draw the data they are given."""

import numpy as np

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
