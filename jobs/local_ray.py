"""A local Ray head started the way a user starts one (for the demo and the tests), stopped for sure.

``ray start --head --block`` runs in its own session; SIGTERM to it stops every process of that
cluster (and only that cluster), so a failing test cannot leave Ray running. ``start_node`` joins
a second node to it the way a user adds a machine (``ray start --address``), optionally in its own
mount namespace so that it cannot see a folder, as a machine without the shared mount would not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project root: jobs run from here
BIN = Path(sys.executable).parent
# What `ray job submit` prints when the job is accepted, and when a new head cannot take jobs yet.
SUBMITTED = "submitted successfully"
NO_AGENT = "No available agent to submit job"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str  # GCS address for ray.init / RAY_ADDRESS
    dashboard: str  # job server URL for `ray job submit --address`
    env: dict[str, str]  # environment for clients of this cluster
    process: subprocess.Popen

    def run(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a project command as a client of this cluster (``RAY_ADDRESS`` set)."""
        kw.setdefault("env", self.env)  # a test may hand in a changed copy of it
        result = subprocess.run([*args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                                 f"--- stderr\n{result.stderr[-4000:]}")
        return result

    @property
    def _submit(self) -> tuple[str, ...]:
        return str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", ".", "--"

    def job(self, *entrypoint: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir .`` as a user would, waiting for the job to end."""
        for _ in range(30):
            result = self.run(*self._submit, *entrypoint, timeout=timeout, check=False)
            # A head that has just come up may not have started its job agent yet: Ray says to retry.
            if NO_AGENT not in result.stderr:
                break
            time.sleep(2)
        if check and result.returncode != 0:
            raise AssertionError(f"{entrypoint} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                                 f"--- stderr\n{result.stderr[-4000:]}")
        return result

    def job_lines(self, *entrypoint: str) -> Iterator[str]:
        """``ray job submit --working-dir .`` as ``job`` does, yielding its output lines (stdout and stderr
        together, without line ends) while the job runs; raises ``JobFailed`` after the last one if it failed.

        Lines are held back until Ray has accepted the job, so a try that the head refuses while its job
        agent is still starting (retried, as ``job`` does) yields nothing. Leaving the loop early stops
        following the job's logs, not the job.
        """
        for _ in range(30):
            process = subprocess.Popen([*self._submit, *entrypoint], cwd=ROOT, env=self.env, text=True,
                                       errors="replace", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            held: list[str] | None = []  # None once Ray has accepted the job
            tail: deque[str] = deque(maxlen=200)
            try:
                for line in process.stdout:
                    line = line.rstrip("\n")
                    tail.append(line)
                    if held is None:
                        yield line
                    elif SUBMITTED in line:
                        yield from (*held, line)
                        held = None
                    else:
                        held.append(line)
            finally:
                if process.poll() is None:  # the caller left the loop (or was interrupted) before the end
                    process.kill()
                process.wait()
                process.stdout.close()
            if held is None or not any(NO_AGENT in line for line in tail):
                break
            time.sleep(2)
        yield from held or ()  # never accepted: what `ray job submit` said instead
        if process.returncode != 0:
            raise JobFailed(process.returncode, list(tail))

    def stop(self) -> None:
        _stop(self.process)


class JobFailed(RuntimeError):
    """A job of ``Cluster.job_lines`` that ended with a nonzero exit status; ``lines``: its output's end."""

    def __init__(self, returncode: int, lines: list[str]):
        super().__init__(f"ray job submit exited {returncode}")
        self.returncode, self.lines = returncode, lines


@dataclass
class Node:
    """A node that joined a ``Cluster``."""

    node_id: str
    process: subprocess.Popen

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to a blocking ``ray start`` stops its node's processes; then SIGKILL whatever is left of
    its session (after jobs have run, some linger for half a minute: nothing on a node stopped for good
    needs a clean exit)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_cluster(temp_dir: Path, num_cpus: int = 2) -> Cluster:
    port, dash = free_port(), free_port()
    # The job driver runs `python` from the head's PATH: the project's environment must come first.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # `ray start` must not attach anywhere
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    # With token authentication on, `ray start --head` refuses to run until a token exists: make the
    # user's token (~/.ray/auth_token) on a machine that has none yet, as a user would once.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    log = open(temp_dir / "ray-start.log", "w")  # noqa: SIM115 (lives as long as the cluster)
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}", f"--num-cpus={num_cpus}",
         "--num-gpus=0", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", dict(env, RAY_ADDRESS=f"127.0.0.1:{port}"),
                      process)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited {process.returncode}: {(temp_dir / 'ray-start.log').read_text()}")
        try:
            urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=2)
            return cluster
        except urllib.error.HTTPError:  # it answers (token authentication refuses anonymous calls): it is up
            return cluster
        except OSError:
            time.sleep(1)
    cluster.stop()
    raise RuntimeError("the Ray head did not come up within 120 s")


def start_node(cluster: Cluster, log: Path, resources: dict[str, float], num_cpus: int = 1,
               hidden: Path | None = None) -> Node:
    """Join a node to ``cluster`` with ``resources`` (a custom resource name that no other node has
    identifies it). ``hidden``: the node runs in its own mount namespace with an empty tmpfs over
    that folder (needs root), so it cannot see what lies below it."""
    (marker,) = [name for name in resources if name not in ("CPU", "GPU")]
    # The node's processes read credentials (AWS_*) from this environment, as on a real machine;
    # with token authentication on, a joining node needs RAY_AUTH_MODE=token and the token file.
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    command = [str(BIN / "ray"), "start", "--block", f"--address={cluster.address}", f"--num-cpus={num_cpus}",
               "--num-gpus=0", f"--resources={json.dumps(resources)}",
               f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    if hidden is not None:
        command = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs pav-hidden "$0" && exec "$@"', str(hidden),
                   *command]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # One client waits for the node (a client per poll would cost a Ray connection each time).
    waiter = subprocess.Popen([sys.executable, "-c", _WAIT_FOR_NODE, marker], env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while waiter.poll() is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    if waiter.poll() == 0:
        return Node(waiter.stdout.read().strip(), process)
    waiter.kill()
    waiter.wait()
    _stop(process)
    raise RuntimeError(f"the node with resource {marker} did not join within 120 s: {log.read_text()[-2000:]}")


_WAIT_FOR_NODE = """
import sys, time
import ray
ray.init(logging_level="ERROR")
while True:
    ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and sys.argv[1] in n["Resources"]]
    if ids:
        print(ids[0])
        break
    time.sleep(0.5)
"""
