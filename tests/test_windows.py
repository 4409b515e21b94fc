"""Window-sized training shards (``data.train_windows``): a training sample reads one window, not its clip.

Encoding stores k windows of a training clip, each cut from the decoded segment as its own sample;
the loader reads them as it reads whole segments (one window start: 0), the balanced sampler
weighs them by clip, and a run refuses to resume on windows regenerated with another seed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perceiver.config import load_config
from perceiver.loader import TrainStream, class_balance, cut, window_starts
from perceiver.run_dir import RunMismatchError, check_same_run
from pipeline import shards, storage
from pipeline.dataset import open_dataset
from pipeline.decode import DecodedClip
from pipeline.encode import EncodeOptions, encode_clip
from pipeline.recipe import modalities_of
from pipeline.records import ClipRow
from pipeline.synthetic import write_clip

CLIP = dict(fps=16.0, width=96, height=96, sample_rate=16000)


def _read(results, root: Path) -> list[shards.Sample]:
    shards.write_shard(storage.locate(root), "t.tar", [], [r.members for r in results])
    return list(shards.iter_samples([str(root / "t.tar")], decode_frames=False))


def test_a_stored_window_holds_what_the_segment_holds_there(tmp_path):
    # Raw audio, so the two cuts compare exactly (a log-mel window's edge frames see its own edges).
    cfg = load_config("configs/micro.yaml", ["data.segment_seconds=4.0", "data.audio.representation=raw"])
    mods = modalities_of(cfg.data, cfg.inputs.modalities)
    path = tmp_path / "clip.mp4"
    write_clip(path, seconds=4.0, labels=(0, 4), **CLIP)
    row = ClipRow("clip", "clip", None, None, (0, 4), str(path), "test:1")
    whole = encode_clip(row, EncodeOptions(cfg.data, tuple(mods)))
    windows_data = dataclasses.replace(cfg.data, train_windows=3, window_seed=7)
    windowed = encode_clip(row, EncodeOptions(windows_data, tuple(mods)))
    assert [r["key"] for r in windowed.index_rows] == ["clip_w0", "clip_w1", "clip_w2"]
    assert {r["clip"] for r in windowed.index_rows} == {"clip"} and whole.index_rows[0]["clip"] is None
    # An evaluation split keeps the whole segment, whatever the recipe says.
    kept = encode_clip(row, EncodeOptions(windows_data, tuple(mods), keep_short=True))
    assert [r["key"] for r in kept.index_rows] == ["clip"]
    (segment,) = _read([whole], tmp_path / "whole")
    stored = _read([windowed], tmp_path / "windows")
    step = max(m.step_s for m in mods)
    for sample, index_row in zip(stored, windowed.index_rows, strict=True):
        start = sample.meta["window_start"]
        assert start == index_row["window_start"] and 0 <= start <= 3.0 and abs(start / step - round(start / step)) < 1e-9
        assert window_starts(sample.meta, mods, 1, np.random.default_rng(0)) == [0.0]  # one place to cut it
        mine, theirs = cut(sample, mods, 0.0), cut(segment, mods, start)
        for m in mods:
            np.testing.assert_array_equal(mine.windows[m.name], theirs.windows[m.name])
            assert mine.present[m.name] and mine.masks[m.name].all()
        assert index_row["bytes"] < whole.index_rows[0]["bytes"] / 3  # a quarter of the segment, plus headers
    # The same seed draws the same windows; another draws others.
    again = encode_clip(row, EncodeOptions(windows_data, tuple(mods)))
    assert [r["window_start"] for r in again.index_rows] == [r["window_start"] for r in windowed.index_rows]
    other = encode_clip(row, EncodeOptions(dataclasses.replace(windows_data, window_seed=8), tuple(mods)))
    assert [r["window_start"] for r in other.index_rows] != [r["window_start"] for r in windowed.index_rows]


def test_a_window_holds_only_the_real_content_inside_it():
    video = np.full((40, 4, 4, 3), 200, np.uint8)  # 10 s at 4 fps; real frames 8..20 (2 s to 5 s)
    audio = np.ones(10 * 100, np.float32)  # 100 Hz; real samples 300..900 (3 s to 9 s)
    clip = DecodedClip(video=video, video_frames=20, audio=audio, audio_samples=900, has_video=True,
                       has_audio=True, video_first=8, audio_first=300)
    inside = clip.part(4.0, 2.0, fps=4.0, sample_rate=100)
    assert (inside.video_first, inside.video_frames, inside.audio_first, inside.audio_samples) == (0, 4, 0, 200)
    assert inside.video.shape == (8, 4, 4, 3) and inside.audio.shape == (200,)
    before = clip.part(0.5, 2.0, fps=4.0, sample_rate=100)  # video from 2 s, audio from 3 s: after its end
    assert (before.video_first, before.video_frames, before.audio_first, before.audio_samples) == (6, 8, 0, 0)
    after = clip.part(8.0, 2.0, fps=4.0, sample_rate=100)
    assert (after.video_first, after.video_frames, after.audio_first, after.audio_samples) == (0, 0, 0, 100)


@pytest.fixture(scope="module")
def windows_data(ray_cluster, micro_data, tmp_path_factory) -> Path:
    """The micro training set stored as 2 windows per clip, through the job."""
    out = tmp_path_factory.mktemp("windows") / "train"
    data = micro_data.data
    result = ray_cluster.run(sys.executable, "jobs/preprocess.py", "--config", "configs/micro.yaml",
                             "--set", "data.train_windows=2", "--segments", str(data / "balanced_train_segments.csv"),
                             "--labels", str(data / "class_labels_indices.csv"), "--media-dir", str(data / "clips"),
                             "--out", str(out))
    assert "48 samples (24 clips) in 3 shards" in result.stdout, result.stdout
    return out


def test_the_job_stores_windows_that_the_loader_and_sampler_read_by_clip(windows_data, micro_data):
    index, clips = pd.read_parquet(windows_data / "index.parquet"), pd.read_parquet(micro_data.train / "index.parquet")
    assert sorted(index["clip"].unique()) == sorted(clips["key"]) and (index.groupby("clip").size() == 2).all()
    meta = json.loads((windows_data / "dataset.json").read_text())
    assert meta["counts"]["clips"] == 24 and meta["counts"]["rows"] == 24 and meta["counts"]["samples"] == 48
    info, whole = open_dataset(str(windows_data)), open_dataset(str(micro_data.train))
    # The sampler counts clips, not windows, and a clip's windows weigh as much as its segment did.
    balance, reference = class_balance(info), class_balance(whole)
    assert balance.class_counts == reference.class_counts and balance.clips == reference.clips == 24
    assert sum(balance.shard_mass) == pytest.approx(sum(reference.shard_mass))
    assert balance.draws_per_weight == pytest.approx(2 * reference.draws_per_weight)
    cfg = load_config("configs/micro.yaml", ["data.train_windows=2"])
    mods = modalities_of(cfg.data, cfg.inputs.modalities)
    batches = list(TrainStream(info, mods, batch_size=4, seed=0, epoch=0, rank=0, world=1, steps=6, balance=balance))
    assert len(batches) == 6 and all(b.present["audio"].all() and not b.masks for b in batches)


def test_a_run_refuses_windows_regenerated_with_another_seed(windows_data, tmp_path):
    cfg = load_config("configs/micro.yaml")
    info, out = open_dataset(str(windows_data)), storage.locate(tmp_path / "run")
    check_same_run(out, cfg, info)
    check_same_run(out, cfg, info)  # the same windows resume
    regenerated = dataclasses.replace(info, recipe=dict(info.recipe, window_seed=1))
    with pytest.raises(RunMismatchError, match=r"dataset\.windows="):
        check_same_run(out, cfg, regenerated)
