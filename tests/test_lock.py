"""One live run per output directory; a dead run's lock frees itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from pipeline.lock import RunLock, RunLockedError
from pipeline.storage import locate


def _plant(tmp_path, **holder) -> None:
    base = {"run_id": "old", "job": "train", "host": socket.gethostname(), "pid": 1, "started": 0,
            "heartbeat": time.time()}
    (tmp_path / "_run.lock").write_text(json.dumps({**base, **holder}))


def test_a_live_run_refuses_a_second_with_one_line_naming_it(tmp_path):
    with RunLock(locate(tmp_path), "train") as first:
        with pytest.raises(RunLockedError) as err:
            RunLock(locate(tmp_path), "train").acquire()
    message = str(err.value)
    assert "\n" not in message and first.record["run_id"] in message and str(first.record["pid"]) in message
    assert not (tmp_path / "_run.lock").exists()  # released on exit


def test_a_dead_pid_on_this_host_frees_the_lock(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(tmp_path, pid=dead.pid)
    RunLock(locate(tmp_path), "train").acquire().release()


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh_and_not_after(tmp_path):
    _plant(tmp_path, host="elsewhere", heartbeat=time.time())
    with pytest.raises(RunLockedError, match="elsewhere"):
        RunLock(locate(tmp_path), "train").acquire()
    _plant(tmp_path, host="elsewhere", heartbeat=time.time() - 600)
    RunLock(locate(tmp_path), "train").acquire().release()


def test_the_heartbeat_keeps_moving(tmp_path):
    with RunLock(locate(tmp_path), "train", heartbeat_s=0.1):
        first = json.loads((tmp_path / "_run.lock").read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "_run.lock").read_text())["heartbeat"] > first


def test_an_unreadable_lock_file_goes_stale(tmp_path):
    (tmp_path / "_run.lock").write_bytes(b"")  # killed between creating and writing it
    with pytest.raises(RunLockedError):
        RunLock(locate(tmp_path), "train").acquire()
    old = time.time() - 600
    import os

    os.utime(tmp_path / "_run.lock", (old, old))
    RunLock(locate(tmp_path), "train").acquire().release()


def test_our_own_pid_in_a_lock_we_do_not_hold_is_a_reused_pid(tmp_path):
    import os

    _plant(tmp_path, pid=os.getpid(), run_id="from-a-previous-container")
    RunLock(locate(tmp_path), "train").acquire().release()
