"""report.py without a browser: what it gathers, escaping, the banner, and missing inputs."""

import json

import pytest
from PIL import Image

import report


def _metrics(tmp_path, name="demo", synthetic=True):
    t = {"n": 12, "confusion_matrix": [[6, 0], [1, 5]],
         **{k: 0.9 for k in report.METRICS}, **{k + "_ci": [0.8, 0.95] for k in report.METRICS},
         "per_class": {"A": {"precision": 0.857, "precision_lo": 0.5, "precision_hi": 0.97,
                             "recall": 1.0, "recall_lo": 0.6, "recall_hi": 1.0, "support": 6}}}
    m = {"dataset": {"name": name, "synthetic": synthetic}, "created": "today",
         "class_names": ["A", "B"], "convention": "rows = true class",
         "versions": {"torch": "9.9"}, "archs": {"resnet18": {"test": t, "localization": None}}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))


def test_renders_from_metrics_alone_and_escapes(tmp_path):
    _metrics(tmp_path, name="<script>alert(1)</script>")
    html = report.build_report(tmp_path).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "0.900 [0.800, 0.950]" in html and "0.857 [0.500, 0.970]" in html
    assert 'id="synthetic-banner"' in html and "<img" not in html
    assert "No Grad-CAM figures in this run." in html


def test_no_banner_for_real_data_and_images_embedded(tmp_path):
    _metrics(tmp_path, synthetic=False)
    (tmp_path / "roc").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "roc" / "resnet18.png")
    html = report.build_report(tmp_path).read_text()
    assert 'id="synthetic-banner"' not in html
    assert 'src="data:image/png;base64,iVBORw' in html  # embedded, no path to a file


def test_missing_metrics_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="run notebook 3"):
        report.build_report(tmp_path)
    assert report.main(["--out", str(tmp_path)]) == 2
    assert "metrics.json not found" in capsys.readouterr().err
