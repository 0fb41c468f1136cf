"""seed_sweep.py at a tiny size: what it writes is what evaluation computed, per seed and model."""

import json

import pandas as pd
import pytest

import seed_sweep


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*CAMs are constant")  # a one-epoch model's flat maps
def test_a_sweep_writes_each_seeds_scores_and_a_table_into_the_doc(tmp_path):
    profile = tmp_path / "tiny.yaml"
    profile.write_text("archs: [resnet18]\nsplit: {val: 4, test: 4}\n"
                       "train: {weights: none, image_size: 32, batch_size: 8, epochs: 1, "
                       "num_workers: 0, max_per_class: 12}\n"
                       "evaluate: {num_workers: 0, n_boot: 20, batch_size: 16}\n")
    doc = tmp_path / "doc.md"
    doc.write_text("# Demo\n\ntext before\n")
    out = tmp_path / "sweep"
    said = []
    df = seed_sweep.sweep([5], out, amp=False, doc=doc, say=said.append, profile=str(profile),
                          demo_args=("--per-class", "20", "--size", "64"))
    assert list(df["model"]) == ["resnet18"] and list(df["numeric path"]) == ["fp32"]
    m = json.loads((out / "seed-5" / "metrics.json").read_text())["archs"]["resnet18"]
    assert df["test accuracy"].iat[0] == m["test"]["accuracy"]
    assert df["pointing game"].iat[0] == m["localization"]["pointing_game"]
    assert m["test"]["n"] == 16 and df["training minutes"].iat[0] > 0
    assert pd.read_csv(out / "seed_sweep.csv")["seed"].tolist() == [5]
    s = seed_sweep.summary(df).loc[("fp32", "resnet18")]
    clears = (m["test"]["accuracy"] >= 0.95) and (m["localization"]["pointing_game"] >= 0.5)
    assert s["every seed clears the bars"] == f"{int(clears)} of 1"
    assert s["accuracy min / median"] == f"{m['test']['accuracy']:.3f} / {m['test']['accuracy']:.3f}"
    text = doc.read_text()
    assert text.startswith("# Demo\n\ntext before\n") and seed_sweep.START in text
    assert "| fp32 | resnet18 | 5 |" in text and said and said[0].startswith("seed 5: resnet18 ")
    # a second sweep replaces the block, keeps what is around it and the earlier seed's rows
    doc.write_text(text + "after\n")
    seed_sweep.write_doc(doc, df.assign(seed=6), "a box")
    again = doc.read_text()
    assert again.count(seed_sweep.START) == 1 and again.endswith("after\n")
    assert "Measured on a box" in again and "| 6 | resnet18 |" in again


def test_the_summary_counts_the_seeds_that_clear_each_bar():
    df = pd.DataFrame({"seed": [1, 2, 1, 2], "model": ["vgg16", "vgg16", "resnet18", "resnet18"],
                       "numeric path": ["fp32"] * 4, "training minutes": [5.0, 7.0, 1.0, 1.0],
                       "test accuracy": [0.96, 0.90, 1.0, 0.99],
                       "pointing game": [0.35, 0.6, 0.45, 0.7]})
    s = seed_sweep.summary(df)
    assert s.loc[("fp32", "vgg16"), "every seed clears the bars"] == "1 of 2"  # 0.90 < 0.95
    assert s.loc[("fp32", "resnet18"), "every seed clears the bars"] == "1 of 2"  # 0.45 < 0.5
    assert s.loc[("fp32", "vgg16"), "accuracy min / median"] == "0.900 / 0.930"
    assert s.loc[("fp32", "vgg16"), "training minutes (median)"] == "6.0"
