"""The jobs on a real S3-protocol server (``rclone serve s3``) and a two-node Ray cluster.

One preprocessing run (a query-option URI, tasks on both nodes) and one training run serve every
test here: 2 workers of 2 CPUs, so one on each node, reading --train and --eval from the server,
one worker killed after step 7 and resumed from its step-4 checkpoint. The endpoint is reached
both ways a user configures it: pyarrow's query options in the URI (the client's
AWS_ENDPOINT_URL removed, so only the URI can carry it) and plain ``s3://`` URIs with
AWS_ENDPOINT_URL and the credentials in the environment. The run directory is on the server too
(``--out s3://pav/run``): Ray Train keeps its run state and checkpoints there, evaluate and predict
load the model from it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from pipeline import storage
from pipeline.dataset import open_dataset


def test_paths_join_before_the_query_and_records_show_no_query_or_user():
    loc = storage.Location(pafs.LocalFileSystem(), "b/ds", "s3://b/ds?endpoint_override=h:1&scheme=http")
    assert loc.child("shards", "x.tar").uri == "s3://b/ds/shards/x.tar?endpoint_override=h:1&scheme=http"
    assert loc.child("x").shown == "s3://b/ds/x"
    assert storage.shown("s3://key:secret@b/ds?secret_key=s") == "s3://b/ds"
    local = storage.Location(pafs.LocalFileSystem(), "/d/a?b", "/d/a?b")  # a local name may hold "?"
    assert local.child("c").uri == "/d/a?b/c" and local.shown == "/d/a?b"


def _leaks(text: str) -> list[str]:
    """Query options, the endpoint or a key found in ``text``."""
    marks = ("endpoint_override", "scheme=http", os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    return [m for m in marks if m in text]


@dataclass
class S3Run:
    train: str  # the dataset's URI with query options
    run: Path  # where the server keeps the run directory
    checkpoint: str  # its model.pt, plain URI
    logs: dict[str, str]


def _client_env(ray_cluster, query: bool) -> dict[str, str]:
    env = dict(ray_cluster.env)
    if query:
        env.pop("AWS_ENDPOINT_URL")
    return env


@pytest.fixture(scope="module")
def s3_run(ray_cluster, micro_data, second_node, s3_endpoint, tmp_path_factory) -> S3Run:
    # micro_data first: its clips are preprocessed before the second node joins. This run keeps
    # 4 clips in flight (the cluster's CPUs): the head's 2 are full, so Ray places clips on both nodes.
    data = micro_data.data
    train = s3_endpoint.uri("ds/train", query=True)
    pre = ray_cluster.run(sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
                          "--segments", str(data / "balanced_train_segments.csv"),
                          "--labels", str(data / "class_labels_indices.csv"), "--media-dir", str(data / "clips"),
                          "--out", train, env=_client_env(ray_cluster, query=True))
    marker = tmp_path_factory.mktemp("s3-train") / "killed"
    # Ray Train's controller collects reports every 2 s: the delay lets it register the step-4
    # checkpoint before a worker kills itself after step 7.
    env = dict(ray_cluster.env, PERCEIVER_AV_FAULT=f"kill_train_worker_once={marker}@7,train_step_delay_s=1.0")
    fit = ray_cluster.run(sys.executable, "jobs/train.py", "--config", "configs/micro.yaml", "--num-workers", "2",
                          "--cpus-per-worker", "2", "--set", "train.steps=8", "--train", train,
                          "--eval", s3_endpoint.uri("ds/train"), "--out", s3_endpoint.uri("run"), env=env)
    assert marker.exists()  # a worker really died mid-run
    return S3Run(train, s3_endpoint.path("run"), s3_endpoint.uri("run/model.pt"),
                 {"preprocess": pre.stdout + pre.stderr, "train": fit.stdout + fit.stderr})


def test_preprocessing_writes_the_dataset_to_the_server_from_two_nodes(s3_run, s3_endpoint, second_node, micro_data):
    stored = s3_endpoint.path("ds/train")
    index = pd.read_parquet(stored / "index.parquet")
    assert sorted(index["key"]) == sorted(pd.read_parquet(micro_data.train / "index.parquet")["key"])
    meta = json.loads((stored / "dataset.json").read_text())
    assert all((stored / s).is_file() for s in meta["shards"])
    assert len(meta["nodes"]) == 2 and second_node.node_id in meta["nodes"]  # clips ran on both nodes
    assert sum(meta["nodes"].values()) == len(index)
    info = open_dataset(s3_run.train)
    assert info.root == "s3://pav/ds/train" and all(p.endswith("&region=us-east-1") for p in info.shards)


def test_training_reads_the_server_on_two_nodes_and_resumes_from_its_checkpoint(s3_run, second_node):
    run = s3_run.run
    records = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"], e["workers"]) for e in records] == [("started", 0, 2), ("resumed", 4, 2)]
    for event in records:  # 2 CPUs per worker on nodes of 2 CPUs: one rank on each node, both times
        assert len(set(event["nodes"])) == 2 and second_node.node_id in event["nodes"], event
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 9))  # each step once
    assert (run / "eval.json").is_file()
    checkpoints = sorted(p.name for p in (run / "ray" / "train").glob("checkpoint_*"))
    assert checkpoints, sorted(p.name for p in (run / "ray").rglob("*"))[:20]
    # TensorBoard's events and the plots, drawn locally, were uploaded next to metrics.jsonl.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the start and the resume
    assert {p.name for p in (run / "plots").iterdir()} >= {"loss.png", "map.png"}


def test_records_and_logs_hold_no_query_options_or_credentials(s3_run, s3_endpoint):
    records = {"dataset.json": s3_endpoint.path("ds/train/dataset.json").read_text(),
               **{name: (s3_run.run / name).read_text() for name in ("run_config.json", "model.json", "eval.json")}}
    assert json.loads(records["run_config.json"])["dataset"]["root"] == "s3://pav/ds/train"
    assert json.loads(records["model.json"])["train"] == "s3://pav/ds/train"
    assert {name: _leaks(text) for name, text in {**records, **s3_run.logs}.items() if _leaks(text)} == {}


def test_evaluate_and_predict_load_the_checkpoint_from_the_server(s3_run, s3_endpoint, ray_cluster, micro_data):
    query_checkpoint = s3_endpoint.uri("run/model.pt", query=True)
    result = ray_cluster.run(sys.executable, "jobs/evaluate.py", "--checkpoint", query_checkpoint,
                             "--data", s3_run.train, env=_client_env(ray_cluster, query=True))
    assert json.loads(result.stdout)["num_clips"] == 24
    clip = sorted((micro_data.data / "clips").iterdir())[0]
    result = ray_cluster.run(sys.executable, "jobs/predict.py", "--checkpoint", s3_run.checkpoint, "--json",
                             str(clip))
    assert len(json.loads(result.stdout)["top"]) == 5


@pytest.mark.parametrize("job", ["preprocess", "train", "evaluate"])
def test_a_refused_request_ends_the_job_with_one_line(job, s3_run, ray_cluster, micro_data, tmp_path):
    data = micro_data.data
    args = {"preprocess": ["jobs/preprocess.py", "--config", "configs/micro.yaml", "--segments",
                           str(data / "balanced_train_segments.csv"), "--labels",
                           str(data / "class_labels_indices.csv"), "--media-dir", str(data / "clips"),
                           "--out", "s3://pav/refused"],
            "train": ["jobs/train.py", "--config", "configs/micro.yaml", "--train", "s3://pav/ds/train",
                      "--out", str(tmp_path / "run")],
            "evaluate": ["jobs/evaluate.py", "--checkpoint", s3_run.checkpoint, "--data", str(micro_data.train)]}
    env = dict(ray_cluster.env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    result = ray_cluster.run(sys.executable, *args[job], env=env, check=False)
    assert result.returncode in (1, 2)
    line = result.stderr.strip().splitlines()[-1]  # Ray's own start-up notes may come before it
    assert "Traceback" not in result.stderr and line.startswith("error: ")
    operation, uri = line.removeprefix("error: ").split(" failed: ")[0].rsplit(" ", 1)
    assert operation in ("looking up", "reading", "uploading") and uri.startswith("s3://pav/")
    assert "ACCESS_DENIED" in line
