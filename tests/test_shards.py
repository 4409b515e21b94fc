"""The shard format: round trip, atomic writes, and a reader that never executes data."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import shards, storage


def _sample(key: str, seed: int, frames: int = 6) -> shards.Sample:
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, size=(frames, 16, 16, 3), dtype=np.uint8)
    audio = rng.integers(-32768, 32767, size=(4000,), dtype=np.int16)
    meta = {"labels": [seed % 3], "has_audio": True, "has_video": True, "audio_samples": 4000,
            "video_frames": frames, "video": {"frames": frames}}
    return shards.Sample(key, meta, {"audio": audio, "video": video})


def _jpeg(sample: shards.Sample) -> shards.Sample:
    """The sample with its video stored as JPEG frames, as the video modality's jpeg encoding stores it."""
    return shards.Sample(sample.key, sample.meta,
                         {**sample.content, "video": shards.encode_jpeg_frames(sample.content["video"], 90)})


def _write(tmp_path: Path, samples, name: str = "t-000000.tar") -> str:
    loc = storage.locate(tmp_path)
    fourier = shards.fourier_members({"audio": {"grid": [5]}}, {"audio": np.arange(15, dtype=np.float32).reshape(5, 3)})
    shards.write_shard(loc, name, fourier, [shards.sample_members(s) for s in samples])
    return str(tmp_path / name)


def test_round_trip_is_identical(tmp_path):
    written = [_sample("-a_b-c", 0), _sample("x_1000", 1)]
    path = _write(tmp_path, written)
    read = list(shards.iter_samples([path]))
    assert [s.key for s in read] == ["-a_b-c", "x_1000"]
    for w, r in zip(written, read, strict=True):
        np.testing.assert_array_equal(r.content["video"], w.content["video"])
        np.testing.assert_array_equal(r.content["audio"], w.content["audio"])
        assert r.meta["labels"] == w.meta["labels"] and r.meta["key"] == w.key
    tags, feats = shards.read_fourier(path)
    assert tags == {"audio": {"grid": [5]}}
    np.testing.assert_array_equal(feats["audio"], np.arange(15, dtype=np.float32).reshape(5, 3))


def test_jpeg_frames_decode_close_to_the_source_and_lazily(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, None, :, None], (4, 16, 1, 3))
    sample = _jpeg(shards.Sample("k", {"labels": [0], "video": {"frames": 4}},
                                 {"audio": np.zeros(10, np.int16), "video": smooth}))
    path = _write(tmp_path, [sample])
    with tarfile.open(path) as tar:
        assert [m.name for m in tar.getmembers()][-3:] == ["k.json", "k.audio.npy", "k.video.mjpeg"]
    (read,) = shards.iter_samples([path])
    video = read.content["video"]
    assert video.shape == smooth.shape and np.abs(video.astype(int) - smooth).mean() < 4
    (lazy,) = shards.iter_samples([path], decode_frames=False)
    assert len(lazy.content["video"]) == 4 and all(isinstance(f, memoryview) for f in lazy.content["video"])


def test_rewriting_gives_byte_identical_shards(tmp_path):
    a = Path(_write(tmp_path, [_sample("k", 3)], name="a.tar")).read_bytes()
    b = Path(_write(tmp_path, [_sample("k", 3)], name="b.tar")).read_bytes()
    assert a == b


def test_a_failed_write_leaves_nothing_under_the_shard_name(tmp_path):
    loc = storage.locate(tmp_path)

    def exploding():
        yield shards.sample_members(_sample("k", 0))
        raise RuntimeError("killed mid-shard")

    with pytest.raises(RuntimeError):
        shards.write_shard(loc, "t-000001.tar", [], exploding())
    assert list(tmp_path.iterdir()) == []


def _tar_with(tmp_path: Path, members: dict[str, bytes], name: str = "evil.tar") -> str:
    path = tmp_path / name
    with tarfile.open(path, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("ext", ["pyd", "pickle", "pkl", "pth", "pt"])
def test_pickled_members_are_never_unpickled(tmp_path, ext):
    marker = tmp_path / f"executed-{ext}"
    payload = pickle.dumps(_Payload(str(marker)))
    good = dict(shards.sample_members(_sample("ok", 0)))
    path = _tar_with(tmp_path, {**good, f"ok.{ext}": payload, f"evil.{ext}": payload})
    stats = shards.ReadStats()
    read = list(shards.iter_samples([path], stats=stats))
    assert [s.key for s in read] == ["ok"]
    assert not marker.exists()
    assert len(stats.refused_members) == 2


def test_object_npy_is_refused(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(str(tmp_path / "boom"))], dtype=object), allow_pickle=True)
    with pytest.raises(shards.ShardFormatError, match="object arrays"):
        shards.load_npy(buf.getvalue())
    assert not (tmp_path / "boom").exists()


def test_absurd_npy_header_is_rejected_before_allocating():
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 1000000), }"
    header += " " * (63 - len(header) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64
    with pytest.raises(shards.ShardFormatError, match="header claims shape"):
        shards.load_npy(data, "x.audio.npy")


def test_oversized_members_are_refused_unread(tmp_path):
    path = _write(tmp_path, [_sample("big", 0)])
    stats = shards.ReadStats()
    assert list(shards.iter_samples([path], stats=stats, max_member_bytes=1000)) == []
    assert any("too large" in m for m in stats.refused_members)
    assert stats.incomplete_samples  # the sample lost its arrays, so it is skipped, not half-read


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    good = _write(tmp_path, [_sample(f"k{i}", i) for i in range(3)], name="good.tar")
    data = Path(good).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    stats = shards.ReadStats()
    read = list(shards.iter_samples([str(cut), good], stats=stats))
    assert stats.bad_shards == [str(cut)]
    assert [s.key for s in read][-3:] == ["k0", "k1", "k2"]
    for s in read:  # whatever came from the cut shard is whole
        assert s.content["video"].shape == (6, 16, 16, 3)


def test_sample_json_names_modalities(tmp_path):
    sample = _sample("m", 0)
    sample.meta["modalities"] = {"audio": {"id": 0, "grid": [5]}}
    path = _write(tmp_path, [sample])
    (read,) = shards.iter_samples([path])
    assert read.meta["modalities"]["audio"]["id"] == 0
    assert json.loads(json.dumps(read.meta)) == read.meta


def test_object_store_writes_appear_only_when_complete():
    """The object-store branch (no rename there): stage locally, upload in one piece on success."""
    import pyarrow.fs as pafs

    fs = pafs._MockFileSystem()  # pyarrow's in-memory file system stands in for s3:// or gs://
    loc = storage.Location(fs, "bucket/ds/shards", "mock://bucket/ds/shards")

    def exploding():
        yield shards.sample_members(_sample("k", 0))
        raise RuntimeError("killed mid-shard")

    with pytest.raises(RuntimeError):
        shards.write_shard(loc, "t-000000.tar", [], exploding())
    assert storage.list_files(fs, loc.path) == []
    size = shards.write_shard(loc, "t-000000.tar", [], [shards.sample_members(_sample("k", 0))])
    assert storage.list_files(fs, loc.path) == ["bucket/ds/shards/t-000000.tar"]
    assert len(storage.read_bytes(fs, loc.join("t-000000.tar"))) == size


def test_mjpeg_frame_lengths_must_match_the_json(tmp_path):
    video = np.zeros((4, 16, 16, 3), np.uint8)
    members = dict(shards.sample_members(_jpeg(shards.Sample("k", {"video": {"frames": 4}},
                                                             {"audio": np.zeros(4, np.int16), "video": video}))))
    meta = json.loads(members["k.json"])
    meta["video"]["frame_bytes"][0] += 1  # lengths that no longer add up to the stream
    members["k.json"] = json.dumps(meta).encode()
    stats = shards.ReadStats()
    assert list(shards.iter_samples([_tar_with(tmp_path, members)], stats=stats)) == []
    assert stats.incomplete_samples == [f"{tmp_path / 'evil.tar'}:k"]
