"""jobs/preprocess.py on the shared real Ray head: resume after kills, retries, locks, clear errors."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.distributed import _overdue
from pipeline.lock import RunLock
from pipeline.records import ClipRow
from pipeline.storage import locate

pytestmark = pytest.mark.slow


def _args(data: Path, out: Path, *extra: str, segments: str = "balanced_train_segments.csv") -> list[str]:
    return [sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
            "--segments", str(data / segments), "--labels", str(data / "class_labels_indices.csv"),
            "--media-dir", str(data / "clips"), "--out", str(out), *extra]


def _snapshot(out: Path) -> tuple[list, dict[str, bytes]]:
    index = pd.read_parquet(out / "index.parquet")[["key", "shard", "labels"]]
    return ([tuple(r) for r in index.astype(str).itertuples(index=False)],
            {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())})


def test_killed_runs_resume_to_the_clean_result(ray_cluster, micro_data, tmp_path):
    clean = _snapshot(micro_data.train)
    assert len(clean[1]) == 3  # 24 clips in shards of 8
    for trial, after in enumerate((1, 2)):
        out = tmp_path / f"killed-{trial}"
        env = dict(ray_cluster.env, PERCEIVER_AV_FAULT=f"kill_driver_after_shards={after}")
        killed = subprocess.run(_args(micro_data.data, out), env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL
        # Writer tasks run on their own: another may finish its shard before the driver, killed as it hears
        # of the after-th, hears of it. So at least `after` are finished, and the run never finalized.
        done = len(list((out / "_parts").iterdir()))
        assert done >= after and not (out / "dataset.json").exists()
        resumed = ray_cluster.run(*_args(micro_data.data, out))
        assert f"{done} already complete, {3 - done} to do" in resumed.stdout
        assert _snapshot(out) == clean
    # And a kill at a moment nobody chose.
    out = tmp_path / "killed-random"
    process = subprocess.Popen(_args(micro_data.data, out), env=ray_cluster.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(random.Random(7).uniform(3.0, 8.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    ray_cluster.run(*_args(micro_data.data, out))
    assert _snapshot(out) == clean
    assert not [p for p in (out / "shards").iterdir() if not p.name.endswith(".tar")]


def test_a_killed_worker_is_retried_without_duplicates(ray_cluster, micro_data, tmp_path):
    marker = tmp_path / "worker-killed"
    env = dict(ray_cluster.env, PERCEIVER_AV_FAULT=f"kill_worker_once={marker}")
    out = tmp_path / "out"
    subprocess.run(_args(micro_data.data, out), env=env, check=True, capture_output=True, timeout=300)
    assert marker.exists()  # a worker really died mid-clip
    assert _snapshot(out) == _snapshot(micro_data.train)


def test_a_hung_and_a_crashing_clip_are_recorded_alone(ray_cluster, micro_data, tmp_path):
    # Tasks of 4 clips, shards of 8: the 6th clip is the 2nd of shard 0's second task, the 11th the 3rd
    # of shard 1's first. The hung task is cancelled after clip 5 finished; the crashing one spends its
    # Ray retries. Either way only the clip at fault is recorded and its task-mates are kept.
    keys = pd.read_parquet(micro_data.train / "index.parquet")["key"]
    hung, crashed = keys.iloc[5], keys.iloc[10]
    env = dict(ray_cluster.env, PERCEIVER_AV_FAULT=f"hang_key={hung},crash_key={crashed}")
    out = tmp_path / "out"
    result = subprocess.run(_args(micro_data.data, out, "--set", "data.decode_timeout_s=5",
                                  "--set", "data.clips_per_task=4"), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    failures = pd.read_parquet(out / "failures.parquet")
    assert sorted(failures[["key", "error"]].values.tolist()) == sorted([[hung, "timeout"],
                                                                         [crashed, "worker_error"]])
    index = pd.read_parquet(out / "index.parquet")
    assert sorted(index["key"]) == sorted(set(keys) - {hung, crashed})
    assert "2 failed (timeout=1, worker_error=1)" in result.stdout
    assert "state API did not answer" not in result.stderr  # the check for a retried attempt was made


def test_a_hung_clip_is_the_one_its_task_started_last():
    rows = [ClipRow(f"k{i}", f"y{i}", 0.0, 10.0, labels=(0,), path=f"{i}.mp4", source=f"s.csv:{i}") for i in range(3)]
    # Clips run in order: k0 finished, k1 has run 7 s in worker w (past the 5 s timeout), k2 has not started.
    assert _overdue(rows, [(30.0, "w"), (7.0, "w"), None], 40.0, 5.0) == (True, rows[1], "w")
    assert _overdue(rows, [(30.0, "w"), (3.0, "w"), None], 40.0, 5.0) == (False, rows[1], "w")  # no clip past 5 s
    assert _overdue(rows, [None, None, None], 40.0, 5.0) == (False, None, None)  # queued behind busy CPUs
    # Without the start clock only a one-clip task's culprit is known; the driver splits the others.
    assert _overdue(rows, None, 40.0, 5.0) == (True, None, None)
    assert _overdue(rows[:1], None, 40.0, 5.0) == (True, rows[0], None)


def test_retry_failed_fills_in_clips_that_appear_later(ray_cluster, micro_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(micro_data.data, data)
    ytid = (data / "balanced_train_segments.csv").read_text().splitlines()[6].split(",")[0]
    victim = data / "clips" / f"{ytid}.mp4"
    hidden = tmp_path / victim.name
    victim.rename(hidden)
    out = tmp_path / "out"
    first = ray_cluster.run(*_args(data, out))
    assert "1 failed (missing_file=1)" in first.stdout
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    hidden.rename(victim)
    retried = ray_cluster.run(*_args(data, out, "--retry-failed"))
    assert "0 failed" in retried.stdout
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 24 and index["key"].is_unique
    assert pd.read_parquet(out / "failures.parquet").empty
    after = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before  # finished shards untouched
    assert [k for k in after if k not in before] == ["train-retry1-000000.tar"]


def test_a_live_run_holds_the_output_and_a_dead_one_does_not(ray_cluster, micro_data, tmp_path):
    out = tmp_path / "out"
    with RunLock(locate(out), "preprocess"):
        refused = ray_cluster.run(*_args(micro_data.data, out), check=False)
    assert refused.returncode == 3
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert "in use by a live preprocess" in line and "pid" in line
    # A lock left by a killed run (its pid is gone) does not block.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "_run.lock").write_text(json.dumps({"run_id": "x", "job": "preprocess", "host": __import__("socket")
                                              .gethostname(), "pid": dead.pid, "started": 0, "heartbeat": 0}))
    ray_cluster.run(*_args(micro_data.data, out))


def test_another_dataset_in_the_same_output_is_refused(ray_cluster, micro_data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(micro_data.train, out)
    result = ray_cluster.run(*_args(micro_data.data, out, "--set", "data.video.size=48"), check=False)
    assert result.returncode == 3
    assert "already holds a dataset with a different recipe" in result.stderr


@pytest.mark.parametrize("case, message", [
    ("no-labels", "labels"),
    ("empty-segments", "no usable row"),
    ("no-media-dir", "media"),
    ("bad-config-key", "num_latnts"),
])
def test_unusable_inputs_fail_with_one_line(micro_data, tmp_path, case, message):
    data = micro_data.data
    args = _args(data, tmp_path / "out")
    if case == "no-labels":
        args[args.index("--labels") + 1] = str(tmp_path / "missing.csv")
    elif case == "empty-segments":
        (tmp_path / "empty.csv").write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n")
        args[args.index("--segments") + 1] = str(tmp_path / "empty.csv")
    elif case == "no-media-dir":
        args[args.index("--media-dir") + 1] = str(tmp_path / "nowhere")
    else:
        args += ["--set", "model.num_latnts=3"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_a_vggsound_layout_goes_through_the_same_stages(ray_cluster, micro_data, tmp_path):
    """A second dataset layout: VGGSound's `ytid,start,label,split` CSV, converted to a manifest."""
    from pipeline.audioset import read_segments
    from pipeline.labels import load_labels
    from pipeline.manifests import vggsound_to_manifest

    classes = load_labels(micro_data.data / "class_labels_indices.csv")
    rows, _ = read_segments([micro_data.data / "balanced_train_segments.csv"], classes)
    media = tmp_path / "vggsound"
    media.mkdir()
    lines = []
    for i, row in enumerate(rows[:10]):
        start = 30 + i
        (media / f"{row.ytid}_{start:06d}.mp4").symlink_to(micro_data.data / "clips" / f"{row.ytid}.mp4")
        lines.append(f'{row.ytid},{start},"{classes[row.labels[0]].name}",{"train" if i < 8 else "test"}')
    (tmp_path / "vggsound.csv").write_text("\n".join(lines) + "\n")
    manifest, vgg_classes = vggsound_to_manifest(tmp_path / "vggsound.csv", media, tmp_path / "train.csv")
    out = tmp_path / "out"
    ray_cluster.run(sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
                    "--manifest", str(manifest), "--labels", str(manifest.with_name("class_labels_indices.csv")),
                    "--out", str(out))
    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 8 and pd.read_parquet(out / "failures.parquet").empty
    names = [c["name"] for c in json.loads((out / "dataset.json").read_text())["classes"]]
    assert names == [c.name for c in vgg_classes]
    assert all(k.endswith("000") and "." not in k for k in index["key"])
