"""runtime.check_replicas_agree in two gloo processes (tests/test_distributed.py spawns it): a
module of its own, so that each spawned process imports torch and runtime only."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402


def guard(rank: int, port: int, result) -> None:
    """Rank ``rank`` of 2: the guard on identical replicas, then with rank 1's bias moved by
    1e-6; what each call said goes to ``result[(rank, perturbed)]``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for perturb in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        if perturb and rank == 1:
            with torch.no_grad():
                model.bias[0] += 1e-6
        try:
            runtime.check_replicas_agree(model, torch.device("cpu"))
            result[(rank, perturb)] = "agree"
        except RuntimeError as e:
            result[(rank, perturb)] = str(e)
    dist.destroy_process_group()
