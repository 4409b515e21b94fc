"""What main wrote before the modality registry still reads, evaluates and resumes (no schema bump).

tests/fixtures/legacy holds a schema-2 dataset and a run written by commit 0472ee6 (see its README);
its records hold absolute paths under /tmp/pav-legacy, so it is restored there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver.config import load_config
from perceiver.saved import load_model
from pipeline import shards
from pipeline.dataset import check_compatible, open_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
AT = Path("/tmp/pav-legacy")


@pytest.fixture(scope="module")
def legacy() -> Path:
    shutil.rmtree(AT, ignore_errors=True)
    shutil.copytree(FIXTURE, AT)
    yield AT
    shutil.rmtree(AT, ignore_errors=True)


def test_old_shards_read_with_every_member(legacy):
    info = open_dataset(str(legacy / "train"))
    samples = list(shards.iter_samples(info.shards, decode_frames=False))
    assert len(samples) == info.num_samples == 8
    for s in samples:
        assert set(s.content) == {"audio", "video"} and len(s.content["video"]) == s.meta["video"]["frames"] == 16
        assert s.content["audio"].shape == (200, 32) and s.meta["has_audio"] and s.meta["has_video"]
    assert set(info.position_features) == {"audio", "video"}
    cfg = load_config("configs/micro.yaml")  # today's recipe, with today's new fields at their defaults
    from pipeline.recipe import modalities_of

    check_compatible(info, cfg.data, modalities_of(cfg.data, cfg.inputs.modalities))


def test_an_old_model_loads_and_evaluates_to_its_own_numbers(legacy):
    model, cfg, classes = load_model(str(legacy / "run" / "model.pt"))
    assert len(classes) == 8 and cfg.model.num_blocks == 1
    saved = json.loads((legacy / "run" / "eval.json").read_text())
    for modalities, key in (("audio,video", "audio+video"), ("audio", "audio"), ("video", "video")):
        result = subprocess.run([sys.executable, "jobs/evaluate.py", "--checkpoint", str(legacy / "run" / "model.pt"),
                                 "--data", str(legacy / "eval"), "--modalities", modalities],
                                capture_output=True, text=True, check=True)
        out = json.loads(result.stdout)
        assert out["num_clips"] == 4
        assert out["per_class_ap"] == pytest.approx(saved[key]["per_class_ap"], abs=1e-6)


@pytest.mark.slow
def test_an_old_run_resumes_from_its_checkpoint(ray_cluster, legacy):
    run = legacy / "run"
    result = ray_cluster.run(sys.executable, "jobs/train.py", "--config", "configs/micro.yaml",
                             "--train", str(legacy / "train"), "--eval", str(legacy / "eval"), "--out", str(run),
                             "--num-workers", "1", "--set", "model.num_blocks=1", "--set", "train.steps=12",
                             "--set", "train.checkpoint_every=4", "--set", "train.keep_checkpoints=1")
    assert "resuming from the checkpoint at step 8" in result.stdout + result.stderr
    events = [(e["event"], e["step"]) for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())]
    assert events == [("started", 0), ("resumed", 8)]
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 13))
    assert json.loads((run / "eval.json").read_text())["num_clips"] == 4
