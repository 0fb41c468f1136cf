"""Running the notebooks headless (papermill) on the tiny demo set: a module-scoped folder and
the call, shared by the notebook test modules (kept apart so that pytest-xdist runs them on
different workers)."""

import shutil

import pytest

import files
from conftest import ROOT


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_dir, demo_manifest):
    d = tmp_path_factory.mktemp("nb")
    files.write_csv_atomic(demo_manifest, d / "manifest.csv")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(name, run_dir, demo_dir, **params):
    import papermill as pm  # here, not at import: collecting the quick tier needs no papermill
    common = {"data_dir": str(demo_dir), "manifest_path": str(run_dir / "manifest.csv"),
              "out_dir": str(run_dir / "outputs")}
    if not name.startswith("1_"):
        common["cache_dir"] = str(run_dir / "cache")
    pm.execute_notebook(str(ROOT / name), str(run_dir / name), parameters={**common, **params},
                        cwd=str(ROOT), kernel_name="python3", progress_bar=False)


