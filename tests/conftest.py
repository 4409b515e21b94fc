"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.synthetic import make_dataset


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
    (train and eval) and of training with configs/tiny.yaml, on the shared real cluster."""
    root = tmp_path_factory.mktemp("e2e")
    data = root / "audioset"
    ray_cluster.run(sys.executable, "jobs/make_synthetic.py", "--out", str(data), "--train", "128", "--eval", "48")
    logs = {}
    for split, csv in (("train", "balanced_train_segments.csv"), ("eval", "eval_segments.csv")):
        logs[f"preprocess-{split}"] = ray_cluster.job(
            "python", "jobs/preprocess.py", "--config", "configs/tiny.yaml", "--segments", str(data / csv),
            "--labels", str(data / "class_labels_indices.csv"), "--media-dir", str(data / "clips"),
            "--out", str(root / split)).stdout
    logs["train"] = ray_cluster.job(
        "python", "jobs/train.py", "--config", "configs/tiny.yaml", "--train", str(root / "train"),
        "--eval", str(root / "eval"), "--out", str(root / "run")).stdout
    return Run(data, root / "train", root / "eval", root / "run", logs)
