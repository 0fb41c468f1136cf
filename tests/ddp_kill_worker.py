"""train.py's entry point, with every process SIGKILLed at the start of epoch KILL_AT_EPOCH
(as a crash or a cluster's preemption would): tests/test_distributed.py runs it under torchrun."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
import training  # noqa: E402

_real_train_epoch, _calls = training.train_epoch, []


def _dying_train_epoch(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == int(os.environ["KILL_AT_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_train_epoch(*args, **kwargs)


training.train_epoch = _dying_train_epoch
sys.exit(train.main())
