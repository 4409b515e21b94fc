"""Presence per window: padding past a stream's real content is masked (or the modality absent), never
black frames or silence counted as content; evaluation keeps and scores clips shorter than a window."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver.classifier import AVClassifier
from perceiver.config import load_config
from perceiver.evaluation import evaluate
from perceiver.loader import assemble, window_starts
from pipeline import modality, shards, storage
from pipeline.dataset import open_dataset
from pipeline.decode import DecodedClip
from pipeline.encode import EncodeOptions, encode_clip
from pipeline.modality import clip_sample
from pipeline.recipe import modalities_of, recipe_record
from pipeline.records import ClipRow
from pipeline.synthetic import write_clip

CLIP = dict(fps=16.0, width=96, height=96, sample_rate=16000)


@pytest.fixture(scope="module")
def cfg():
    """The micro recipe (1 s windows: video 4 time slots of 0.25 s, log-mel 25 of 0.04 s) with 10 s segments."""
    cfg = load_config("configs/micro.yaml", ["data.segment_seconds=10.0"])
    return cfg


@pytest.fixture(scope="module")
def mods(cfg):
    return modalities_of(cfg.data, cfg.inputs.modalities)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presence")
    out = {"3s": root / "three.mp4", "short": root / "short.mp4"}
    write_clip(out["3s"], seconds=3.0, labels=(0, 4), **CLIP)
    write_clip(out["short"], seconds=0.6, labels=(1, 5), **CLIP)
    return out


def _encode(path: Path, cfg, mods, keep_short: bool = False):
    row = ClipRow(path.stem, path.stem, None, None, (0,), str(path), "test:1")
    return encode_clip(row, EncodeOptions(cfg.data, tuple(mods), keep_short=keep_short))


def _read(results, root: Path) -> list[shards.Sample]:
    loc = storage.locate(root)
    shards.write_shard(loc, "t.tar", [], [r.members for r in results])
    return list(shards.iter_samples([str(root / "t.tar")], decode_frames=False))


def test_training_windows_of_a_3s_clip_in_a_10s_recipe_hold_no_padding(cfg, mods, clips, tmp_path):
    (sample,) = _read([_encode(clips["3s"], cfg, mods)], tmp_path)
    assert sample.meta["video_padded"] and sample.meta["audio_padded"]  # 7 s of the stored segment are padding
    rng = np.random.default_rng(0)
    starts = [window_starts(sample.meta, mods, 1, rng)[0] for _ in range(200)] + \
        window_starts(sample.meta, mods, 16, None)
    assert max(starts) + 1.0 <= 3.0 + 1e-9  # windows are drawn inside the real content
    batch = assemble([sample] * len(starts), [[s] for s in starts], mods, num_classes=8)
    assert all(m.all() for m in batch.masks.values()) and all(p.all() for p in batch.present.values())


def test_a_window_past_the_end_masks_the_padded_tokens(cfg, mods, clips, tmp_path):
    (sample,) = _read([_encode(clips["3s"], cfg, mods)], tmp_path)
    batch = assemble([sample], [[2.5]], mods, num_classes=8)  # half of the window lies past 3 s
    video, audio = batch.masks["video"][0], batch.masks["audio"][0]
    np.testing.assert_array_equal(video.view(4, 16).all(dim=1).numpy(), [True, True, False, False])
    assert video.view(4, 16).any(dim=1).tolist() == [True, True, False, False]
    assert audio.tolist() == [True] * 13 + [False] * 12  # slots starting before 3.0 s
    model = AVClassifier(cfg, num_classes=8)
    _, mask = model.inputs(model.tokens(batch), batch.present, None, batch.masks)
    assert mask.sum().item() == 13 + 32  # the padding gets no attention, whatever its pixels


def test_a_stream_that_starts_late_is_absent_before_it_starts(cfg, mods):
    frames, samples = 80, 160000  # 10 s at 8 fps and 16 kHz
    clip = DecodedClip(video=np.zeros((frames, 32, 32, 3), np.uint8), video_frames=frames, video_first=8,
                       audio=np.zeros(samples, np.float32), audio_samples=samples, has_video=True, has_audio=True)
    sample = clip_sample("k", clip, mods, {"labels": [0]})
    batch = assemble([sample, sample], [[0.5], [0.0]], mods, num_classes=8)
    assert batch.masks["video"][0].view(4, 16).all(dim=1).tolist() == [False, False, True, True]
    # Nothing of the video in the first second: the modality is absent, zeroed as video dropout trains.
    assert batch.present["video"].tolist() == [True, False] and batch.masks["video"][1].all()
    assert batch.present["audio"].all() and "audio" not in batch.masks  # nothing padded: no mask travels


def test_evaluation_keeps_and_scores_a_clip_shorter_than_a_window(cfg, mods, clips, tmp_path):
    refused = _encode(clips["short"], cfg, mods)
    assert refused.failure["error"] == "too_short" and "data.min_seconds" in refused.failure["message"]
    kept = [_encode(clips["short"], cfg, mods, keep_short=True), _encode(clips["3s"], cfg, mods, keep_short=True)]
    data = storage.locate(tmp_path / "eval")
    shards.write_shard(data, "shards/e.tar", shards.fourier_members(modality.tags(mods), modality.position_features(mods)),
                       [r.members for r in kept])
    dataset = {"schema_version": shards.SCHEMA_VERSION, "recipe": recipe_record(cfg.data, mods),
               "classes": [{"index": i, "mid": f"/m/{i}", "name": f"c{i}"} for i in range(8)],
               "counts": {"samples": 2}, "shards": ["shards/e.tar"]}
    storage.write_bytes(data.fs, data.join("dataset.json"), json.dumps(dataset).encode())
    (short, _) = shards.iter_samples(open_dataset(data.uri).shards, decode_frames=False)
    batch = assemble([short], [window_starts(short.meta, mods, 2, None)], mods, num_classes=8)
    assert not batch.masks["video"].all() and batch.masks["video"].any()  # 0.6 s of 1 s: the rest is masked
    torch.manual_seed(0)
    result = evaluate(AVClassifier(cfg, num_classes=8), open_dataset(data.uri), batch_size=2, crops=2,
                      device=torch.device("cpu"))
    assert result["num_clips"] == 2


def test_min_seconds_sets_the_training_rule(cfg, mods, clips):
    lenient = dataclasses.replace(cfg.data, min_seconds=0.5)
    result = encode_clip(ClipRow("s", "s", None, None, (0,), str(clips["short"]), "t:1"),
                         EncodeOptions(lenient, tuple(modalities_of(lenient, cfg.inputs.modalities))))
    assert result.failure is None
