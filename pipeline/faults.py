"""Fault injection for the crash tests, so that a kill lands where the test needs it, not by luck.

``PERCEIVER_AV_FAULT`` holds comma-separated ``name=value`` entries (unset in normal use):

- ``kill_driver_after_shards=N``: the preprocessing driver SIGKILLs itself after N shards.
- ``kill_worker_once=PATH``: the first clip task to create PATH SIGKILLs its own worker process.
- ``hang_key=KEY``: the clip task for sample KEY sleeps forever (a hung decode).
- ``crash_key=KEY``: the clip task for sample KEY SIGKILLs its worker process, every time (a decoder
  that segfaults on that file).
- ``kill_train_worker_once=PATH@STEP``: the first Ray Train worker to finish step STEP and
  create PATH SIGKILLs itself (FailureConfig must then restart from the checkpoint).
- ``train_step_delay_s=S``: every training step sleeps S seconds, so a test can kill a run
  between two checkpoints without racing it.

The jobs forward the variable to Ray workers through the job's runtime environment.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "PERCEIVER_AV_FAULT"


def _faults() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def forwarded_env() -> dict[str, str]:
    """The variable for a Ray runtime_env, when it is set."""
    return {ENV: os.environ[ENV]} if ENV in os.environ else {}


def driver_shard_written(count: int) -> None:
    limit = _faults().get("kill_driver_after_shards")
    if limit and count >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_once(marker: str) -> None:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def clip_task_started(key: str) -> None:
    faults = _faults()
    if faults.get("hang_key") == key:
        while True:
            time.sleep(3600)
    if faults.get("crash_key") == key:
        os.kill(os.getpid(), signal.SIGKILL)
    if "kill_worker_once" in faults:
        _kill_once(faults["kill_worker_once"])


def train_step_done(step: int) -> None:
    faults = _faults()
    if "train_step_delay_s" in faults:
        time.sleep(float(faults["train_step_delay_s"]))
    spec = faults.get("kill_train_worker_once")
    if spec:
        marker, at = spec.rsplit("@", 1)
        if step == int(at):
            _kill_once(marker)
