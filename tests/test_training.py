"""jobs/train.py on the shared Ray head (micro config): exact resume, worker failure, locks, errors; and
in-process (Ray Train's local mode), what the readers skipped in the run's records."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from perceiver.config import load_config
from perceiver.run_dir import skipped_line
from perceiver.trainer import fit
from pipeline import storage
from pipeline.lock import RunLock
from tests.test_sampler import TINY, write_dataset

slow = pytest.mark.slow  # the tests that run jobs on the shared Ray head


def _args(data, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "jobs/train.py", "--config", "configs/micro.yaml", "--train", str(data.train),
            "--eval", str(data.eval), "--out", str(out), *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0, msg=k)


def _latest_checkpoint_step(run: Path) -> int | None:
    snapshot = run / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    return latest["metrics"]["step"] if latest else None


def _events(run: Path) -> list[tuple[str, int]]:
    return [(e["event"], e["step"]) for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())]


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, micro_data, tmp_path_factory) -> Path:
    """12 steps, 2 workers, 3 shards (an odd count): 4 epochs of 3 batches per rank."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = ray_cluster.run(*_args(micro_data, out))
    assert "final eval" in result.stdout + result.stderr or (out / "eval.json").exists()
    return out


@slow
def test_two_workers_finish_every_epoch_with_an_odd_shard_count(uninterrupted, micro_data):
    assert len(json.loads((micro_data.train / "dataset.json").read_text())["shards"]) == 3
    records = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert _steps(uninterrupted) == list(range(1, 13))
    assert sorted({r["epoch"] for r in records if "loss" in r}) == [0, 1, 2, 3]


@slow
def test_a_killed_worker_and_then_a_killed_driver_resume_to_the_same_weights(ray_cluster, micro_data, uninterrupted,
                                                                             tmp_path):
    """One run meets both failures: a train worker dies after step 7 and Ray Train restarts the group from
    the step-4 checkpoint; then the driver is killed once the step-8 checkpoint is registered, and the same
    command, run again, resumes from it. Each step is trained once and the weights equal the uninterrupted
    run's."""
    marker, out = tmp_path / "killed", tmp_path / "run"
    # Ray Train's controller collects reports every 2 s: a second per step lets it register the step-4
    # checkpoint before the kill after step 7, and leaves 4 s between the step-8 checkpoint and the end.
    env = dict(ray_cluster.env, PERCEIVER_AV_FAULT=f"kill_train_worker_once={marker}@7,train_step_delay_s=1.0")
    process = subprocess.Popen(_args(micro_data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and (_latest_checkpoint_step(out) or 0) < 8:
        time.sleep(0.1)
    assert _latest_checkpoint_step(out) == 8 and process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists() and not (out / "model.pt").exists()
    assert _events(out) == [("started", 0), ("resumed", 4)]  # the worker group's restart
    ray_cluster.run(*_args(micro_data, out))
    assert _events(out) == [("started", 0), ("resumed", 4), ("resumed", 8)]
    _assert_same_weights(out, uninterrupted)
    assert _steps(out) == list(range(1, 13))  # each step once


@slow
def test_a_second_submission_on_a_live_run_is_refused(ray_cluster, micro_data, tmp_path):
    # This process holds the run's lock as a live train does (the lock's own tests cover how it is taken,
    # refreshed and judged stale; the killed-driver test, that a dead run's lock does not block a resume):
    # what this test shows is that the job, submitted as a user would, refuses before it touches the run.
    out = tmp_path / "run"
    with RunLock(storage.locate(str(out)), "train"):
        second = ray_cluster.job("python", "jobs/train.py", "--config", "configs/micro.yaml",
                                 "--train", str(micro_data.train), "--out", str(out), check=False)
        assert [p.name for p in out.iterdir()] == ["_run.lock"]  # nothing of a run was written
    assert second.returncode != 0
    assert f"{out} is in use by a live train" in second.stdout + second.stderr


@slow
def test_a_config_that_does_not_match_the_shards_is_refused(micro_data, tmp_path):
    result = subprocess.run(_args(micro_data, tmp_path / "run", "--set", "data.video.size=64"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "dataset.json has video.size=32" in line and "64" in line


@slow
def test_resuming_with_another_model_is_refused(ray_cluster, micro_data, uninterrupted):
    result = ray_cluster.run(*_args(micro_data, uninterrupted, "--set", "model.latent_dim=64"), check=False)
    assert result.returncode == 3
    assert "holds a run with model.latent_dim=32" in result.stderr.strip().splitlines()[-1]


def _append(shard: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(shard, "a", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_run_records_what_its_readers_skipped(tmp_path, capsys):
    """Skips counted in DataLoader worker processes reach metrics.jsonl, TensorBoard and the last line
    (with the balanced sampler and micro's mixup, so the loop's paths for both run too)."""
    cfg = load_config("configs/micro.yaml", [*TINY, "train.steps=4", "train.warmup_steps=1", "train.loader_workers=2",
                                             "train.checkpoint_every=100", "train.sampler=balanced"])
    info = write_dataset(tmp_path / "data", cfg, [[[i % 3]] * 6 for i in range(4)], num_classes=3)
    shard_with_extras, corrupt = (Path(info.shards[i]) for i in (1, 2))
    _append(shard_with_extras, {"k001_000.pkl": b"refused unread",  # a member the reader never opens
                                "orphan.json": json.dumps({"labels": [0], "has_audio": True}).encode()})  # no audio
    corrupt.write_bytes(corrupt.read_bytes()[:corrupt.stat().st_size // 2])
    out = storage.locate(tmp_path / "run")
    fit(cfg, train=str(tmp_path / "data"), eval_=None, out=out, num_workers=0, use_gpu=False)  # 0: in this process
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    totals = {kind: sum(r[kind] for r in steps) for kind in ("bad_shards", "refused_members", "incomplete_samples")}
    assert all(n >= 1 for n in totals.values()), totals
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == skipped_line(steps) == "skipped while reading: " + " ".join(f"{k}={n}" for k, n in totals.items())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    board.Reload()
    assert [e.value for e in board.Scalars("bad_shards")] == [r["bad_shards"] for r in steps]
