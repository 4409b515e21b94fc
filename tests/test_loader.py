"""The training stream: equal batches per rank, determinism, exact replay, config checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver.config import load_config
from perceiver.loader import TrainStream, eval_batches, rank_shards, train_batches
from pipeline import batch_memory
from pipeline.dataset import DatasetMismatchError, check_compatible, open_dataset
from pipeline.recipe import modalities_of
from tests.test_sampler import TINY, write_dataset


@pytest.fixture(scope="module")
def info(micro_data):
    return open_dataset(str(micro_data.train))


@pytest.fixture(scope="module")
def cfg():
    return load_config("configs/micro.yaml")


def _stream(info, cfg, rank: int, world: int = 2, epoch: int = 0, steps: int = 5, skip: int = 0, seed: int = 0,
            workers: int = 0):
    return TrainStream(info, modalities_of(cfg.data, cfg.inputs.modalities), batch_size=cfg.train.batch_size,
                       seed=seed, epoch=epoch, rank=rank, world=world, steps=steps, skip=skip,
                       shuffle_buffer=cfg.train.shuffle_buffer, loader_workers=workers)


def _fingerprint(batches) -> list[tuple]:
    return [(round(float(b.content["audio"].float().sum()), 3), int(b.content["video"].float().sum()),
             tuple(b.labels.argmax(1).tolist()))
            for b in batches]


def test_every_rank_yields_exactly_the_steps_with_an_odd_shard_count(info, cfg):
    assert len(info.shards) == 3
    for world in (2, 4):  # 4 ranks > 3 shards: a rank without a shard of its own still yields
        for rank in range(world):
            assert len(list(_stream(info, cfg, rank, world, steps=7))) == 7


def test_ranks_split_shards_and_the_split_changes_by_epoch(info):
    split = [rank_shards(info.shards, 0, 0, r, 2) for r in range(2)]
    assert sorted(itertools.chain(*split)) == sorted(info.shards)
    assert any(rank_shards(info.shards, 0, e, 0, 2) != split[0] for e in range(1, 6))


def test_order_is_a_function_of_seed_epoch_and_rank(info, cfg):
    a = _fingerprint(_stream(info, cfg, 0))
    assert a == _fingerprint(_stream(info, cfg, 0))
    assert a != _fingerprint(_stream(info, cfg, 1))
    assert a != _fingerprint(_stream(info, cfg, 0, epoch=1))
    assert a != _fingerprint(_stream(info, cfg, 0, seed=1))


def test_skipping_replays_to_the_same_position(info, cfg):
    full = _fingerprint(_stream(info, cfg, 1, steps=6))
    assert _fingerprint(_stream(info, cfg, 1, steps=6, skip=4)) == full[4:]


def test_loader_workers_read_their_own_shards_and_replay_exactly(info, cfg):
    # 1 rank x 2 workers = 2 readers over 3 shards: each worker reads only its own.
    assert sorted(rank_shards(info.shards, 0, 0, 0, 2) + rank_shards(info.shards, 0, 0, 1, 2)) == sorted(info.shards)
    full = _fingerprint(train_batches(_stream(info, cfg, 0, world=1, steps=7, workers=2)))
    assert len(full) == 7
    for skip in (1, 2, 3):
        resumed = _fingerprint(train_batches(_stream(info, cfg, 0, world=1, steps=7, skip=skip, workers=2)))
        assert resumed == full[skip:]


def test_batches_hold_windows_of_the_recipe(info, cfg):
    batch = next(iter(_stream(info, cfg, 0)))
    assert batch.content["video"].shape == (4, 8, 32, 32, 3) and batch.content["video"].dtype == torch.uint8
    assert batch.content["audio"].shape == (4, 100, 32) and batch.labels.shape == (4, 8)
    assert batch.content["audio"].dtype == torch.float16  # log-mel as stored: made float32 on the device
    assert batch.present["audio"].all() and batch.present["video"].all()
    audio = next(m for m in modalities_of(cfg.data, cfg.inputs.modalities) if m.name == "audio")
    assert audio.prepare(batch.content["audio"]).dtype == torch.float32


class _Allocations(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.tensor([batch_memory.stack([np.zeros(3, np.int16)] * 2).is_shared(),
                            batch_memory.concatenate([np.zeros(5, np.uint8)], np.uint8).is_shared()])


def test_batches_are_built_in_shared_memory_only_inside_worker_processes():
    # Sent from a worker, a batch built in shared memory is not copied into it once more.
    (in_worker,) = list(torch.utils.data.DataLoader(_Allocations(), batch_size=None, num_workers=1))
    assert in_worker.tolist() == [True, True]
    assert next(iter(_Allocations())).tolist() == [False, False]


def test_eval_batches_cover_every_clip_once_with_crops(micro_data, cfg):
    eval_info = open_dataset(str(micro_data.eval))
    batches = list(eval_batches(eval_info, modalities_of(cfg.data, cfg.inputs.modalities), batch_size=3, crops=2))
    assert sum(len(b) for b in batches) == eval_info.num_samples == 8
    assert all(b.content["video"].shape[0] == 2 * len(b) for b in batches)


def test_a_config_that_does_not_match_the_shards_names_the_field(info):
    other = load_config("configs/micro.yaml", ["data.audio.n_mels=64"])
    with pytest.raises(DatasetMismatchError, match=r"audio\.n_mels=32 .* 64"):
        check_compatible(info, other.data, modalities_of(other.data, other.inputs.modalities))
    # The same recipe but for how frames are stored (the encoding may differ), another model: fine.
    tiny = load_config("configs/tiny.yaml", ["data.video.stored_size=0"])
    check_compatible(info, tiny.data, modalities_of(tiny.data, tiny.inputs.modalities))


def test_fourier_features_from_the_shard_equal_those_computed_on_the_device(info, cfg):
    from perceiver.classifier import AVClassifier

    from_shard = info.position_features  # read once, when the dataset is opened
    assert set(from_shard) == {"audio", "video"}
    torch.manual_seed(0)
    a = AVClassifier(cfg, len(info.classes), from_shard).eval()
    torch.manual_seed(0)
    b = AVClassifier(cfg, len(info.classes)).eval()
    batch = next(iter(_stream(info, cfg, 0)))
    with torch.no_grad():
        assert torch.equal(a(batch), b(batch))
    tampered = {**from_shard, "video": from_shard["video"] + np.float32(1e-3)}
    with pytest.raises(ValueError, match="video"):
        AVClassifier(cfg, len(info.classes), tampered)


def test_a_damaged_frame_makes_the_video_absent_not_the_run_crash(cfg):
    from perceiver.loader import assemble
    from pipeline.shards import Sample, encode_jpeg_frames

    frames = encode_jpeg_frames(np.full((16, 32, 32, 3), 128, np.uint8), 90)
    frames[3] = frames[3][: len(frames[3]) // 3]  # an intact tar holding a cut JPEG
    meta = {"has_audio": True, "has_video": True, "video_frames": 16, "audio_samples": 32000,
            "video": {"frames": 16}, "labels": [1]}
    damaged = Sample("k", meta, {"audio": np.zeros((200, 32), np.float16), "video": frames})
    mods = modalities_of(cfg.data, cfg.inputs.modalities)
    # The frames travel encoded and are decoded on the training device: that is where the cut one shows.
    batch = assemble([damaged], [[0, 8 / cfg.data.video.fps]], mods, num_classes=8).to(torch.device("cpu"))
    assert batch.present["video"].tolist() == [False, True]  # the window holding frame 3 only
    assert batch.present["audio"].tolist() == [True, True] and batch.content["video"][0].sum() == 0


def test_chunked_evaluation_scores_as_one_piece(micro_data, cfg):
    from perceiver.classifier import AVClassifier
    from perceiver.evaluation import score

    info = open_dataset(str(micro_data.eval))
    torch.manual_seed(0)
    model = AVClassifier(cfg, len(info.classes))
    # batch_size bounds the windows decoded and forwarded at once: 3 crops of 2 clips in chunks of 2, or whole.
    chunked, targets, _ = score(model, info, batch_size=2, crops=3, device=torch.device("cpu"))
    whole, same_targets, _ = score(model, info, batch_size=24, crops=3, device=torch.device("cpu"))
    np.testing.assert_array_equal(targets, same_targets)
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], atol=1e-5)


def test_what_a_reader_skipped_travels_with_its_next_batch_and_replays_on_resume(tmp_path):
    tiny = load_config("configs/micro.yaml", TINY)
    data = write_dataset(tmp_path, tiny, [[[0]] * 4, [[1]] * 4], num_classes=2)
    corrupt = Path(data.shards[1])
    corrupt.write_bytes(corrupt.read_bytes()[:corrupt.stat().st_size // 2])

    def skipped(skip: int) -> list[dict[str, int]]:
        return [b.read.skipped() for b in _stream(data, tiny, 0, world=1, steps=8, skip=skip)]

    full = skipped(0)
    assert sum(s["bad_shards"] for s in full) >= 3  # the corrupt shard, once per pass
    # A resumed stream's batches carry what they carried uninterrupted; the skipped batches' skips
    # belong to steps the run recorded before its checkpoint.
    assert skipped(5) == full[5:]
