"""One live run per output directory.

A run writes ``<out>/_run.lock`` (JSON: run id, host, pid, start time, heartbeat) and refreshes
the heartbeat while it lives. A second run on the same directory is refused with one line that
names the holder. A lock whose holder is gone does not block forever: on the same host a dead
pid frees it at once; from another host a heartbeat older than ``stale_after_s`` does.
On an object store a finished run overwrites the lock with a "released" record instead of deleting it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from pipeline import storage

LOCK_NAME = "_run.lock"
_HELD: set[str] = set()  # run ids this process holds: its own pid in a lock it does not hold is a reused pid
log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live run holds the output directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, out: storage.Location, job: str, heartbeat_s: float = 10.0, stale_after_s: float = 60.0):
        self.out, self.job = out, job
        self.path = out.join(LOCK_NAME)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.record = {"run_id": uuid.uuid4().hex[:12], "job": job, "host": socket.gethostname(),
                       "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()

    def _holder(self) -> dict | None:
        """The lock's record; None without a lock file; {"heartbeat": mtime} if it cannot be read
        (a run killed between creating and writing it), which goes stale like a silent heartbeat."""
        info = storage.file_info(self.out.fs, self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            held = json.loads(storage.read_bytes(self.out.fs, self.path))
            return None if held.get("released") else held
        except storage.ObjectStoreError:  # the store refused: a real error, not a torn lock
            raise
        except (ValueError, OSError):
            return {"heartbeat": info.mtime.timestamp() if info.mtime else 0.0}

    def _is_live(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            if pid == os.getpid():
                return holder.get("run_id") in _HELD
            return _pid_alive(pid)
        return time.time() - float(holder.get("heartbeat", 0)) < self.stale_after_s

    def _write(self) -> None:
        storage.write_bytes(self.out.fs, self.path, json.dumps(dict(self.record, heartbeat=time.time())).encode())

    def _refuse(self, holder: dict) -> None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise RunLockedError(
            f"{self.out.shown} is in use by a live {holder.get('job', 'run')} (run {holder.get('run_id')}, "
            f"pid {holder.get('pid')} on {holder.get('host')}, started {started}): wait for it, "
            f"stop it, or choose another output directory")

    def acquire(self) -> RunLock:
        holder = self._holder()
        if holder and self._is_live(holder):
            self._refuse(holder)
        if holder is None and self.out.is_local:
            # Two runs starting at once: only one creates the file; the other judges the winner.
            os.makedirs(self.out.path, exist_ok=True)
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                time.sleep(0.5)
                holder = self._holder() or {}
                if self._is_live(holder):
                    self._refuse({"job": "run", "run_id": "starting now", **holder})
        self._write()
        _HELD.add(self.record["run_id"])
        threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError as err:  # keep beating: a silent lock would let another run take over
                log.warning("could not refresh the run lock %s: %s", self.path, err)

    def release(self) -> None:
        self._stop.set()
        _HELD.discard(self.record["run_id"])
        holder = self._holder()
        if holder and holder.get("run_id") == self.record["run_id"]:
            if self.out.is_local:
                os.unlink(self.path)
            else:  # pyarrow's S3 delete puts a folder marker back, which file-backed servers refuse
                storage.write_bytes(self.out.fs, self.path, json.dumps({"released": time.time()}).encode())

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
