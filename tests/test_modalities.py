"""Recipes of other modality sets through the real jobs on the shared Ray head: a kind defined in
tests/ (named by import path) beside audio and video, audio only, video only."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perceiver.clips import clip_batch, read_stored_sample
from perceiver.saved import load_model
from pipeline.dataset import open_dataset
from pipeline.decode import decode_clip

pytestmark = pytest.mark.slow
CONFIG = "tests/configs/envelope.yaml"
RECIPES = {"envelope": [], "audio": ["--set", "inputs.modalities=[audio]"],
           "video": ["--set", "inputs.modalities=[video]"]}


@pytest.fixture(scope="module")
def runs(ray_cluster, synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each recipe preprocessed and trained (4 steps; evaluated on its training set). The custom kind goes
    through `ray job submit` and a Ray Train worker, which imports it from the job's uploaded working
    directory; the single-modality recipes attach their drivers to the cluster directly and train in the
    driver (`--num-workers 0`, Ray Train's local mode), which costs no worker group's start-up. The custom
    kind's run and the other two, one after the other, go side by side: most of a Ray Train run's start
    waits rather than computes."""
    root = tmp_path_factory.mktemp("modalities")

    def preprocess_and_train(name: str) -> None:
        overrides, data, run = RECIPES[name], root / name / "data", root / name / "run"
        submit = ray_cluster.job if name == "envelope" else lambda *args: ray_cluster.run(sys.executable, *args[1:])
        submit("python", "jobs/preprocess.py", "--config", CONFIG, *overrides,
               "--segments", str(synthetic_dir / "balanced_train_segments.csv"),
               "--labels", str(synthetic_dir / "class_labels_indices.csv"),
               "--media-dir", str(synthetic_dir / "clips"), "--out", str(data))
        submit("python", "jobs/train.py", "--config", CONFIG, *overrides, "--train", str(data),
               "--eval", str(data), "--out", str(run), *(() if name == "envelope" else ("--num-workers", "0")))

    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(preprocess_and_train, "envelope"),
                pool.submit(lambda: [preprocess_and_train(name) for name in ("audio", "video")])]
        for future in done:
            future.result()  # a failed run raises here
    return {name: root / name for name in RECIPES}


def _members(dataset: Path) -> set[str]:
    """Member kinds (what follows the key) of the dataset's first shard."""
    shard = dataset / json.loads((dataset / "dataset.json").read_text())["shards"][0]
    with tarfile.open(shard) as tar:
        return {name.split(".", 1)[1] for name in tar.getnames()}


def _evaluate(run: Path, data: Path, modalities: str) -> dict:
    result = subprocess.run([sys.executable, "jobs/evaluate.py", "--checkpoint", str(run / "model.pt"),
                             "--data", str(data), "--modalities", modalities], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_kind_from_outside_the_package_is_stored_trained_and_evaluated(runs):
    data, run = runs["envelope"] / "data", runs["envelope"] / "run"
    recipe = json.loads((data / "dataset.json").read_text())["recipe"]
    assert recipe["modalities"]["envelope"]["id"] == 100 and recipe["envelope"]["kind"].endswith(":Envelope")
    assert _members(data) == {"json", "audio.npy", "video.npy", "envelope.npy"}
    result = json.loads((run / "eval.json").read_text())
    assert set(result) >= {"audio+video+envelope", "audio", "video", "envelope"}
    alone = _evaluate(run, data, "envelope")
    assert alone["modalities"] == "envelope" and alone["num_clips"] == 24
    assert alone["mAP"] == pytest.approx(result["envelope"]["mAP"], abs=1e-6)


def test_the_custom_kinds_tokens_equal_an_independent_computation(runs, synthetic_dir: Path):
    data, run = runs["envelope"] / "data", runs["envelope"] / "run"
    model, cfg, _ = load_model(str(run / "model.pt"))
    info = open_dataset(str(data))
    key = pd.read_parquet(data / "index.parquet")["key"][0]
    batch = clip_batch(read_stored_sample(info.shards, key), model.modalities, 1, len(info.classes))
    with torch.no_grad():
        tokens = model.tokens(batch)["envelope"][0].numpy()
    # Independently: decode the clip's audio, RMS over 160-sample hops, the middle window of a 2 s clip
    # (window starts every 1/8 s, 8 of them past the first 1 s window: the 4th, 0.5 s = frame 50).
    clip = decode_clip(synthetic_dir / "clips" / f"{key.rsplit('_', 1)[0]}.mp4", start=None, seconds=2.0, fps=None,
                       size=32, sample_rate=16000)
    frames = clip.audio.astype(np.float64)[:len(clip.audio) // 160 * 160].reshape(-1, 160)
    expected = np.sqrt((frames ** 2).mean(axis=1))[50:150].reshape(10, 10)
    np.testing.assert_allclose(tokens, expected, atol=1e-6)


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_a_single_modality_recipe_stores_trains_and_evaluates_only_it(runs, modality):
    data, run = runs[modality] / "data", runs[modality] / "run"
    stored = {"audio": "audio.npy", "video": "video.npy"}[modality]
    assert _members(data) == {"json", stored}
    assert set(json.loads((data / "dataset.json").read_text())["recipe"]["modalities"]) == {modality}
    result = json.loads((run / "eval.json").read_text())
    assert {k for k in result if isinstance(result[k], dict) and "mAP" in result[k]} == {modality}
    assert _evaluate(run, data, modality)["num_clips"] == 24
