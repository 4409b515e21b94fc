"""A local Ray head started the way a user starts one (for the demo and the tests), stopped for sure.

``ray start --head --block`` runs in its own session; SIGTERM to it stops every process of that
cluster (and only that cluster), so a failing test cannot leave Ray running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project root: jobs run from here
BIN = Path(sys.executable).parent


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
        result = subprocess.run([*args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
                                **kw)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                                 f"--- stderr\n{result.stderr[-4000:]}")
        return result

    def job(self, *entrypoint: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir .`` as a user would, waiting for the job to end."""
        submit = (str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", ".", "--")
        for _ in range(30):
            result = self.run(*submit, *entrypoint, timeout=timeout, check=False)
            # A head that has just come up may not have started its job agent yet: Ray says to retry.
            if "No available agent to submit job" not in result.stderr:
                break
            time.sleep(2)
        if check and result.returncode != 0:
            raise AssertionError(f"{entrypoint} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                                 f"--- stderr\n{result.stderr[-4000:]}")
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


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
