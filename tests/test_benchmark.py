"""benchmark.py runs end to end at tiny sizes (its numbers are measured by hand, not asserted:
shared machines are noisy)."""

import json

import pytest

import benchmark


@pytest.mark.filterwarnings("ignore:.*CAMs are constant")  # an untrained model's flat maps
def test_predict_mode_measures_predict_and_evaluate(tmp_path):
    assert benchmark.main(["--predict", "--archs", "resnet18", "--images", "12", "--size", "32",
                           "--batch-size", "4", "--device", "cpu", "--work-dir",
                           str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "benchmark_predict.json").read_text())
    assert row["images"] == 12 and row["batch_size"] == 4
    for k in ("bare_img_s", "predict_none_img_s", "predict_gradcam_img_s", "evaluate_img_s"):
        assert row[k] > 0, k
    assert row["ratio_evaluate_vs_predict"] == pytest.approx(
        row["evaluate_img_s"] / row["predict_none_img_s"])


@pytest.mark.slow
def test_training_mode_runs_every_bench_at_a_tiny_size(tmp_path):
    assert benchmark.main(["--archs", "resnet18", "--images", "16", "--size", "32",
                           "--batch-size", "8", "--train-batches", "1", "--device", "cpu",
                           "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "benchmark.json").read_text())
    assert r["images"] == 16 and r["loader"]["ratio"] > 0 and r["matmul_peak"]["tflops"] > 0
    t = r["training"]["resnet18"]
    assert t["ours_vs_bare"] == pytest.approx(t["ours_images_per_s"] / t["bare_images_per_s"])
    assert t["train_flops_per_image"] > 0
