import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import checkpoints
import inference
import networks
import runtime
import training
import utils

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(demo_dir, demo_manifest):
    names = utils.class_names_from(demo_manifest)
    loaders = utils.make_loaders(demo_manifest, demo_dir, names, 32, batch_size=8,
                                 num_workers=0, seed=0)
    return loaders, names


def _fit(tmp_path, tiny, epochs, tag="run", resume=True, **cfg):
    loaders, names = tiny
    cfg = {"epochs": epochs, "batch_size": 8, "image_size": 32, "num_workers": 0, "seed": 0,
           "patience": 10, "lr": 1e-3, "checkpoint_every": 0, **cfg}
    torch.manual_seed(0)
    model = networks.build_model("resnet18", len(names), weights=None)
    h = training.fit(model, loaders, "resnet18", names, training.TrainConfig(**cfg), torch.device("cpu"),
                  tmp_path / tag / "models", tmp_path / tag / "csv", resume=resume,
                  progress=False)
    return model, h


def _killed_at_call(monkeypatch, name: str, n: int) -> None:
    """``training.<name>`` raises KeyboardInterrupt (a kill) on its n-th call."""
    real, calls = getattr(training, name), []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)
    monkeypatch.setattr(training, name, dying)


def test_checkpoint_round_trip(tmp_path):
    m = networks.build_model("densenet121", 4, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    checkpoints.save_checkpoint(tmp_path / "c.pt", m, arch="densenet121", class_names=list("abcd"),
                                image_size=64, epoch=3, val_loss=0.5, val_acc=0.9, seed=1,
                                config={"lr": 1e-3})
    m2, meta = checkpoints.load_checkpoint(tmp_path / "c.pt")
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert meta["arch"] == "densenet121" and meta["class_names"] == list("abcd")
    assert meta["image_size"] == 64 and meta["epoch"] == 3 and meta["config"]["lr"] == 1e-3
    assert meta["mean"] == list(utils.IMAGENET_MEAN) and "torch" in meta["versions"]
    torch.load(tmp_path / "c.pt", weights_only=True)  # loadable without unpickling code
    # networks.build_model accepts our checkpoint as a weights file (head kept: same classes)
    m3 = networks.build_model("densenet121", 4, weights=tmp_path / "c.pt").eval()
    with torch.no_grad():
        assert torch.equal(m(x), m3(x))
    with pytest.raises(ValueError, match="needs meta"):
        checkpoints.save_checkpoint(tmp_path / "d.pt", m, arch="densenet121")


@pytest.mark.slow
def test_fit_learns_and_writes(tmp_path, tiny):
    loaders, names = tiny
    train_eval = utils.eval_loader(loaders["train"].dataset.df, loaders["train"].dataset.data_dir,
                                   names, 32, num_workers=0)
    torch.manual_seed(0)
    before = inference.validation_pass(networks.build_model("resnet18", 4, weights=None), train_eval,
                            torch.device("cpu"))
    model, h = _fit(tmp_path, tiny, 5, patience=5)
    assert list(h["epoch"]) == [1, 2, 3, 4, 5]
    last = networks.build_model("resnet18", 4, weights=None)
    last.load_state_dict(torch.load(tmp_path / "run" / "models" / "resnet18_last.pt",
                                    weights_only=True)["model_state"])
    after = inference.validation_pass(last, train_eval, torch.device("cpu"))
    assert after["loss"] < before["loss"]
    assert (h["train_seen"] == len(tiny[0]["train"].dataset)).all()
    csv = pd.read_csv(tmp_path / "run" / "csv" / "resnet18.csv")
    assert list(csv.columns) == list(training.HISTORY_COLUMNS) and len(csv) == 5
    best, meta = checkpoints.load_checkpoint(tmp_path / "run" / "models" / "resnet18.pt")
    assert meta["epoch"] == training.best_epoch(h) == int(h.loc[h["best"] == 1, "epoch"].iat[-1])
    for k, v in best.state_dict().items():     # best weights restored into the model
        assert torch.equal(v, model.state_dict()[k]), k
    assert (tmp_path / "run" / "models" / "resnet18_last.pt").is_file()


@pytest.mark.slow
def test_early_stopping(tmp_path, tiny, capsys):
    _, h = _fit(tmp_path, tiny, 10, lr=1e-12, patience=2)  # nothing improves after epoch 1
    assert h["epoch"].tolist() == [1, 2, 3] and h["best"].tolist() == [1, 0, 0]
    assert "early stop at epoch 3; best epoch 1" in capsys.readouterr().out
    last = torch.load(tmp_path / "run" / "models" / "resnet18_last.pt", weights_only=True)
    assert last["state"]["finished"] and last["state"]["bad_epochs"] == 2
    assert checkpoints.load_checkpoint(tmp_path / "run" / "models" / "resnet18.pt")[1]["epoch"] == 1


def _scripted_val(monkeypatch, losses):
    """training.validation_pass returning the given validation losses, one per call."""
    it = iter(losses)
    monkeypatch.setattr(training, "validation_pass",
                        lambda *a, **k: {"loss": next(it), "accuracy": 0.5, "n": 4})


@pytest.mark.slow
def test_best_epoch_is_the_saved_epoch(tmp_path, tiny, monkeypatch):
    # improvements smaller than min_delta (1e-3) do not replace models/<arch>.pt
    _scripted_val(monkeypatch, [1.0, 0.9995, 0.9991, 0.5])
    _, h = _fit(tmp_path, tiny, 4)
    saved = checkpoints.load_checkpoint(tmp_path / "run" / "models" / "resnet18.pt")[1]["epoch"]
    assert h["best"].tolist() == [1, 0, 0, 1] and saved == 4
    _scripted_val(monkeypatch, [1.0, 0.9995, 0.9991])
    _, h = _fit(tmp_path, tiny, 3, tag="small")
    saved = checkpoints.load_checkpoint(tmp_path / "small" / "models" / "resnet18.pt")[1]["epoch"]
    assert saved == 1 and training.summarize_history(h)["best_epoch"] == 1
    assert training.summarize_history(h)["val_loss"] == 1.0
    # a history without the column (older runs) is replayed with the same rule
    assert training.best_epoch(h.drop(columns="best")) == 1


def test_validation_without_a_readable_image_stops(tmp_path, tiny, monkeypatch):
    nothing = torch.utils.data.DataLoader([None, None], batch_size=2,
                                          collate_fn=utils.collate_skip_none)
    ev = inference.validation_pass(networks.build_model("resnet18", 4, weights=None), nothing,
                            torch.device("cpu"))
    assert ev["n"] == 0 and math.isnan(ev["loss"]) and math.isnan(ev["accuracy"])
    loaders, names = tiny
    model = networks.build_model("resnet18", 4, weights=None)
    with pytest.raises(ValueError, match="no validation image could be read"):
        training.fit(model, {"train": loaders["train"], "val": nothing}, "resnet18", names,
                     training.TrainConfig(epochs=1, image_size=32, num_workers=0),
                     torch.device("cpu"), tmp_path / "m", tmp_path / "c", progress=False)
    assert not (tmp_path / "m" / "resnet18.pt").exists()


@pytest.mark.slow
def test_no_history_row_lost_to_a_kill_between_writes(tmp_path, tiny, monkeypatch):
    """Killed while epoch 2's row is written: the resumable state still says epoch 1, so the
    resumed run redoes epoch 2 and the history has every epoch once."""
    _killed_at_call(monkeypatch, "_append_history", 2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, tiny, 3, tag="k")
    monkeypatch.undo()
    _, h = _fit(tmp_path, tiny, 3, tag="k")
    assert pd.read_csv(tmp_path / "k" / "csv" / "resnet18.csv")["epoch"].tolist() == [1, 2, 3]
    assert h["epoch"].tolist() == [1, 2, 3]


@pytest.mark.slow
def test_resume_with_other_epochs_does_not_splice_cosine_schedules(tmp_path, tiny, capsys):
    _fit(tmp_path, tiny, 2, tag="e")
    capsys.readouterr()
    _, h = _fit(tmp_path, tiny, 3, tag="e")
    assert "another config" in capsys.readouterr().out
    _, clean = _fit(tmp_path, tiny, 3, tag="clean")
    assert h["lr"].tolist() == clean["lr"].tolist()
    # with a constant lr, more epochs simply continue
    _fit(tmp_path, tiny, 2, tag="c", schedule="constant")
    capsys.readouterr()
    _, h = _fit(tmp_path, tiny, 3, tag="c", schedule="constant")
    assert "resuming after epoch 2" in capsys.readouterr().out and len(h) == 3


@pytest.mark.slow
def test_warmup_schedule_and_its_resume(tmp_path, tiny):
    _, h = _fit(tmp_path, tiny, 4, tag="w", schedule="constant", warmup_epochs=2)
    assert h["lr"].tolist() == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    last = torch.load(tmp_path / "w" / "models" / "resnet18_last.pt", weights_only=True)
    assert last["state"]["epoch"] == 4  # the scheduler state saved and reloaded with weights_only


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_seeded_runs_equal(tmp_path, tiny, monkeypatch):
    straight, h1 = _fit(tmp_path, tiny, 3, tag="straight")
    again, _ = _fit(tmp_path, tiny, 3, tag="again")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # killed during epoch 3, then resumed with the same config
    _killed_at_call(monkeypatch, "validation_pass", 3)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, tiny, 3, tag="resumed")
    monkeypatch.undo()
    last = tmp_path / "resumed" / "models" / "resnet18_last.pt"
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 2
    assert len(pd.read_csv(tmp_path / "resumed" / "csv" / "resnet18.csv")) == 2
    resumed, h2 = _fit(tmp_path, tiny, 3, tag="resumed")
    assert list(h2["epoch"]) == [1, 2, 3]
    pd.testing.assert_series_equal(h1["val_loss"], h2["val_loss"])
    # final weights equal the uninterrupted run's last-epoch weights
    l1 = torch.load(tmp_path / "straight" / "models" / "resnet18_last.pt", weights_only=True)
    l2 = torch.load(last, weights_only=True)
    for k, v in l1["model_state"].items():
        assert torch.equal(v, l2["model_state"][k]), k
    # a finished run is not retrained
    _, h3 = _fit(tmp_path, tiny, 3, tag="resumed")
    assert len(h3) == 3


@pytest.mark.slow
def test_checkpoints_wait_for_the_interval_and_results_do_not_change(tmp_path, tiny, monkeypatch):
    """With ``checkpoint_every`` longer than the run, the best weights and the resumable state
    are written once, after the last epoch, and equal those of a run that wrote every epoch;
    a kill before then loses the epochs since the last write, and the rerun reaches the same
    weights."""
    writes = []
    real_best, real_last = checkpoints.save_checkpoint, checkpoints.save_resume_state
    monkeypatch.setattr(checkpoints, "save_checkpoint",
                        lambda p, m, **meta: (writes.append(("best", meta["epoch"])),
                                              real_best(p, m, **meta)))
    monkeypatch.setattr(checkpoints, "save_resume_state",
                        lambda p, m, o, sc, g, state, *a, **k: (
                            writes.append(("last", state["epoch"])),
                            real_last(p, m, o, sc, g, state, *a, **k)))
    every, h_every = _fit(tmp_path, tiny, 3, tag="every")
    assert [e for kind, e in writes if kind == "last"] == [1, 2, 3]   # 0: after every epoch
    assert [e for kind, e in writes if kind == "best"] == h_every.loc[h_every["best"] == 1,
                                                                      "epoch"].tolist()
    writes.clear()
    once, h_once = _fit(tmp_path, tiny, 3, tag="once", checkpoint_every=1e9)
    best = training.best_epoch(h_once)
    assert writes == [("best", best), ("last", 3)]
    pd.testing.assert_frame_equal(h_every.drop(columns="seconds"),
                                  h_once.drop(columns="seconds"))
    for tag in ("every", "once"):
        m, meta = checkpoints.load_checkpoint(tmp_path / tag / "models" / "resnet18.pt")
        assert meta["epoch"] == best
        for k, v in m.state_dict().items():   # the best weights, also restored into the model
            assert torch.equal(v, every.state_dict()[k]) and torch.equal(v, once.state_dict()[k])
    # killed in epoch 3 before anything was written: the rows are there, no checkpoint yet
    _killed_at_call(monkeypatch, "validation_pass", 3)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, tiny, 3, tag="killed", checkpoint_every=1e9)
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "models").exists()
    assert len(pd.read_csv(tmp_path / "killed" / "csv" / "resnet18.csv")) == 2
    again, h_again = _fit(tmp_path, tiny, 3, tag="killed", checkpoint_every=1e9)
    assert h_again["epoch"].tolist() == [1, 2, 3]
    for k, v in again.state_dict().items():
        assert torch.equal(v, once.state_dict()[k]), k


def test_writer_waits_checkpoint_every_seconds(tmp_path, monkeypatch):
    """``_Writer`` on a scripted clock: every epoch's row at once; the checkpoints when the
    interval has passed since the last write, and after the last epoch."""
    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])
    writes = []
    monkeypatch.setattr(checkpoints, "save_checkpoint",
                        lambda p, state, **meta: writes.append(("best", meta["epoch"])))
    monkeypatch.setattr(checkpoints, "save_resume_state",
                        lambda p, m, o, sc, g, state, *a, **k:
                        writes.append(("last", state["epoch"])))
    paths = {"history": tmp_path / "h.csv", "best": tmp_path / "b.pt", "last": tmp_path / "l.pt"}
    w = training._Writer(100.0, {"arch": "resnet18"}, paths)
    stopper = training.EarlyStopping(patience=10, min_delta=0.0)
    model = networks.build_model("resnet18", 4, weights=None)
    step = training._Step(None, None, None, False, False)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.8, 0.85, 0.7], start=1):
        clock[0] += 40.0
        improved = stopper.update(epoch, loss, last_epoch=6)
        w.epoch_done({c: epoch for c in training.HISTORY_COLUMNS} | {"val_loss": loss},
                     improved, model, step, stopper)
    # written after epoch 3 (120 s; best epoch 2), epoch 6 (the last; 120 s again, best 6)
    assert writes == [("best", 2), ("last", 3), ("best", 6), ("last", 6)]
    assert len(pd.read_csv(paths["history"], header=None)) == 6


def test_nan_loss_stops_with_clear_error(tmp_path, tiny, monkeypatch):
    loaders, names = tiny
    model = networks.build_model("resnet18", len(names), weights=None)
    model.fc.bias.data.fill_(math.nan)
    cfg = training.TrainConfig(epochs=2, image_size=32, num_workers=0, batch_size=8)
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        training.fit(model, loaders, "resnet18", names, cfg, torch.device("cpu"), tmp_path / "m",
                  tmp_path / "c", progress=False)


def test_predict_and_evaluate(tiny):
    loaders, names = tiny
    model = networks.build_model("resnet18", len(names), weights=None)
    y, p, idx = inference.predict_loader(model, loaders["test"], torch.device("cpu"))
    assert p.shape == (len(y), 4) and abs(p.sum(1) - 1).max() < 1e-6
    assert list(idx) == list(range(len(y)))
    ev = inference.validation_pass(model, loaders["test"], torch.device("cpu"))
    assert ev["n"] == len(y) and abs(ev["accuracy"] - (p.argmax(1) == y).mean()) < 1e-9


@pytest.mark.slow
def test_lr_schedules(tmp_path, tiny):
    _, cosine = _fit(tmp_path, tiny, 3, tag="cos")
    assert cosine["lr"].tolist()[0] == 1e-3 and cosine["lr"].is_monotonic_decreasing
    assert cosine["lr"].iat[-1] < 0.3e-3                 # cos(2/3 pi) -> a quarter, plus eta_min
    _, constant = _fit(tmp_path, tiny, 3, tag="const", schedule="constant")
    assert constant["lr"].tolist() == [1e-3] * 3
    with pytest.raises(ValueError, match="unknown schedule 'step'; valid: cosine, constant"):
        _fit(tmp_path, tiny, 1, tag="bad", schedule="step")


def test_resume_refuses_other_data(tmp_path, tiny, capsys):
    """A finished run is reused only for the same data fingerprint (extra_meta)."""
    loaders, names = tiny
    cfg = training.TrainConfig(epochs=1, batch_size=8, image_size=32, num_workers=0, seed=0)

    def run(fingerprint):
        model = networks.build_model("resnet18", len(names), weights=None)
        training.fit(model, loaders, "resnet18", names, cfg, torch.device("cpu"), tmp_path / "m",
                  tmp_path / "h", progress=False, extra_meta={"data": fingerprint})
        return capsys.readouterr().out

    run("aaa")
    assert "already trained" in run("aaa")
    assert "other data; starting afresh" in run("bbb")


def test_numeric_path_follows_the_cpu_and_is_recorded(tmp_path, tiny, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    path, why = runtime.numeric_path(cpu, speedup=lambda: pytest.fail("probed without bf16"))
    assert path == "fp32" and "no native bf16" in why
    assert runtime.numeric_path(cpu, enabled=False)[0] == "fp32"
    assert "off" in runtime.numeric_path(cpu, enabled=False)[1]
    # a CPU with native bf16 (pretended: emulated here, one tiny epoch): the timed probe
    # decides, and the checkpoint records the path and why; forced off, fp32 unprobed
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    assert runtime.numeric_path(cpu) == ("bf16", "autocast, native bf16 on this CPU")
    assert runtime.numeric_path(cpu, speedup=lambda: 1.5) == (
        "bf16", "autocast, native bf16 on this CPU, a timed step 1.50x as fast as fp32")
    path, why = runtime.numeric_path(cpu, speedup=lambda: 0.42)
    assert path == "fp32" and "0.42x as fast as fp32 (bf16 needs 1.1x)" in why
    probed = []
    for speedup, tag in ((1.5, "bf16"), (0.42, "slow")):
        monkeypatch.setattr(training, "cpu_bf16_speedup",
                            lambda m, arch, size, batch, s=speedup: probed.append(
                                (arch, size, batch)) or s)
        _fit(tmp_path, tiny, 1, tag=tag)
    meta = checkpoints.read_meta(tmp_path / "bf16" / "models" / "resnet18.pt")
    assert meta["numeric_path"] == "bf16" and "1.50x" in meta["numeric_path_reason"]
    meta = checkpoints.read_meta(tmp_path / "slow" / "models" / "resnet18.pt")
    assert meta["numeric_path"] == "fp32" and "0.42x" in meta["numeric_path_reason"]
    assert set(probed) == {("resnet18", 32, 8)}
    probed.clear()
    _fit(tmp_path, tiny, 1, tag="forced", amp=False)
    meta = checkpoints.read_meta(tmp_path / "forced" / "models" / "resnet18.pt")
    assert meta["numeric_path"] == "fp32" and "off" in meta["numeric_path_reason"] and not probed


def test_the_bf16_probe_leaves_the_model_alone_and_is_kept_per_cpu(tmp_path, monkeypatch):
    """The real probe on a small model with batch norm and dropout: a positive speed-up, kept
    in the cache file under this CPU, torch, ISA cap, threads, architecture, size and batch;
    the model's weights, batch-norm statistics and the random stream untouched; a kept value
    is used without measuring."""
    monkeypatch.setattr(runtime, "_SPEEDUPS", {})
    cache = tmp_path / "numeric_path.json"
    torch.manual_seed(5)
    model = networks.build_model("mobilenet_v3_small", 4, weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(6)
    s = runtime.cpu_bf16_speedup(model, "mobilenet_v3_small", 48, 4, cache)
    after_probe = torch.rand(3)
    torch.manual_seed(6)
    assert torch.equal(after_probe, torch.rand(3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    key = runtime._probe_key("mobilenet_v3_small", 48, 4)
    assert s > 0 and json.loads(cache.read_text()) == {key: s}
    assert runtime.cpu_name() in key and "48 px" in key and "batch 4" in key
    # kept: another process (an empty memo) reads the file instead of measuring
    monkeypatch.setattr(runtime, "_SPEEDUPS", {})
    cache.write_text(json.dumps({key: 7.25}))
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: pytest.fail("measured again"))
    assert runtime.cpu_bf16_speedup(model, "mobilenet_v3_small", 48, 4, cache) == 7.25
    # a cache that cannot be written (its folder is a file) is only read: training goes on
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("")
    assert runtime.cpu_bf16_speedup(model, "mobilenet_v3_small", 40, 4,
                                    tmp_path / "a_file" / "numeric_path.json") > 0


@pytest.mark.skipif(not runtime.cpu_bf16_supported(), reason="the CPU has no native bf16")
def test_the_probe_sees_bf16_that_the_cpu_flag_promises_but_onednn_cannot_run():
    """oneDNN held to AVX512 without BF16 (ONEDNN_MAX_CPU_ISA): the CPU flag still says bf16,
    but emulated bf16 runs at about 0.4-0.6x fp32's speed; the probe finds that and training
    takes fp32. The pytest workers share the cores with the probe's subprocess: one probe
    under that load once measured 1.11x (alone: 0.47-0.51x), so the median of three decides."""
    code = ("import statistics, torch, runtime, networks\n"
            "m = networks.build_model('resnet18', 4, weights=None)\n"
            "s = []\n"
            "for _ in range(3):\n"
            "    runtime._SPEEDUPS.clear()\n"
            "    s.append(runtime.cpu_bf16_speedup(m, 'resnet18', 96, 8, None))\n"
            "print(runtime.cpu_bf16_supported(), runtime.numeric_path(torch.device('cpu'), True, "
            "lambda: statistics.median(s)), s)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True ('fp32', 'native bf16 on this CPU, but a timed step"), \
        out.stdout


_FAULTS = """
import json, resource, torch, runtime
def faults(rounds):
    out = []
    for _ in range(rounds):  # a 64 MB block allocated, touched and freed: minor page faults
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 * 2**20)
        del x
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out
before = faults(4)
device = runtime.choose_device("cpu")
print(json.dumps([runtime.keep_freed_memory(), before, faults(10)]))
"""


@pytest.mark.skipif(sys.platform != "linux" or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's malloc only")
@pytest.mark.parametrize("env", [{}, {"MALLOC_MMAP_MAX_": "65536"}], ids=["default", "opted-out"])
def test_a_cpu_device_keeps_freed_memory_instead_of_faulting_it_in_again(env):
    """By default glibc returns a freed 64 MB block to the OS and the next one faults in again
    page by page (16,384 faults of 4 KiB pages); once ``choose_device`` picked the CPU, freed memory is
    reused. Torch asks for 64-byte aligned blocks, and a freed one that did not merge into the
    heap's top is a little too small for the next such request, so the heap grows by a block or
    two before the free ones coalesce: measured in 40 processes, the faulting rounds were among
    the first five (2 to 4 of them), none later. glibc's own variable in the environment is
    left alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, before, after = json.loads(out.stdout)
    assert min(before[1:]) >= 32, before  # 16,384 pages of 4 KiB (32 of 2 MiB with huge pages)
    if env.get("MALLOC_MMAP_MAX_"):
        assert not applied and min(after[1:]) >= min(before[1:]) // 2, after
    else:
        assert applied and max(after[-4:]) <= min(before[1:]) // 4, after


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight
    labels = torch.tensor([0] * 150 + [1] * 150 + [2] * 150 + [3] * 74)  # the demo's VGG-16 draw
    w = training.class_weights(labels, 4, "balanced")
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels.numpy())
    assert torch.allclose(w.double(), torch.tensor(expected), rtol=1e-6)
    assert w[3] > 2 * w[0]  # the small class weighs twice as much
    assert training.class_weights(labels, 4, None) is None
    assert training.class_weights(labels, 4, "none") is None
    # a class with no training image has no loss to weight; the others as if it were absent
    w = training.class_weights(torch.tensor([0, 0, 1, 3]), 4, "balanced")
    assert w.tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match='expected "balanced" or "none", got .balancd'):
        training.class_weights(labels, 4, "balancd")
    with pytest.raises(ValueError, match="needs the training labels"):
        training.class_weights(None, 4, "balanced")
    with pytest.raises(ValueError, match="only 2 classes"):
        training.class_weights(labels, 2, "balanced")


def test_train_epoch_weights_the_loss_by_class():
    """The returned loss of a one-batch epoch is the cross-entropy of the logits before the
    step, weighted by ``class_weight`` (torch's weighted mean), and the weights change it."""
    torch.manual_seed(0)
    x = torch.randint(0, 255, (6, 1, 16, 16), dtype=torch.uint8)
    y = torch.tensor([0, 0, 0, 0, 1, 2])
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=6)
    w = torch.tensor([0.5, 2.0, 3.0])

    def one_epoch(weight):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
        with torch.no_grad():
            logits = model(utils.prepare_batch(x, torch.device("cpu"), augment=False,
                                               channels_last=False))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        out = training.train_epoch(model, loader, opt, torch.amp.GradScaler("cuda", enabled=False),
                                   torch.device("cpu"), amp=False, channels_last=False,
                                   augment=False, class_weight=weight)
        return out["loss"], float(torch.nn.functional.cross_entropy(logits, y, weight=weight))

    weighted, expected = one_epoch(w)
    plain, expected_plain = one_epoch(None)
    assert weighted == pytest.approx(expected, rel=1e-5)
    assert plain == pytest.approx(expected_plain, rel=1e-5)
    assert abs(weighted - plain) > 1e-3


def test_fit_passes_the_balanced_weights_of_the_training_images(tmp_path, demo_dir,
                                                                demo_manifest, monkeypatch,
                                                                capsys):
    from sklearn.utils.class_weight import compute_class_weight
    names = utils.class_names_from(demo_manifest)
    train = demo_manifest[demo_manifest["split"] == "train"]
    fewer = train[train["label"] == names[-1]].index[:4]  # the last class 2 images, not 6
    loaders = utils.make_loaders(demo_manifest.drop(index=fewer), demo_dir, names, 32,
                                 batch_size=8, num_workers=0, seed=0, splits=("train", "val"))
    tiny = loaders, names
    seen = []
    real = training.train_epoch

    def spy(*a, **k):
        seen.append(k.get("class_weight"))
        return real(*a, **k)
    monkeypatch.setattr(training, "train_epoch", spy)
    _fit(tmp_path, tiny, 1, tag="balanced", class_weight="balanced")
    _fit(tmp_path, tiny, 1, tag="plain")
    labels = loaders["train"].dataset.labels.numpy()
    expected = compute_class_weight("balanced", classes=np.arange(len(names)), y=labels)
    assert np.bincount(labels).tolist() == [6, 6, 6, 2]
    assert seen[0].tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert seen[1] is None
    assert f"class weights (balanced) {names[0]} {expected[0]:.3f}" in capsys.readouterr().out
