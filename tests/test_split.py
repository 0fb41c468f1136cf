import shutil
import subprocess
import sys

import pandas as pd
import pytest

import split_dataset
from conftest import ROOT, tree_digest


@pytest.fixture()
def messy_tree(demo_dir, tmp_path):
    """A copy of the demo tree plus broken files, junk, metadata and duplicates."""
    d = tmp_path / "ds"
    shutil.copytree(demo_dir, d)
    cov = d / "COVID" / "images"
    (cov / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (cov / "empty.png").write_bytes(b"")
    good = (cov / "COVID-1.png").read_bytes()
    (cov / "truncated.png").write_bytes(good[: len(good) // 2])
    (cov / "notes.txt").write_text("not an image")
    (cov / ".DS_Store").write_bytes(b"junk")
    (cov / "COVID-1 copy.png").write_bytes(good)                       # same-class duplicate
    shutil.copy(cov / "COVID-2.png", d / "Normal" / "images" / "dup of COVID-2.png")  # cross-class
    (d / "COVID.metadata.xlsx").write_bytes(b"PK not really xlsx")
    (d / "README.md.txt").write_text("readme")
    (cov / "folder.png").mkdir()
    (cov / "dangling.png").symlink_to(d / "nowhere.png")
    return d


def test_split_counts_disjoint_and_masks(demo_manifest):
    m = demo_manifest
    assert list(m.columns[:4]) == ["path", "label", "split", "group"]
    assert {"mask_path", "lesion_mask_path"} <= set(m.columns)
    t = split_dataset.split_table(m)
    assert (t.loc[t.index != "total", "val"] == 3).all()
    assert (t.loc[t.index != "total", "test"] == 3).all()
    assert (t.loc[t.index != "total", "train"] == 6).all()
    assert m["path"].is_unique
    assert (m["mask_path"] != "").all()
    assert (m.loc[m["label"] == "Normal", "lesion_mask_path"] == "").all()


def test_split_is_seeded(demo_dir):
    a = split_dataset.make_split(demo_dir, 3, 3, seed=1, workers=1)
    b = split_dataset.make_split(demo_dir, 3, 3, seed=1, workers=1)
    c = split_dataset.make_split(demo_dir, 3, 3, seed=2, workers=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c.set_index("path").loc[a["path"], "split"].reset_index(drop=True))


def test_fractions(demo_dir):
    m = split_dataset.make_split(demo_dir, val=0.25, test=0.25, seed=0, workers=1)
    assert (m.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 3).all()


def test_class_too_small_raises(demo_dir):
    with pytest.raises(ValueError, match="cannot hold val=6 \\+ test=6"):
        split_dataset.make_split(demo_dir, val=6, test=6, workers=1)


def test_messy_tree_rejects_duplicates_and_never_writes(messy_tree, tmp_path):
    before = tree_digest(messy_tree)
    out = tmp_path / "out" / "manifest.csv"
    cmd = [sys.executable, str(ROOT / "split_dataset.py"), str(messy_tree), "--manifest", str(out),
           "--val", "3", "--test", "3", "--workers", "2", "--cache-dir", "none"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert tree_digest(messy_tree) == before            # nothing written, moved or deleted
    first = out.read_bytes()
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r2.returncode == 0 and out.read_bytes() == first  # byte-identical rerun

    m = pd.read_csv(out, keep_default_na=False)
    rej = pd.read_csv(split_dataset.rejects_path(out))
    rejected = dict(zip(rej["path"], rej["reason"]))
    for name in ("broken.png", "empty.png", "truncated.png", "notes.txt", "folder.png",
                 "dangling.png"):
        assert f"COVID/images/{name}" in rejected, name
    assert "folder" in rejected["COVID/images/folder.png"]
    assert "link" in rejected["COVID/images/dangling.png"]
    assert not any(".DS_Store" in p or "xlsx" in p for p in list(m["path"]) + list(rej["path"]))
    # every valid image is kept: 48 generated + 2 duplicates
    assert len(m) == 50
    assert "6 rejected" in r.stdout and "COVID" in r.stdout
    # duplicate groups never straddle splits
    assert (m.groupby("group")["split"].nunique() == 1).all()
    g = m.set_index("path")["group"]
    assert g["COVID/images/COVID-1 copy.png"] == g["COVID/images/COVID-1.png"]
    assert g["Normal/images/dup of COVID-2.png"] == g["COVID/images/COVID-2.png"]
    assert "several classes" in r.stdout and "dup of COVID-2.png" in r.stdout


def test_flat_layout(demo_dir, tmp_path):
    """The older Kaggle release: class folders holding the PNGs directly."""
    flat = tmp_path / "flat"
    for c in ("COVID", "Normal", "Viral Pneumonia"):
        (flat / c).mkdir(parents=True)
        for p in sorted((demo_dir / c / "images").iterdir())[:8]:
            shutil.copy(p, flat / c / p.name)
    m = split_dataset.make_split(flat, val=2, test=2, workers=1)
    assert sorted(m["label"].unique()) == ["COVID", "Normal", "Viral Pneumonia"]
    assert list(m.columns) == ["path", "label", "split", "group"]
    assert m["path"].str.count("/").eq(1).all()


def test_out_inside_dataset_refused(demo_dir):
    r = subprocess.run([sys.executable, str(ROOT / "split_dataset.py"), str(demo_dir), "--manifest",
                        str(demo_dir / "m.csv")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "inside the dataset folder" in r.stderr
    assert not (demo_dir / "m.csv").exists()


def test_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        split_dataset.make_split(tmp_path / "nope")


def test_manifest_left_by_a_killed_split_is_not_reused(demo_dir, tmp_path, capsys):
    """A split killed between writing its CSV and its JSON leaves a new CSV beside the old JSON;
    the JSON holds the CSV's hash, so a later run notices and splits again."""
    out = tmp_path / "manifest.csv"
    args = [str(demo_dir), "--out", str(out), "--val", "3", "--test", "3", "--workers", "1",
            "--cache-dir", "none"]
    assert split_dataset.main(args + ["--seed", "0"]) == 0
    seed0 = out.read_bytes()
    other = split_dataset.make_split(demo_dir, val=3, test=3, seed=1, workers=1)
    split_dataset.write_csv_atomic(other, out)  # the killed seed-1 run's CSV, JSON not yet written
    assert out.read_bytes() != seed0
    capsys.readouterr()
    assert split_dataset.main(args + ["--seed", "0"]) == 0
    assert "re-splitting" in capsys.readouterr().out
    assert out.read_bytes() == seed0
    assert split_dataset.main(args + ["--seed", "0"]) == 0  # now the pair agrees: reused
    assert "reusing it" in capsys.readouterr().out
