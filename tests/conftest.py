"""Shared fixtures: a tiny generated demo dataset and its manifest (CPU, offline)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

import demo_data  # noqa: E402
import split_dataset  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))
REALCXR = ROOT.parent / "shared" / "realcxr"


def project_modules() -> list[str]:
    """The project's own modules: every ``*.py`` at the repository root."""
    return sorted(p.stem for p in ROOT.glob("*.py"))


def pytest_configure(config):
    """A warning raised by any of the project's modules fails the test (unless it expects it):
    the rule is built from the file listing, so no module is left out by a hand-kept list."""
    config.addinivalue_line("filterwarnings", f"error:::({'|'.join(project_modules())})$")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """12 images per class, 299 px, Kaggle images/ + masks/ + lesion_masks/ layout."""
    d = tmp_path_factory.mktemp("demo") / "data"
    demo_data.generate(d, counts={c: 12 for c in demo_data.CLASSES}, seed=1, workers=1,
                       verbose=False)
    return d


@pytest.fixture(scope="session")
def demo_manifest(demo_dir):
    return split_dataset.make_split(demo_dir, val=3, test=3, seed=0, workers=1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_dir, demo_manifest):
    """A ResNet-18 trained for one epoch at 32 px by notebook 2's step (so with its temperature,
    familiarity and conformal records), shared by the evaluation and familiarity tests, which
    only read it (they copy it to change it)."""
    import shutil

    import training
    d = tmp_path_factory.mktemp("trained")
    cfg = training.TrainConfig(epochs=1, batch_size=8, image_size=32, num_workers=0, seed=0)
    training.train_architecture("resnet18", demo_manifest, demo_dir, cfg, torch.device("cpu"),
                                weights=None, models_dir=d / "models", out_dir=d / "out",
                                cache_dir=d / "cache", progress=False)
    yield d / "models" / "resnet18.pt"
    shutil.rmtree(d, ignore_errors=True)


def tree_digest(root: Path) -> dict:
    """path -> (size, sha256) of every file below root, plus the folder list."""
    import hashlib
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = "dir"
    return out
