"""A notebook run's log holds tracebacks only for real errors: notebook 2 in a fresh kernel, as
`make run DATA=...` starts it (papermill), on real radiographs with the study's profile (two
loader worker processes) over two epochs."""

import subprocess
import sys

import pytest

import split_dataset
import files
from conftest import REALCXR, ROOT

pytestmark = pytest.mark.slow  # a notebook in a new kernel: `make test-quick` leaves it out


@pytest.mark.skipif(not REALCXR.is_dir(), reason="../shared/realcxr not present")
def test_notebook_2_on_real_data_logs_no_traceback(tmp_path):
    """The notebook's tqdm used to start a second pass of each loader it was given, abandoned
    with worker processes and batches in flight; the next epoch's forked workers inherited it
    and printed "Exception ignored in ... AssertionError: can only test a child process" into
    the log of a run that went on fine (test_data_loading.py has the mechanism)."""
    data = tmp_path / "data"
    data.mkdir()
    for c in ("COVID", "Normal", "Viral Pneumonia"):
        (data / c).symlink_to(REALCXR / c)
    manifest = split_dataset.make_split(data, val=60, test=60, seed=0, workers=1)  # the study's
    files.write_csv_atomic(manifest, tmp_path / "manifest.csv")
    cmd = [sys.executable, "-m", "papermill", "--cwd", str(ROOT), "--log-output", "-k", "python3",
           str(ROOT / "2_finetune_models.ipynb"), str(tmp_path / "nb2.ipynb"),
           "-p", "data_dir", str(data), "-p", "manifest_path", str(tmp_path / "manifest.csv"),
           "-p", "out_dir", str(tmp_path / "out"), "-p", "models_dir", str(tmp_path / "models"),
           "-p", "cache_dir", str(tmp_path / "cache"), "-p", "profile", "study",
           "-y", "archs: [resnet18]", "-p", "weights", "none", "-p", "epochs", "2",
           "-p", "image_size", "64"]
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "resnet18 epoch 2:" in p.stdout and "num_workers" in p.stdout
    for bad in ("Traceback", "Exception ignored", "Error"):
        assert bad not in p.stdout, p.stdout[p.stdout.index(bad) - 500:][:3000]
