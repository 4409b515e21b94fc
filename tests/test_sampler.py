"""train.sampler: balanced draws clips by class weight across readers that own disjoint shards.

The datasets here are written with the shard writer (tiny raw-audio clips, so tens of thousands of
windows read fast) with their own dataset.json and index.parquet, and read through the real reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from perceiver.config import ConfigError, load_config
from perceiver.loader import TrainStream, class_balance, rank_shards, train_batches
from perceiver.run_dir import RunMismatchError, check_same_run
from pipeline import modality, records, shards, storage
from pipeline.dataset import DatasetInfo, open_dataset
from pipeline.decode import DecodedClip
from pipeline.recipe import modalities_of, recipe_record

# One 1 s window of 10 tokens from 2 s of 100 Hz audio: a clip is a few hundred bytes.
TINY = ["inputs.modalities=[audio]", "data.audio.representation=raw", "data.audio.sample_rate=100",
        "data.audio.num_samples=100", "data.audio.patch=10", "data.audio.num_bands=2"]
CLASSES = 6
COUNTS = (300, 100, 40, 20, 10, 5)  # clips whose first label is each class
RANKS, WORKERS, BATCH, STEPS = 2, 2, 25, 400  # 2 x 400 x 25 = 20,000 windows
# Relative, per class: at 20,000 draws one binomial standard deviation of the rarest rate (0.18) is 0.015.
TOLERANCE = 0.08


def write_dataset(root: Path, cfg, shard_labels: list[list[list[int]]], num_classes: int) -> DatasetInfo:
    """Shards ``<root>/shards/train-NNNNNN.tar`` holding one clip per labels list, with dataset.json and
    index.parquet as preprocessing writes them."""
    mods = modalities_of(cfg.data, cfg.inputs.modalities)
    loc = storage.locate(root)
    seconds, rate = cfg.data.segment_seconds, cfg.data.audio.sample_rate
    rng = np.random.default_rng(0)
    fourier = shards.fourier_members(modality.tags(mods), modality.position_features(mods))
    names, rows = [], []
    for s, clips in enumerate(shard_labels):
        name = f"train-{s:06d}.tar"
        samples = []
        for j, labels in enumerate(clips):
            audio = rng.uniform(-1, 1, round(seconds * rate)).astype(np.float32)
            clip = DecodedClip(video=None, video_frames=0, audio=audio, audio_samples=len(audio), has_video=False,
                               has_audio=True)
            samples.append(modality.clip_sample(f"k{s:03d}_{j:03d}", clip, mods, {"labels": sorted(labels)}))
        shards.write_shard(loc, f"shards/{name}", fourier, [shards.sample_members(x) for x in samples])
        names.append(f"shards/{name}")
        rows += [{"key": x.key, "ytid": x.key, "start_seconds": None, "end_seconds": None, "shard": name,
                  "labels": x.meta["labels"], "bytes": 0, "source": "test", "has_audio": True,
                  "audio_samples": x.meta["audio_samples"]} for x in samples]
    schema = records.schema(records.IndexRow, [("has_audio", pa.bool_()), ("audio_samples", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "index.parquet")
    dataset = {"schema_version": shards.SCHEMA_VERSION, "recipe": recipe_record(cfg.data, mods),
               "classes": [{"index": i, "mid": f"/m/{i}", "name": f"c{i}"} for i in range(num_classes)],
               "counts": {"samples": len(rows)}, "shards": names}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return open_dataset(str(root))


def skewed_labels(seed: int = 0) -> list[list[int]]:
    """Clips of COUNTS first labels, in class order, so that shards hold one or two classes each and
    differ in weight many times over; one clip in ten also carries a second, random label."""
    rng = np.random.default_rng(seed)
    labels = []
    for c, n in enumerate(COUNTS):
        for _ in range(n):
            extra = int(rng.integers(CLASSES))
            labels.append(sorted({c, extra}) if rng.random() < 0.1 else [c])
    return labels


def expected_rates(labels: list[list[int]], balanced: bool) -> np.ndarray:
    """Per class, the share of draws holding it: clips weighted by sum(1 / n_c) over their labels, or all alike."""
    n = np.zeros(CLASSES)
    for ls in labels:
        n[ls] += 1
    w = np.array([sum(1 / n[c] for c in ls) if balanced else 1.0 for ls in labels])
    return np.array([sum(wi for wi, ls in zip(w, labels, strict=True) if c in ls) for c in range(CLASSES)]) / w.sum()


@pytest.fixture(scope="module")
def cfg():
    return load_config("configs/micro.yaml", [*TINY, "train.sampler=balanced"])


@pytest.fixture(scope="module")
def skewed(cfg, tmp_path_factory):
    labels = skewed_labels()
    per_shard = [labels[i:i + 10] for i in range(0, len(labels), 10)]  # 48 shards of 10 clips (the last of 5)
    return labels, write_dataset(tmp_path_factory.mktemp("skewed"), cfg, per_shard, CLASSES)


def _stream(cfg, info, rank: int, *, steps: int = STEPS, skip: int = 0) -> TrainStream:
    return TrainStream(info, modalities_of(cfg.data, cfg.inputs.modalities), batch_size=BATCH, seed=3, epoch=1,
                       rank=rank, world=RANKS, steps=steps, skip=skip, shuffle_buffer=16, loader_workers=WORKERS,
                       balance=class_balance(info))


@pytest.fixture(scope="module")
def drawn(cfg, skewed):
    """Every batch of both ranks, each rank's 2 DataLoader workers reading their own shards."""
    return [list(train_batches(_stream(cfg, skewed[1], rank))) for rank in range(RANKS)]


def test_the_weights_come_from_the_index(skewed):
    labels, info = skewed
    balance = class_balance(info)
    n = [sum(c in ls for ls in labels) for c in range(CLASSES)]
    assert balance.class_counts == tuple(n) and balance.clips == len(labels) == 475
    first = [sum(1 / n[c] for c in ls) for ls in labels[:10]]  # the first shard's clips
    assert balance.shard_mass[0] == pytest.approx(sum(first))
    assert sum(balance.shard_mass) == pytest.approx(CLASSES)  # each class weighs 1 in all


def test_balanced_readers_own_disjoint_shards_of_near_equal_weight(skewed):
    info = skewed[1]
    mass = class_balance(info).shard_mass
    readers = RANKS * WORKERS
    groups = [rank_shards(info.shards, 3, 1, r, readers, mass=mass) for r in range(readers)]
    assert sorted(sum(groups, [])) == sorted(info.shards)
    weight = dict(zip(info.shards, mass, strict=True))

    def spread(owned: list[list[str]]) -> float:
        loads = [sum(weight[p] for p in g) for g in owned]
        return max(loads) - min(loads)

    # Each shard to the lightest reader leaves them within one shard's weight; heaviest first, far closer,
    # where the uniform sampler's slices of a permutation differ by half a reader's weight.
    uniform = [rank_shards(info.shards, 3, 1, r, readers) for r in range(readers)]
    assert spread(groups) <= max(mass) and spread(groups) < spread(uniform) / 10


def test_balanced_draws_give_every_class_its_weight(skewed, drawn):
    labels = skewed[0]
    assert [len(batches) for batches in drawn] == [STEPS] * RANKS  # equal batches per rank
    rows = torch.cat([b.labels for batches in drawn for b in batches])
    assert rows.shape == (RANKS * STEPS * BATCH, CLASSES) == (20_000, CLASSES)
    seen, want = rows.mean(0).numpy(), expected_rates(labels, balanced=True)
    np.testing.assert_allclose(seen, want, rtol=TOLERANCE)
    # The tolerance tells the samplers apart: uniform's rates would miss it in every class but one.
    uniform = expected_rates(labels, balanced=False)
    assert (np.abs(uniform - want) > TOLERANCE * want).sum() >= CLASSES - 1


def test_a_resumed_balanced_stream_replays_the_same_batches(cfg, skewed, drawn):
    skip = 7  # worker 0 now serves sub-stream 1, whose batch 7 comes first
    resumed = list(train_batches(_stream(cfg, skewed[1], 1, steps=30, skip=skip)))
    assert len(resumed) == 30 - skip
    for a, b in zip(resumed, drawn[1][skip:30], strict=True):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.content["audio"], b.content["audio"])


def test_a_resume_across_a_sampler_change_is_refused(cfg, skewed, tmp_path):
    info = skewed[1]
    out = storage.locate(tmp_path / "run")
    check_same_run(out, cfg, info)
    record = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert record["train"]["sampler"] == "balanced"
    assert record["dataset"]["class_counts"] == list(class_balance(info).class_counts)
    check_same_run(out, cfg, info)  # the same run resumes
    uniform = load_config("configs/micro.yaml", TINY)
    with pytest.raises(RunMismatchError, match=r"train\.sampler='balanced', this run has 'uniform'"):
        check_same_run(out, uniform, info)


def test_the_sampler_is_checked():
    assert load_config("configs/micro.yaml").train.sampler == "uniform"
    with pytest.raises(ConfigError, match="train.sampler must be one of uniform, balanced"):
        load_config("configs/micro.yaml", ["train.sampler=weighted"])
