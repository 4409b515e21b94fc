"""The user's path end to end: `ray job submit` of preprocessing and training on a real head.

One run (the session's ``e2e`` fixture) is shared by every assertion here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from perceiver.config import load_config
from pipeline import modality, shards
from pipeline.audioset import read_segments
from pipeline.labels import load_labels
from pipeline.recipe import modalities_of

pytestmark = pytest.mark.slow


def test_preprocessing_accounts_for_every_row(e2e):
    classes = load_labels(e2e.data / "class_labels_indices.csv")
    rows, _ = read_segments([e2e.data / "balanced_train_segments.csv"], classes)
    index = pd.read_parquet(e2e.train / "index.parquet")
    failures = pd.read_parquet(e2e.train / "failures.parquet")
    assert sorted(index["key"]) == sorted(r.key for r in rows) and failures.empty
    assert index["key"].is_unique
    dataset = json.loads((e2e.train / "dataset.json").read_text())
    assert dataset["counts"]["samples"] == len(rows) == 128
    assert [c["mid"] for c in dataset["classes"]] == [c.mid for c in classes]
    assert sorted(p.name for p in (e2e.train / "shards").iterdir()) == [s.split("/")[-1] for s in dataset["shards"]]
    assert "preprocess: 128 samples" in e2e.logs["preprocess-train"]


def test_shards_carry_the_models_fourier_features_once_per_shard(e2e):
    cfg = load_config("configs/tiny.yaml")
    dataset = json.loads((e2e.train / "dataset.json").read_text())
    for shard in dataset["shards"]:
        tags, feats = shards.read_fourier(str(e2e.train / shard))
        mods = modalities_of(cfg.data, cfg.inputs.modalities)
        expected = modality.position_features(mods)
        for m in mods:
            assert tags[m.name]["id"] == {"audio": 0, "video": 1}[m.name]  # stable ids: part of the shard contract
            assert tags[m.name]["grid"] == list(m.spec.grid)
            np.testing.assert_array_equal(feats[m.name], expected[m.name])
    sample = next(shards.iter_samples([str(e2e.train / dataset["shards"][0])]))
    assert set(sample.meta["modalities"]) == {"audio", "video"}
    # JPEG frames stored larger than the model's 32 px, for training's random resized crop.
    with tarfile.open(e2e.train / dataset["shards"][0]) as tar:
        assert f"{sample.key}.video.mjpeg" in tar.getnames()
    assert sample.content["video"].shape == (16, 36, 36, 3) and sample.content["audio"].shape == (200, 32)


def test_training_reaches_the_tiny_target_and_fuses_modalities(e2e):
    result = json.loads((e2e.run / "eval.json").read_text())
    av, audio, video = (result[k]["mAP"] for k in ("audio+video", "audio", "video"))
    assert av >= 0.9, result
    assert audio < av - 0.15 and video < av - 0.15, (av, audio, video)
    assert result["num_clips"] == 48
    assert "train: eval audio+video mAP=" in e2e.logs["train"]


def test_run_directory_holds_model_metrics_and_plots(e2e):
    steps = [r["step"] for r in map(json.loads, (e2e.run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    cfg = load_config("configs/tiny.yaml")
    assert steps == list(range(1, cfg.train.steps + 1))  # each step once
    for png in ("loss.png", "map.png", "per_class_ap.png"):
        assert (e2e.run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((e2e.run / "tensorboard").iterdir())
    state = torch.load(e2e.run / "model.pt", weights_only=True)
    assert "perceiver.latents" in state
    assert json.loads((e2e.run / "model.json").read_text())["model"]["num_classes"] == 8


def test_evaluate_job_prints_metrics_json(e2e):
    out = {}
    for mods in ("audio,video", "audio"):
        result = subprocess.run([sys.executable, "jobs/evaluate.py", "--checkpoint", str(e2e.run / "model.pt"),
                                 "--data", str(e2e.eval), "--modalities", mods], capture_output=True, text=True,
                                check=True)
        out[mods] = json.loads(result.stdout)
    saved = json.loads((e2e.run / "eval.json").read_text())
    assert out["audio,video"]["mAP"] == pytest.approx(saved["audio+video"]["mAP"], abs=1e-6)
    assert out["audio"]["mAP"] == pytest.approx(saved["audio"]["mAP"], abs=1e-6)
