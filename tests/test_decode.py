"""The decode stage on clips written by the synthetic writer."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import DECODER_VERSION, DecodeError, decode_clip, probe
from pipeline.synthetic import remux, write_clip, write_multitrack_clip

RECIPE = dict(fps=8.0, size=32, sample_rate=16000)  # the tiny config's decode recipe
SOURCE = dict(fps=16, width=96, height=96, sample_rate=16000)  # the small synthetic clip


def _write(path: Path, **kwargs) -> Path:
    write_clip(path, **{**SOURCE, "seconds": 2.0, **kwargs})
    return path


def _remux(src: Path, dst: Path, *, rotation: int = 0, faststart: bool = False) -> Path:
    """Copy the streams of ``src`` into ``dst``, optionally rotated or with the index in front."""
    return remux(src, dst, rotation=rotation, faststart=faststart)


def _reason(path: Path, start: float | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_clip(path, start=start, seconds=2.0, **RECIPE)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    return caught.value.reason


def test_full_clip_has_the_recipe_shapes_and_true_lengths(tmp_path: Path) -> None:
    clip = decode_clip(_write(tmp_path / "a.mp4", labels=(0, 4)), start=None, seconds=2.0, **RECIPE)
    assert clip.video.shape == (16, 32, 32, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (32000,) and clip.audio.dtype == np.float32
    # AAC decodes to whole frames (past 32,000 samples); the stream says the real sound is 2 s.
    assert (clip.video_frames, clip.audio_samples) == (16, 32000)
    assert clip.has_video and clip.has_audio
    assert np.abs(clip.audio).max() <= 1.0 and clip.video[-1].std() > 5


def test_short_clip_is_zero_padded_with_true_lengths(tmp_path: Path) -> None:
    clip = decode_clip(_write(tmp_path / "short.mp4", seconds=1.0, labels=(1, 5)),
                       start=None, seconds=2.0, **RECIPE)
    assert (clip.video_frames, clip.audio_samples) == (8, 16000)
    assert clip.video[7].any() and not clip.video[8:].any()
    assert np.abs(clip.audio[:16000]).mean() > 0.01 and not clip.audio[16000:].any()


def test_probe_describes_the_streams(tmp_path: Path) -> None:
    info = probe(_write(tmp_path / "s.mp4", width=160, height=96, sample_rate=48000, audio_channels=2))
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 160, 96)
    assert (info.fps, info.audio_rate, info.audio_channels, info.rotation) == (16.0, 48000, 2, 0)
    assert info.duration == pytest.approx(2.0) and info.audio_duration == pytest.approx(2.0)


@pytest.mark.parametrize("video, audio", [(True, False), (False, True)])
def test_a_missing_stream_gives_zeros_and_a_flag(tmp_path: Path, video: bool, audio: bool) -> None:
    clip = decode_clip(_write(tmp_path / "one.mp4", labels=(0, 4), video=video, audio=audio),
                       start=None, seconds=2.0, **RECIPE)
    assert (clip.has_video, clip.has_audio) == (video, audio)
    assert (clip.video_frames, clip.audio_samples) == ((16 if video else 0), (32000 if audio else 0))
    assert clip.video.shape == (16, 32, 32, 3) and clip.audio.shape == (32000,)
    assert clip.video.any() == video and clip.audio.any() == audio


def test_stereo_48k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    path = _write(tmp_path / "stereo.mp4", sample_rate=48000, audio_channels=2, labels=(5,), video=False)
    clip = decode_clip(path, start=None, seconds=2.0, **RECIPE)
    assert clip.audio_samples == 32000 and np.isfinite(clip.audio).all()
    spectrum = np.abs(np.fft.rfft(clip.audio[:16000]))  # 1 Hz bins
    assert 3325 <= spectrum.argmax() <= 3675  # the high tone, 3500 Hz +- 5%
    # At the source rate the mono track is the mean of the channels (libswresample's downmix is louder).
    native = decode_clip(path, start=None, seconds=2.0, **{**RECIPE, "sample_rate": 48000}).audio
    with av.open(str(path)) as container:
        channels = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    np.testing.assert_allclose(native, channels.mean(axis=0)[:96000], atol=1e-4)


def test_portrait_source_is_resized_and_centre_cropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "portrait.mp4", width=96, height=160, labels=(3,))
    clip = decode_clip(path, start=None, seconds=2.0, **RECIPE)
    assert clip.video.shape == (16, 32, 32, 3)
    yellow = (clip.video[..., 0] > 180) & (clip.video[..., 1] > 160) & (clip.video[..., 2] < 110)
    blinking_on = yellow[:, 16, 0]  # the left border of the full frame survives the crop ...
    assert 4 <= blinking_on.sum() <= 12
    assert yellow[blinking_on][:, 16, :2].all()
    assert not yellow[:, :2, 16].any()  # ... the top border of the 96x160 frame is cropped away


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(tmp_path: Path, rotation: int) -> None:
    # A landscape source, so that a 90-degree turn changes which side is shorter.
    src = _write(tmp_path / "src.mp4", seconds=1.0, width=160, height=96, labels=(0, 1))
    rotated = _remux(src, tmp_path / f"rot{rotation}.mp4", rotation=rotation)
    assert probe(rotated).rotation == rotation
    upright = np.rot90(decode_clip(src, start=None, seconds=1.0, **RECIPE).video, rotation // 90, axes=(1, 2))
    clip = decode_clip(rotated, start=None, seconds=1.0, **RECIPE)
    assert np.abs(clip.video.astype(int) - upright).mean() < 10


def test_seeking_gives_the_content_at_that_time(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.mp4", seconds=4.0, labels=(0, 1, 6))
    recipe = {**RECIPE, "fps": 16.0}  # every source frame, to check the picks at 8 fps too
    whole = decode_clip(path, start=None, seconds=4.0, **recipe)
    middle = decode_clip(path, start=1.0, seconds=2.0, **recipe)
    assert (middle.video_frames, middle.audio_samples) == (32, 32000)
    np.testing.assert_array_equal(middle.video, whole.video[16:48])
    np.testing.assert_array_equal(middle.audio, whole.audio[16000:48000])
    every_other = decode_clip(path, start=1.0, seconds=2.0, **RECIPE)
    np.testing.assert_array_equal(every_other.video, whole.video[16:48:2])
    # 6 fps never falls halfway between 16 fps frames: nearest, not the one before.
    six = decode_clip(path, start=None, seconds=4.0, **{**RECIPE, "fps": 6.0})
    np.testing.assert_array_equal(six.video, whole.video[np.round(np.arange(24) * 16 / 6).astype(int)])
    tail = decode_clip(path, start=3.0, seconds=2.0, **RECIPE)  # runs 1 s past the end
    assert (tail.video_frames, tail.audio_samples) == (8, 16000)
    np.testing.assert_array_equal(tail.video[:8], whole.video[48::2])
    assert _reason(path, start=5.0) == "empty"


def test_truncated_file_reports_the_audio_it_really_decoded(tmp_path: Path) -> None:
    whole = _remux(_write(tmp_path / "a.mp4", labels=(4,), video=False), tmp_path / "front.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert probe(cut).audio_duration == pytest.approx(2.0)  # the header still claims 2 s
    clip = decode_clip(cut, start=None, seconds=2.0, **RECIPE)
    assert 4000 < clip.audio_samples < 24000
    assert not clip.audio[clip.audio_samples:].any()


def test_truncated_video_is_a_decode_failure(tmp_path: Path) -> None:
    whole = _remux(_write(tmp_path / "a.mp4", labels=(0, 4)), tmp_path / "front.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert _reason(cut) == "decode_failed"


def test_av1_is_an_unsupported_codec_not_a_silent_clip(tmp_path: Path) -> None:
    assert _reason(_write(tmp_path / "av1.mp4", video_codec="libsvtav1", labels=(0,))) == "unsupported_codec:av1"


def test_other_codecs_decode(tmp_path: Path) -> None:
    clip = decode_clip(_write(tmp_path / "mpeg4.mp4", video_codec="mpeg4"), start=None, seconds=2.0, **RECIPE)
    assert clip.video_frames == 16


def test_broken_files_raise_decode_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 64)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    subtitles = tmp_path / "subtitles.mp4"  # a readable container with no audio or video
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n")
    assert [_reason(p) for p in (garbage, empty, subtitles, tmp_path / "missing.mp4")] == [
        "unreadable", "empty", "no_streams", "unreadable"]


def test_decode_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("x.mp4", "decode_failed", "video: broken")))
    assert (err.reason, str(err)) == ("decode_failed", "x.mp4: video: broken [decode_failed]")


def test_frames_are_counted_with_a_tolerance(tmp_path: Path) -> None:
    # 31 frames of 40 ms end at 1.24 s: the 32nd instant of a 25 fps window (1.24 s) lies past the
    # end. Decoder version 1 compared it in float64 against decord's float32 end (1.2400000095)
    # and counted the last frame twice.
    for suffix, codecs in ((".mp4", {}), (".webm", {"video_codec": "libvpx-vp9", "audio_codec": "libopus"})):
        path = _write(tmp_path / f"c124{suffix}", seconds=1.24, fps=25, sample_rate=48000, labels=(0, 4), **codecs)
        clip = decode_clip(path, start=None, seconds=2.0, fps=25.0, size=32, sample_rate=16000)
        # WebM frames carry no duration in decord: the last one still lasts a frame period.
        assert (clip.video_first, clip.video_frames) == (0, 31), suffix
        assert clip.video[30].any() and not clip.video[31:].any()
        assert clip.audio_samples == pytest.approx(1.24 * 16000, abs=0.01 * 16000)
    assert DECODER_VERSION == 2


def test_the_default_audio_track_wins(tmp_path: Path) -> None:
    # Three tracks: a low tone, a high tone (marked default) and a chirp; streams.audio[0] is the wrong one.
    path = write_multitrack_clip(tmp_path / "tracks.mkv", tracks=[(4,), (5,), (6,)], default=1, seconds=2.0,
                                 video_labels=(0,), **SOURCE)
    info = probe(path)
    assert info.audio_index == 2 and info.audio_index != next(i for i in range(4) if i != info.video_index)
    clip = decode_clip(path, start=None, seconds=2.0, **RECIPE)
    assert clip.has_video and clip.audio_samples == 32000
    spectrum = np.abs(np.fft.rfft(clip.audio[:16000]))  # 1 Hz bins
    assert 3325 <= spectrum.argmax() <= 3675  # the high tone, 3500 Hz +- 5%, not the first track's 250 Hz


def test_audio_only_m4a(tmp_path: Path) -> None:
    path = _write(tmp_path / "sound.m4a", video=False, labels=(5,), sample_rate=44100, audio_channels=2)
    info = probe(path)
    assert (info.has_video, info.has_audio, info.audio_codec) == (False, True, "aac")
    clip = decode_clip(path, start=None, seconds=2.0, **RECIPE)
    assert (clip.has_video, clip.video_frames, clip.audio_first, clip.audio_samples) == (False, 0, 0, 32000)
    assert not clip.video.any() and np.abs(clip.audio).mean() > 0.01


def test_late_streams_are_absent_before_they_start(tmp_path: Path) -> None:
    src = _write(tmp_path / "src.mp4", labels=(0, 4))
    late_video = decode_clip(remux(src, tmp_path / "late_video.mp4", video_delay_s=0.5),
                             start=None, seconds=2.0, **RECIPE)
    assert (late_video.video_first, late_video.video_frames) == (4, 16)  # 0.5 s at 8 fps, to the window's end
    assert not late_video.video[:4].any() and all(frame.any() for frame in late_video.video[4:])
    assert (late_video.audio_first, late_video.audio_samples) == (0, 32000)
    late_audio = decode_clip(remux(src, tmp_path / "late_audio.mkv", audio_delay_s=0.5),
                             start=None, seconds=2.0, **RECIPE)
    assert (late_audio.video_first, late_audio.video_frames) == (0, 16)
    # Out of mp4 the AAC priming (1,024 samples, trimmed there by an edit list) is sound in Matroska,
    # as FFmpeg plays it: the track starts that much before its first real sample.
    assert late_audio.audio_first == 8000 - 1024 and not late_audio.audio[:8000 - 1024].any()
    whole = decode_clip(src, start=None, seconds=2.0, **RECIPE)
    np.testing.assert_array_equal(late_video.video[4:], whole.video[:12])


def test_a_segment_of_a_full_video_decodes_only_its_range(tmp_path: Path) -> None:
    path = _write(tmp_path / "full.mp4", seconds=60.0, video=False, labels=(6,))
    segment = decode_clip(path, start=50.0, seconds=2.0, **RECIPE)
    assert (segment.audio_first, segment.audio_samples) == (0, 32000)

    def cpu(start: float | None, seconds: float) -> float:
        best = float("inf")
        for _ in range(3):
            began = time.process_time()
            decode_clip(path, start=start, seconds=seconds, **RECIPE)
            best = min(best, time.process_time() - began)
        return best

    # Decoding all 60 s of sound to keep 2 s of it costs 10x more than seeking to them.
    assert cpu(50.0, 2.0) < 0.4 * cpu(None, 60.0)
