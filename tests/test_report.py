"""report.py without a browser: what it gathers, escaping, the banner, and missing inputs."""

import json

import pandas as pd
import pytest
from PIL import Image

import report
import tables


def _metrics(tmp_path, name="demo", synthetic=True):
    t = {"n": 12, "confusion_matrix": [[6, 0], [1, 5]],
         **{k: 0.9 for k in tables.HEADLINE}, **{k + "_ci": [0.8, 0.95] for k in tables.HEADLINE},
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


def test_tables_show_what_a_reader_needs(tmp_path):
    """No 0, 1, 2 index column, a learning rate that is not 0.000, flags as yes/no, counts as
    counts, and accuracy by source with its interval."""
    _metrics(tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    m["archs"]["resnet18"]["by_source"] = {
        "https://a.invalid": {"n": 30, "correct": 29, "accuracy": 29 / 30,
                              "accuracy_lo": 0.833, "accuracy_hi": 0.994},
        "": {"n": 4, "correct": 2, "accuracy": 0.5}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    (tmp_path / "CSVs").mkdir()
    pd.DataFrame({"arch": ["vgg16"], "val_acc": [1.0], "parameters": [134276932],
                  "lr": [3e-05]}).to_csv(tmp_path / "CSVs" / "training_summary.csv", index=False)
    pd.DataFrame({"statistic": ["mean", "size"], "difference": [1.16, 0.0],
                  "flag": [True, False]}).to_csv(tmp_path / "CSVs" / "shortcut_check.csv",
                                                 index=False)
    ctx = report.report_context(tmp_path)
    assert ctx["training"] == {"columns": ["arch", "val_acc", "parameters", "lr"],
                               "rows": [["vgg16", "1.000", "134,276,932", "3e-05"]]}
    assert ctx["shortcuts"]["columns"] == ["statistic", "difference", "flag"]
    assert [r[2] for r in ctx["shortcuts"]["rows"]] == ["yes", "no"]
    assert ctx["models"][0]["by_source"] == {
        "columns": ["source", "n", "accuracy"],
        "rows": [["https://a.invalid", "30", "0.967 [0.833, 0.994]"], ["(unknown)", "4", "0.500"]]}
    html = report.build_report(tmp_path).read_text()
    assert "<th>index</th>" not in html and "0.967 [0.833, 0.994]" in html


def test_a_named_index_stays_a_column():
    crosstab = pd.DataFrame({"A": [3, 1]}, index=pd.Index(["s1", "s2"], name="source"))
    assert report._table(crosstab, 0) == {"columns": ["source", "A"],
                                          "rows": [["s1", "3"], ["s2", "1"]]}
    assert report._cell(float("nan")) == "n/a" and report._cell(0.0) == "0.000"
    assert report._cell(0.0004) == "0.0004" and report._cell(0.0005) == "0.001"
