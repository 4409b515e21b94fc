"""What `make demo` shows while it runs: the jobs' own lines as they come, Ray's logging hidden, and a
training that evaluates along the way. The slow tests run the demo's submission path on the session's
real Ray head."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from jobs import demo
from jobs.local_ray import JobFailed
from perceiver.plots import curves_figure, save
from pipeline.dataset import open_dataset
from pipeline.shards import iter_samples
from pipeline.synthetic import CLASSES

RAY_NOISE = re.compile(r"pid=|INFO|WARNING|raysubmit_|Checkpoint|Traceback|Tailing logs")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_show_prints_each_job_line_before_it_reads_the_next_and_hides_rays_own() -> None:
    out = io.StringIO()

    def lines():
        yield "2026-12-02 05:13:01,901\tINFO worker.py:1691 -- Using address 192.0.2.2:56667"
        yield "\x1b[36m(RayTrainWorker pid=18863)\x1b[0m step 1/12 loss 0.7621 samples/s 119.0 lr 1.00e-03 eta 00:00:01"
        assert out.getvalue() == "  step 1/12 loss 0.7621 samples/s 119.0 lr 1.00e-03 eta 00:00:01\n"  # already shown
        yield "(RayTrainWorker pid=18863) Checkpoint successfully created at: Checkpoint(filesystem=local)"
        yield "(TrainController pid=18712) Started training worker group of size 2: "
        yield "(TrainController pid=18712) - (ip=192.0.2.2, pid=18863) world_rank=0, local_rank=0, node_rank=0"
        yield "(RayTrainWorker pid=18863) eval step 2: audio+video mAP=0.350"
        yield "/work/main/.venv/lib/python3.11/site-packages/ray/train/v2/torch/train_loop_utils.py:249: FutureWarning"
        yield "train: model at /runs/model.pt"

    assert demo.show(lines(), out) == ["step 1/12 loss 0.7621 samples/s 119.0 lr 1.00e-03 eta 00:00:01",
                                       "eval step 2: audio+video mAP=0.350", "train: model at /runs/model.pt"]
    assert out.getvalue().splitlines()[1:] == ["  eval step 2: audio+video mAP=0.350", "  train: model at /runs/model.pt"]


def test_on_a_terminal_a_progress_bar_is_redrawn_on_its_line() -> None:
    out = Terminal()
    demo.show(["preprocess: 3 shards planned", "preprocess:   0%|          | 0/24 [00:00<?, ?clip/s]",
               "preprocess:  50%|█████     | 12/24 [00:03<00:03,  3.9clip/s]",
               "preprocess: 24 samples in 3 shards, 0 failed (none) in 7 s"], out)
    assert out.getvalue() == ("  preprocess: 3 shards planned\n"
                              "  preprocess:   0%|          | 0/24 [00:00<?, ?clip/s]"
                              "\r\033[K  preprocess:  50%|█████     | 12/24 [00:03<00:03,  3.9clip/s]"
                              "\n  preprocess: 24 samples in 3 shards, 0 failed (none) in 7 s\n")


@pytest.mark.slow
def test_job_lines_arrive_while_the_job_runs_and_a_failure_raises_after_them(ray_cluster, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = tmp_path / "wait.py"
    # The job ends only once the test has seen its first line: a job whose lines came only at its end
    # would wait for the deadline (a guard against hanging, not a timing) and end with "not told".
    script.write_text("import pathlib, sys, time\n"
                      "print('waiting', flush=True)\n"
                      f"go, deadline = pathlib.Path({str(go)!r}), time.monotonic() + 300\n"
                      "while not go.exists() and time.monotonic() < deadline:\n"
                      "    time.sleep(0.1)\n"
                      "print('told' if go.exists() else 'not told', flush=True)\n"
                      "sys.exit(3)\n")
    seen = []
    with pytest.raises(JobFailed) as failed:
        for line in ray_cluster.job_lines("python", str(script)):
            seen.append(line)
            if line == "waiting":
                go.touch()
    assert seen.index("waiting") < seen.index("told") and "not told" not in seen
    assert failed.value.returncode != 0 and "told" in failed.value.lines


@pytest.mark.slow
def test_the_demos_training_streams_its_progress_and_evaluates_along_the_way(e2e, tmp_path: Path) -> None:
    # The session's e2e run trained configs/tiny.yaml (300 steps) through demo.train, a line every step.
    shown, printed = e2e.logs["train"].splitlines(), e2e.logs["train-printed"].splitlines()
    assert printed == [f"  {line}" for line in shown]
    assert not [line for line in printed if RAY_NOISE.search(line)]
    progress = [i for i, line in enumerate(printed) if re.match(r"  step \d+/300 loss \d", line)]
    assert len(progress) >= 2 and progress[-1] < len(printed) - 1
    assert printed[-1] == (f"  train: model at {e2e.run / 'model.pt'}; "
                           "skipped while reading: bad_shards=0 refused_members=0 incomplete_samples=0")
    assert [int(re.match(r"  step (\d+)/", printed[i]).group(1)) for i in progress] == list(range(1, 301))

    # The demo evaluates every 300 // 6 = 50 steps, all modalities together, and all sets at the end.
    records = [json.loads(line) for line in (e2e.run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_mAP" in r]
    assert [r["step"] for r in evals] == [50, 100, 150, 200, 250, 300]
    assert [line for line in printed if line.startswith("  eval step")] == [
        f"  eval step {r['step']}: audio+video mAP={r['eval_mAP']:.3f}" for r in evals[:-1]]
    assert all("eval_audio_mAP" not in r for r in evals[:-1]) and "eval_audio_mAP" in evals[-1]

    # map.png is the curve of every evaluation: the same picture as one drawn here from all the records.
    ys = ("eval_mAP", "eval_audio_mAP", "eval_video_mAP")
    line = curves_figure(records, ys=ys).axes[0].get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [r["step"] for r in evals])
    np.testing.assert_array_equal(line.get_ydata(), [r["eval_mAP"] for r in evals])
    drawn = save(curves_figure(records, ys=ys, title="eval mAP"), tmp_path / "map.png")
    np.testing.assert_array_equal(matplotlib.image.imread(e2e.run / "plots" / "map.png"),
                                  matplotlib.image.imread(drawn))
    fewer = save(curves_figure(records[:-1], ys=ys, title="eval mAP"), tmp_path / "fewer.png")
    assert not np.array_equal(matplotlib.image.imread(fewer), matplotlib.image.imread(drawn))


@pytest.mark.slow
def test_the_pictures_clip_has_something_to_see_and_to_hear(micro_data) -> None:
    key = demo.picture_key(micro_data.eval)
    samples = list(iter_samples(open_dataset(str(micro_data.eval)).shards, decode_frames=False))
    labels = next(s.meta["labels"] for s in samples if s.key == key)
    assert {CLASSES[i].modality for i in labels} == {"audio", "video"}


def test_demo_set_takes_only_train_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        demo.main(["--out", "unused", "--set", "data.video.fps=4"])
    assert exited.value.code == 2 and "only train.* fields" in capsys.readouterr().err
