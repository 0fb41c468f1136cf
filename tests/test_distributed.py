"""train.py under torchrun (2 CPU processes, gloo) against one process: same weights, same epoch,
a checkpoint notebook 3 loads, kill-and-resume; the sampler's sharding; the replica guard."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import checkpoints
import evaluation
import files
import utils

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("n,batch,world", [(23, 4, 2), (24, 8, 2), (30, 6, 3), (7, 2, 2)])
def test_sampler_shards_are_the_one_process_batches(n, batch, world):
    labels = torch.tensor([i % 3 for i in range(n)] )
    one = utils.WeightedEpochSampler(labels, 3, seed=5, batch_size=batch)
    ranks = [utils.WeightedEpochSampler(labels, 3, seed=5, batch_size=batch, num_replicas=world,
                                        rank=r) for r in range(world)]
    for s in [one, *ranks]:
        s.set_epoch(3)
    total = n - n % world
    one_draw = list(one)[:total]
    per_rank = [list(r) for r in ranks]
    assert all(len(p) == len(r) == total // world for p, r in zip(per_rank, ranks))
    # step by step, the ranks' loader batches put together are the one-process batch
    share = batch // world
    rebuilt = []
    for start in range(0, total // world, share):
        for p in per_rank:
            rebuilt += p[start:start + share]
    assert rebuilt == one_draw
    # another epoch is another draw; the same epoch is the same draw
    one.set_epoch(4)
    assert list(one)[:total] != one_draw
    one.set_epoch(3)
    assert list(one)[:total] == one_draw


def test_sampler_rejects_a_batch_the_processes_cannot_share():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        utils.WeightedEpochSampler(torch.zeros(10, dtype=torch.long), 1, batch_size=5,
                                   num_replicas=2)


# ----------------------------------------------------------------------------- the guard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_replica_guard():
    from ddp_guard_worker import guard
    with mp.Manager() as m:
        result = m.dict()
        mp.spawn(guard, args=(_free_port(), result), nprocs=2)
        got = dict(result)
    assert got[(0, False)] == got[(1, False)] == "agree"
    assert all("rank 1's parameters differ" in got[(r, True)] for r in (0, 1)), got


# ----------------------------------------------------------------------------- train.py
def _args(demo_dir, manifest, out: Path, epochs: int) -> list[str]:
    # random init, no augmentation, frozen batch norm: one process and two must agree
    return ["--data-dir", str(demo_dir), "--manifest", str(manifest), "--archs", "resnet18",
            "--weights", "none", "--image-size", "32", "--batch-size", "8",
            "--epochs", str(epochs), "--patience", "1", "--lr", "3e-5", "--schedule", "constant",
            "--seed", "3", "--num-workers", "0", "--cache-dir", str(out.parent / "cache"),
            "--no-augment", "--freeze-bn", "--no-amp", "--quiet", "--checkpoint-every", "0",
            "--out", str(out / "outputs"), "--models-dir", str(out / "models")]


def _launch(args, nproc: int, script: Path = ROOT / "train.py", **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(script), *args]
    p = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    return p.returncode, p.stdout


def _run(args, nproc: int) -> str:
    rc, out = _launch(args, nproc)
    assert rc == 0, out
    return out


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ddp_runs(demo_dir, demo_manifest, tmp_path_factory):
    """One process and two processes (torchrun), 2 epochs each, same global batch."""
    root = tmp_path_factory.mktemp("ddp")
    manifest = root / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    logs = {}
    for nproc in (1, 2):
        logs[nproc] = _run(_args(demo_dir, manifest, root / f"p{nproc}", 2), nproc)
    yield root, manifest, logs
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(ddp_runs):
    root, _, logs = ddp_runs
    assert "2 process(es)" in logs[2] and "global batch 8 (4 per process)" in logs[2]
    one, two = (_state(root / f"p{n}" / "models" / "resnet18_last.pt") for n in (1, 2))
    assert one["state"]["epoch"] == two["state"]["epoch"] == 2
    assert two["meta"]["world_size"] == 2
    worst = max((one["model_state"][k].double() - two["model_state"][k].double()).abs().max().item()
                for k in one["model_state"] if one["model_state"][k].is_floating_point())
    assert worst < 1e-5, worst
    # and the weights did move: the comparison is not between two untouched models
    torch.manual_seed(3)
    import networks
    init = networks.build_model("resnet18", 4, weights=None).state_dict()
    assert (one["model_state"]["fc.weight"] - init["fc.weight"]).abs().max().item() > 1e-4


@pytest.mark.slow
def test_two_processes_see_the_one_process_epoch_and_metrics(ddp_runs, demo_manifest):
    root, _, _ = ddp_runs
    h1, h2 = (pd.read_csv(root / f"p{n}" / "outputs" / "CSVs" / "resnet18.csv") for n in (1, 2))
    n_train = (demo_manifest["split"] == "train").sum()
    assert h1["train_seen"].tolist() == h2["train_seen"].tolist() == [n_train - n_train % 2] * 2
    for col in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert h1[col].to_numpy() == pytest.approx(h2[col].to_numpy(), abs=1e-5), col
    assert h1["best"].tolist() == h2["best"].tolist()


@pytest.mark.slow
def test_ddp_checkpoint_loads_like_any_other(ddp_runs, demo_dir, demo_manifest):
    root, _, _ = ddp_runs
    model, meta = checkpoints.load_checkpoint(root / "p2" / "models" / "resnet18.pt")
    evaluation.check_split({"resnet18": (model, meta)}, demo_manifest, demo_dir)  # notebook 3's check
    assert meta["arch"] == "resnet18" and meta["image_size"] == 32
    assert not any(k.startswith("module.") for k in model.state_dict())
    assert (root / "p2" / "outputs" / "CSVs" / "training_summary.csv").is_file()
    assert (root / "p2" / "outputs" / "summary_plots" / "resnet18.png").is_file()


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_weights(ddp_runs, demo_dir):
    root, manifest, _ = ddp_runs
    args = _args(demo_dir, manifest, root / "killed", 2)
    last = root / "killed" / "models" / "resnet18_last.pt"
    # both processes SIGKILLed at the start of epoch 2, then the same torchrun command again
    rc, out = _launch(args, 2, ROOT / "tests" / "ddp_kill_worker.py", KILL_AT_EPOCH="2")
    assert rc != 0 and _state(last)["state"]["epoch"] == 1, out
    out = _run(args, 2)
    assert "resuming after epoch 1" in out
    resumed, straight = _state(last), _state(root / "p2" / "models" / "resnet18_last.pt")
    assert resumed["state"]["epoch"] == 2
    for k, v in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][k], v), k
    h = pd.read_csv(root / "killed" / "outputs" / "CSVs" / "resnet18.csv")
    assert h["epoch"].tolist() == [1, 2]


def test_batch_not_divisible_by_processes_is_refused(demo_dir, demo_manifest, tmp_path,
                                                     monkeypatch, capsys):
    """Checked before the processes join (torchrun's WORLD_SIZE), so no process group is
    needed to see it."""
    import torch.distributed as dist

    import train
    manifest = tmp_path / "manifest.csv"
    files.write_csv_atomic(demo_manifest, manifest)
    args = _args(demo_dir, manifest, tmp_path / "odd", 1)
    args[args.index("--batch-size") + 1] = "7"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train.main(args) == 2
    assert "--batch-size [7] is the global batch; it must be a multiple of the 2 processes" \
        in capsys.readouterr().err
    assert not dist.is_initialized() and not (tmp_path / "odd").exists()
