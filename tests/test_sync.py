"""Audio and video on one clock: a flash and a beep written at the same instant stay together, and a
stream remuxed to start late comes out exactly that much late, in every container uploads use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perceiver.config import load_config
from pipeline import shards, storage
from pipeline.decode import decode_clip, probe
from pipeline.encode import EncodeOptions, encode_clip
from pipeline.recipe import modalities_of
from pipeline.records import ClipRow
from pipeline.synthetic import SYNC_EVENT_S, flash_and_beep, write_sync_clip

FPS, SAMPLE_RATE = 25.0, 16000  # a 25 fps recipe
SECONDS = 3.0
TOLERANCE_S = 0.04  # one frame at 25 fps; AAC priming (21 ms) and Opus pre-skip (6.5 ms) fit in it
OFFSETS = {"none": {}, "video_late": {"video_delay_s": 0.5}, "audio_late": {"audio_delay_s": 0.5}}


def _decode(path: Path, start: float | None = None):
    return decode_clip(path, start=start, seconds=SECONDS, fps=FPS, size=32, sample_rate=SAMPLE_RATE)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_flash_minus_beep_is_the_streams_offset(tmp_path: Path, suffix: str, offset: str) -> None:
    delays = OFFSETS[offset]
    path = write_sync_clip(tmp_path / f"sync_{offset}{suffix}", seconds=SECONDS, **delays)
    video_delay, audio_delay = delays.get("video_delay_s", 0.0), delays.get("audio_delay_s", 0.0)
    info = probe(path)
    assert (info.video_start, info.audio_start) == pytest.approx((video_delay, audio_delay), abs=0.03)
    clip = _decode(path)
    flash, beep = flash_and_beep(clip.video, FPS, clip.audio, SAMPLE_RATE)
    # Each event where its stream's delay puts it on the file's clock, so their difference is the offset.
    assert flash == pytest.approx(SYNC_EVENT_S + video_delay, abs=TOLERANCE_S)
    assert beep == pytest.approx(SYNC_EVENT_S + audio_delay, abs=TOLERANCE_S)
    assert flash - beep == pytest.approx(video_delay - audio_delay, abs=TOLERANCE_S)
    # A late stream is absent before it starts (zeros, outside its real range), not shifted to 0.
    assert clip.video_first == pytest.approx(video_delay * FPS, abs=1)
    assert clip.audio_first == pytest.approx(audio_delay * SAMPLE_RATE, abs=0.03 * SAMPLE_RATE)
    assert not clip.video[:clip.video_first].any() and clip.video[clip.video_first:].all(axis=(1, 2, 3)).all()
    assert not clip.audio[:clip.audio_first].any()
    assert clip.video_frames == round(SECONDS * FPS) and clip.audio_samples == round(SECONDS * SAMPLE_RATE)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_window_seeked_into_keeps_the_offset(tmp_path: Path, suffix: str) -> None:
    """A segment of a full video (``--full-videos``: decode_clip seeks) is on the same clock."""
    path = write_sync_clip(tmp_path / f"late{suffix}", seconds=4.0, event_s=2.5, video_delay_s=0.5)
    clip = decode_clip(path, start=1.5, seconds=2.0, fps=FPS, size=32, sample_rate=SAMPLE_RATE)
    flash, beep = flash_and_beep(clip.video, FPS, clip.audio, SAMPLE_RATE)
    assert (flash, beep) == pytest.approx((1.5, 1.0), abs=TOLERANCE_S)
    assert (clip.video_first, clip.audio_first) == (0, 0)
    whole = decode_clip(path, start=None, seconds=4.0, fps=FPS, size=32, sample_rate=SAMPLE_RATE)
    np.testing.assert_array_equal(clip.video, whole.video[round(1.5 * FPS):round(3.5 * FPS)])
    # The sound at the same place as when decoded from the file's start: to the sample in mp4, to
    # Matroska's millisecond timestamps in WebM.
    _, whole_beep = flash_and_beep(whole.video, FPS, whole.audio, SAMPLE_RATE)
    assert beep == pytest.approx(whole_beep - 1.5, abs=1e-9 if suffix == ".mp4" else 0.0011)
    if suffix == ".mp4":
        window = whole.audio[round(1.5 * SAMPLE_RATE):round(3.5 * SAMPLE_RATE)]
        assert np.abs(clip.audio - window).max() < 0.01  # AAC's noise substitution is random, and quiet here


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_in_the_shards_flash_minus_beep_is_the_streams_offset(tmp_path: Path, suffix: str) -> None:
    """The same through preprocessing (encode_clip at a 25 fps recipe, the shard writer and reader)."""
    cfg = load_config("configs/micro.yaml", [
        f"data.segment_seconds={SECONDS}", f"data.video.fps={FPS}", "data.video.num_frames=25",
        "data.video.patch=[1,8,8]", "data.audio.representation=raw", f"data.audio.sample_rate={SAMPLE_RATE}"])
    options = EncodeOptions(cfg.data, tuple(modalities_of(cfg.data, cfg.inputs.modalities)))
    results = []
    for offset, delays in OFFSETS.items():
        path = write_sync_clip(tmp_path / f"{offset}{suffix}", seconds=SECONDS, **delays)
        results.append(encode_clip(ClipRow(offset, offset, None, None, (0,), str(path), "t:1"), options))
    shards.write_shard(storage.locate(tmp_path), "s.tar", [], [r.members for r in results])
    for sample in shards.iter_samples([str(tmp_path / "s.tar")]):
        delays = OFFSETS[sample.key]
        audio = sample.content["audio"].astype(np.float32) / 32767.0
        flash, beep = flash_and_beep(sample.content["video"], FPS, audio, SAMPLE_RATE)
        expected = delays.get("video_delay_s", 0.0) - delays.get("audio_delay_s", 0.0)
        assert flash - beep == pytest.approx(expected, abs=TOLERANCE_S), sample.key
