"""The synthetic AudioSet-like dataset: files, formats, determinism and content."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from pipeline.synthetic import (
    CLASSES,
    SYNC_BEEP_HZ,
    SYNC_EVENT_S,
    make_dataset,
    remux,
    write_clip,
    write_multitrack_clip,
    write_sync_clip,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(seconds=1.0, fps=16, width=96, height=96, sample_rate=16000)


def _segments(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert [ln.startswith("#") for ln in lines[:4]] == [True, True, True, False]
    return list(csv.reader(lines[3:], skipinitialspace=True))


def _frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _audio(path: Path) -> np.ndarray:
    return decord.AudioReader(str(path), sample_rate=-1, mono=True)[:].asnumpy()[0]


def test_write_clip_is_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_clip(tmp_path / f"{name}.mp4", labels=(0, 5), seed=seed, **SMALL)
    a, b, c = ((tmp_path / f"{n}.mp4").read_bytes() for n in "abc")
    assert a == b
    assert a != c


def test_make_dataset_is_deterministic_per_seed(tmp_path: Path) -> None:
    first, second = (make_dataset(tmp_path / name, num_train=3, num_eval=2, seconds=0.5, seed=7)
                     for name in ("first", "second"))
    assert (first.train, first.eval) == (second.train, second.eval)
    for a, b in ((first.train_csv, second.train_csv), (first.eval_csv, second.eval_csv)):
        assert a.read_bytes() == b.read_bytes()
    ytid = first.train[0][0]
    assert (first.clips_dir / f"{ytid}.mp4").read_bytes() == (second.clips_dir / f"{ytid}.mp4").read_bytes()


def test_segment_csvs_parse_like_audioset(synthetic_dir: Path) -> None:
    mids = {c.mid for c in CLASSES}
    ids = []
    for name, count in (("balanced_train_segments.csv", 24), ("eval_segments.csv", 8)):
        rows = _segments(synthetic_dir / name)
        assert len(rows) == count
        for ytid, start, end, labels in rows:  # four fields: the quoted label list stays one
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}", ytid)
            assert float(end) - float(start) == pytest.approx(2.0)
            assert 1 <= len(labels.split(",")) <= 3 and set(labels.split(",")) <= mids
            assert (synthetic_dir / "clips" / f"{ytid}.mp4").is_file()
            ids.append(ytid)
    assert len(set(ids)) == len(ids)
    assert any(i.startswith("-") for i in ids) and any("_" in i for i in ids)
    assert '", "' not in (synthetic_dir / "eval_segments.csv").read_text()  # one quoted list per row


def test_labels_csv_lists_the_classes(synthetic_dir: Path) -> None:
    text = (synthetic_dir / "class_labels_indices.csv").read_text()
    assert text.splitlines()[1] == f'0,{CLASSES[0].mid},"{CLASSES[0].display_name}"'
    rows = list(csv.DictReader(text.splitlines()))
    assert [(int(r["index"]), r["mid"], r["display_name"]) for r in rows] == [
        (c.index, c.mid, c.display_name) for c in CLASSES]
    assert {c.modality for c in CLASSES} == {"video", "audio"}


def test_every_class_occurs_in_train(synthetic_dir: Path) -> None:
    seen = {mid for *_, labels in _segments(synthetic_dir / "balanced_train_segments.csv")
            for mid in labels.split(",")}
    assert seen == {c.mid for c in CLASSES}


def test_clips_decode_to_the_expected_size_and_duration(synthetic_dir: Path) -> None:
    path = next((synthetic_dir / "clips").glob("*.mp4"))
    reader = decord.VideoReader(str(path), num_threads=1)
    assert len(reader) == 32 and reader[0].shape == (96, 96, 3)
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(2.0)
        assert container.streams.audio[0].codec_context.sample_rate == 16000
    assert len(_audio(path)) >= 32000


def test_classes_are_seen_and_heard(tmp_path: Path) -> None:
    write_clip(tmp_path / "square_tone.mp4", labels=(0, 4), **SMALL)
    write_clip(tmp_path / "nothing.mp4", labels=(), **SMALL)

    def red_pixels(path: Path) -> float:
        rgb = _frames(path).astype(int)
        return float(((rgb[..., 0] > 170) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).mean())

    def energy_near(path: Path, hz: float) -> float:
        spectrum = np.abs(np.fft.rfft(_audio(path)[:16000])) ** 2  # 1 Hz bins
        return float(spectrum[int(hz * 0.9):int(hz * 1.1)].sum() / spectrum.sum())

    assert red_pixels(tmp_path / "square_tone.mp4") > 0.05 > red_pixels(tmp_path / "nothing.mp4")
    assert energy_near(tmp_path / "square_tone.mp4", 250) > 0.5 > energy_near(tmp_path / "nothing.mp4", 250)


def test_textured_clip_has_texture_and_motion(tmp_path: Path) -> None:
    path = tmp_path / "textured.mp4"
    write_clip(path, seconds=1.0, fps=25, width=640, height=360, sample_rate=48000, audio_channels=2,
               labels=(6,), textured=True, seed=3)
    frames = _frames(path).astype(np.float32)
    assert frames.shape == (25, 360, 640, 3)
    assert frames.std(axis=(1, 2)).mean() > 15  # texture within each frame
    assert np.abs(np.diff(frames, axis=0)).mean() > 2  # and it moves
    with av.open(str(path)) as container:
        audio = container.streams.audio[0].codec_context
        assert (audio.sample_rate, audio.channels) == (48000, 2)


@pytest.mark.parametrize("video, audio", [(True, False), (False, True)])
def test_single_stream_clips(tmp_path: Path, video: bool, audio: bool) -> None:
    path = tmp_path / "one.mp4"
    write_clip(path, labels=(1, 6), video=video, audio=audio, **SMALL)
    with av.open(str(path)) as container:
        assert (len(container.streams.video), len(container.streams.audio)) == (int(video), int(audio))


def test_command_line_writes_a_dataset(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "jobs" / "make_synthetic.py"), "--out", str(tmp_path),
                    "--train", "2", "--eval", "1", "--seconds", "0.5", "--width", "64", "--height", "48"],
                   check=True, capture_output=True, cwd=tmp_path)
    rows = _segments(tmp_path / "balanced_train_segments.csv") + _segments(tmp_path / "eval_segments.csv")
    assert len(rows) == 3
    assert decord.VideoReader(str(tmp_path / "clips" / f"{rows[0][0]}.mp4"))[0].shape == (48, 64, 3)


@pytest.mark.parametrize("suffix, container, video_codec, audio_codec", [
    (".mkv", "matroska", "libvpx-vp9", "aac"), (".webm", "matroska", "libvpx-vp9", "libopus"),
    (".m4a", "mov", None, "aac")])
def test_write_clip_picks_the_container_by_suffix(tmp_path: Path, suffix: str, container: str,
                                                   video_codec: str | None, audio_codec: str) -> None:
    path = tmp_path / f"clip{suffix}"
    write_clip(path, labels=(0, 4), video=video_codec is not None, video_codec=video_codec or "h264",
               audio_codec=audio_codec, **{**SMALL, "sample_rate": 48000})
    with av.open(str(path)) as c:
        assert c.format.name.split(",")[0] == container
        assert len(c.streams.video) == (video_codec is not None) and len(c.streams.audio) == 1


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_remux_starts_a_stream_late(tmp_path: Path, suffix: str) -> None:
    webm = suffix == ".webm"  # WebM holds VP9 and Opus only
    src = tmp_path / f"src{'.webm' if webm else '.mp4'}"
    write_clip(src, labels=(0, 4), **{**SMALL, "sample_rate": 48000 if webm else 16000},
               **({"video_codec": "libvpx-vp9", "audio_codec": "libopus"} if webm else {}))
    for kind in ("video", "audio"):
        dst = remux(src, tmp_path / f"{kind}_late{suffix}", **{f"{kind}_delay_s": 0.5})
        with av.open(str(dst)) as c:
            starts = {s.type: float(s.start_time * s.time_base) for s in c.streams}
            # The AAC priming (64 ms at 16 kHz) may go with a late audio track.
            assert starts[kind] - starts["video" if kind == "audio" else "audio"] == pytest.approx(0.5, abs=0.07)
            # Every packet survives, the keyframe (which Matroska stores without a dts) included.
            assert sum(1 for p in c.demux(video=0) if p.size) == 16
        assert len(_frames(dst)) == 16


def test_multitrack_clip_marks_one_track_default(tmp_path: Path) -> None:
    path = write_multitrack_clip(tmp_path / "tracks.mkv", tracks=[(4,), (5,)], default=1, video_labels=(0,), **SMALL)
    with av.open(str(path)) as c:
        default = [bool(s.disposition & av.stream.Disposition.default) for s in c.streams.audio]
        assert default == [False, True] and len(c.streams.video) == 1


def test_sync_clip_flashes_and_beeps_at_the_same_instant(tmp_path: Path) -> None:
    path = write_sync_clip(tmp_path / "sync.mp4", seconds=2.0, sample_rate=16000)
    brightness = _frames(path).mean(axis=(1, 2, 3))
    assert int(np.argmax(brightness)) == round(SYNC_EVENT_S * 25) and brightness.max() > 200 > 3 * np.median(brightness)
    sound = np.abs(_audio(path))
    onset = int(np.argmax(sound > 0.25))
    assert onset / 16000 == pytest.approx(SYNC_EVENT_S, abs=0.002)
    spectrum = np.abs(np.fft.rfft(_audio(path)[onset:onset + 320], 16000))
    assert spectrum.argmax() == pytest.approx(SYNC_BEEP_HZ, rel=0.05)
