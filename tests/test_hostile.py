"""The real preprocessing job over the hostile corpus (tests/hostile.py): every row accounted for
exactly once with the outcome a user needs, complete shards only, true lengths, and a rerun that
changes nothing."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from perceiver.config import load_config
from pipeline.decode import decode_clip
from pipeline.shards import ReadStats, iter_samples
from tests.hostile import CASES, KINDS, Corpus, Expected, FailureOutcome, SampleOutcome, write_hostile_corpus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny.yaml"


def run_preprocess(cluster, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``jobs/preprocess.py args`` as a client of the session's Ray head, never raising."""
    return cluster.run(sys.executable, "jobs/preprocess.py", *args, check=False, timeout=900)


DATA = load_config(ROOT / CONFIG).data
FPS, SAMPLE_RATE, HOP, N_FFT = DATA.video.fps, DATA.audio.sample_rate, DATA.audio.hop_length, DATA.audio.n_fft
LOG_MEL_FLOOR = math.log(1e-6)  # pipeline.features.log_mel of silence
_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.cc:\d+")  # decord's "[hh:mm:ss] file.cc:NNN"
AUDIO_TOLERANCE_S = 0.02  # resampling may move the end by a few samples; a truncation moves it by far more


@dataclass
class Run:
    corpus: Corpus
    out: Path
    args: list[str]
    result: subprocess.CompletedProcess[str]


@dataclass
class Outputs:
    """What the first run left, read before any other test can touch ``out``."""

    index: dict  # column -> list (index.parquet)
    failures: dict  # column -> list (failures.parquet)
    dataset: dict  # dataset.json
    shard_digests: dict[str, str]  # file name -> sha256, for everything in out/shards


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _read_outputs(out: Path) -> Outputs:
    return Outputs(pq.read_table(out / "index.parquet").to_pydict(),
                   pq.read_table(out / "failures.parquet").to_pydict(),
                   json.loads((out / "dataset.json").read_text()), _digests(out / "shards"))


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_hostile_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def run(corpus: Corpus, ray_cluster) -> Run:
    out = corpus.root / "out"
    args = ["--config", CONFIG, "--set", "data.shard_size=8", "--segments", str(corpus.segments_csv),
            "--labels", str(corpus.labels_csv), "--media-dir", str(corpus.clips_dir), "--out", str(out)]
    return Run(corpus, out, args, run_preprocess(ray_cluster, args))


@pytest.fixture(scope="module")
def outputs(run: Run) -> Outputs:
    if run.result.returncode != 0:
        pytest.fail(f"preprocessing exited {run.result.returncode}\n{_tail(run.result)}")
    return _read_outputs(run.out)


def _rows(table: dict) -> list[dict]:
    return [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]


def _actual(outputs: Outputs) -> dict[str, list[tuple[str, dict]]]:
    """CSV source (file:line) -> the records the run made of that row, as ("sample"|"failure", record)."""
    found: dict[str, list[tuple[str, dict]]] = {}
    for what, table in (("sample", outputs.index), ("failure", outputs.failures)):
        for record in _rows(table):
            found.setdefault(record["source"], []).append((what, record))
    return found


def _describe(records: list[tuple[str, dict]]) -> str:
    return "; ".join(f"sample(audio={r['has_audio']}, video={r['has_video']})" if what == "sample"
                     else f"failure({r['stage']}, {r['error']}: {r['message']})"
                     for what, r in records) or "nothing"


def test_the_job_succeeds(run: Run) -> None:
    assert run.result.returncode == 0, _tail(run.result)
    assert "preprocess: " in run.result.stdout and " failed (" in run.result.stdout


def test_every_row_is_accounted_for_exactly_once(run: Run, outputs: Outputs) -> None:
    actual = _actual(outputs)
    sources = {row.source for row in run.corpus.rows}
    assert set(actual) == sources, f"unaccounted: {sources - set(actual)}; unknown: {set(actual) - sources}"
    twice = {source: _describe(records) for source, records in actual.items() if len(records) > 1}
    assert not twice, f"rows recorded more than once: {twice}"
    index_keys = Counter(outputs.index["key"])
    assert max(index_keys.values()) == 1, f"keys twice: {[k for k, n in index_keys.items() if n > 1]}"
    # A key may be in both tables only as the repeat of a kept row.
    both = {f["key"]: f["error"] for f in _rows(outputs.failures) if f["key"] in index_keys}
    assert set(both.values()) <= {"duplicate"}, f"keys both sampled and failed: {both}"
    counts = outputs.dataset["counts"]
    assert (counts["rows"], counts["samples"], counts["failures"]) == (
        len(run.corpus.rows), len(outputs.index["key"]), len(outputs.failures["key"]))


@pytest.mark.parametrize("kind", KINDS)
def test_each_row_has_its_required_outcome(kind: str, run: Run, outputs: Outputs) -> None:
    expected = next(row for row in run.corpus.rows if row.kind == kind)
    records = _actual(outputs).get(expected.source, [])
    assert len(records) == 1, f"{kind}: {len(records)} records: {_describe(records)}"
    what, record = records[0]
    required = expected.outcome
    message = f"{kind} ({expected.why}): required {tuple(required)}, got {_describe(records)}"
    if isinstance(required, SampleOutcome):
        assert what == "sample", message
        assert (record["has_audio"], record["has_video"]) == (required.has_audio, required.has_video), message
        assert (record["key"], record["ytid"]) == (expected.key, expected.ytid), message
    else:
        assert isinstance(required, FailureOutcome)
        assert what == "failure", message
        assert record["stage"] == required.stage, message
        assert record["error"].startswith(required.reason_prefix), message


def _clip_path(corpus: Corpus, expected: Expected) -> Path:
    return next(corpus.clips_dir.glob(f"*{expected.ytid}.*"))


def test_failure_messages_are_one_clean_line_naming_the_file(run: Run, outputs: Outputs) -> None:
    by_source = run.corpus.by_source()
    bad = []
    for record in _rows(outputs.failures):
        text, expected = record["message"], by_source[record["source"]]
        # For people reading failures.parquet: one line, the file named where a file was opened,
        # and none of the decoder's log prefixes.
        if (not text or "\n" in text or _LOG_PREFIX.search(text)
                or (record["stage"] == "decode" and _clip_path(run.corpus, expected).name not in text)):
            bad.append(f"{expected.kind}: {text!r}")
    assert not bad, "\n".join(bad)


def test_every_good_clip_is_kept(run: Run, outputs: Outputs) -> None:
    wanted = {row.key for row in run.corpus.rows if isinstance(row.outcome, SampleOutcome)}
    assert wanted <= set(outputs.index["key"]), f"lost: {sorted(wanted - set(outputs.index['key']))}"


def test_malformed_rows_name_their_file_and_line(run: Run, outputs: Outputs) -> None:
    malformed = [row for row in run.corpus.rows if row.outcome == ("failure", "source", "malformed_row")]
    recorded = {f["source"] for f in _rows(outputs.failures) if f["error"] == "malformed_row"}
    assert malformed and recorded == {f"{run.corpus.segments_csv.name}:{row.line}" for row in malformed}


def test_samples_record_the_media_they_really_hold(run: Run, outputs: Outputs) -> None:
    by_source = run.corpus.by_source()
    wrong = []
    for record in _rows(outputs.index):
        expected: Expected = by_source[record["source"]]
        assert expected.media is not None
        audio_s, frames = record["audio_samples"] / SAMPLE_RATE, record["video_frames"]
        media = expected.media
        if abs(audio_s - media.audio) > AUDIO_TOLERANCE_S or abs(frames - media.video * FPS) > 1:
            wrong.append(f"{expected.kind}: recorded {audio_s:.3f} s of audio and {frames} frames; the sound "
                         f"ends at {media.audio:.3f} s and the picture fills {media.video * FPS:.0f}")
    assert not wrong, "\n".join(wrong)
    # The case the pitfall is about: decord returns a cut file's sound short without complaint.
    cut = next(row for row in run.corpus.rows if row.kind == "cut_faststart_audio")
    assert cut.media is not None and cut.media.audio < 0.8 * DATA.segment_seconds


# An AAC track written to start late keeps its encoder priming (1,024 samples) in front of its first
# sound: FFmpeg trims priming only where the file says so (an mp4 edit list, Matroska's CodecDelay).
PRIMING_S = 1024 / SAMPLE_RATE


def test_late_streams_are_absent_before_they_start(run: Run, outputs: Outputs) -> None:
    """Each stream on the file's clock: the first real frame and sample are where the stream starts,
    not moved to the segment's start (a late picture or sound comes out late, in sync)."""
    by_source = run.corpus.by_source()
    wrong, late = [], set()
    for sample in _stored_samples(run, outputs):
        meta, expected = sample.meta, by_source[sample.meta["source"]]
        media = expected.media
        assert media is not None
        audio_from, video_from = meta.get("audio_first", 0) / SAMPLE_RATE, meta.get("video_first", 0) / FPS
        audio_ok = not meta["has_audio"] or media.audio_from - PRIMING_S - 0.005 <= audio_from <= media.audio_from + 0.005
        video_ok = not meta["has_video"] or abs(video_from - media.video_from) <= 1 / FPS
        if not (audio_ok and video_ok):
            wrong.append(f"{expected.kind}: real sound from {audio_from:.3f} s (expected {media.audio_from:.3f}), "
                         f"picture from {video_from:.3f} s (expected {media.video_from:.3f})")
        if media.audio_from or media.video_from:
            late.add(expected.kind)
    assert not wrong, "\n".join(wrong)
    assert {"late_audio", "late_video"} <= late


def _check_sample(sample: dict, index_row: dict) -> list[str]:
    """Stored arrays against the recorded true lengths and padding flags; problems found."""
    meta, audio, video = sample.meta, sample.content["audio"], sample.content["video"]
    problems = []
    if {k: meta[k] for k in ("has_audio", "has_video", "audio_samples", "video_frames")} != {
            k: index_row[k] for k in ("has_audio", "has_video", "audio_samples", "video_frames")}:
        problems.append("metadata disagrees with index.parquet")
    logmel = audio.ndim == 2
    stored_samples = audio.shape[0] * HOP if logmel else audio.shape[0]
    real_audio, real_frames = meta["audio_samples"], meta["video_frames"]
    # Real content is [first, end): a stream that starts late is absent (zeros) before it starts.
    first_audio, first_frame = meta.get("audio_first", 0), meta.get("video_first", 0)
    if not (0 <= first_audio <= real_audio and 0 <= first_frame <= real_frames):
        problems.append(f"real ranges audio [{first_audio}, {real_audio}), video [{first_frame}, {real_frames})")
    if not (meta["audio"]["samples"] == stored_samples >= real_audio):
        problems.append(f"stored audio {stored_samples} (meta {meta['audio']['samples']}), true {real_audio}")
    if not (meta["video"]["frames"] == video.shape[0] >= real_frames):
        problems.append(f"stored video {video.shape[0]} (meta {meta['video']['frames']}), true {real_frames}")
    padded = (first_audio > 0 or real_audio < stored_samples, first_frame > 0 or real_frames < video.shape[0])
    if (meta["audio_padded"], meta["video_padded"]) != padded:
        problems.append("padding flags disagree with the lengths")
    # Padding must be padding, and what is recorded as real must not be.
    if (video[:first_frame].any() or video[real_frames:].any()
            or not all(frame.any() for frame in video[first_frame:real_frames])):
        problems.append("video frames outside the true range are not zero, or real frames are blank")
    first_silent = -(-real_audio // HOP) if logmel else real_audio
    # A log-mel frame holds n_fft samples from its start: those wholly before the sound are silent.
    last_silent = max(0, (first_audio - N_FFT) // HOP + 1) if logmel else first_audio
    silence = LOG_MEL_FLOOR if logmel else 0
    if not np.allclose(audio[first_silent:].astype(np.float32), silence, atol=0.01):
        problems.append("audio past the true length is not silence")
    if not np.allclose(audio[:last_silent].astype(np.float32), silence, atol=0.01):
        problems.append("audio before the sound starts is not silence")
    real_part = audio[-(-first_audio // HOP) if logmel else first_audio:
                      real_audio // HOP if logmel else real_audio].astype(np.float32)
    if real_audio and float(real_part.mean()) < silence + 1:
        problems.append("audio within the true length is silence")
    return problems


def test_shards_are_complete_and_their_arrays_match_the_lengths(run: Run, outputs: Outputs) -> None:
    shards_dir = run.out / "shards"
    leftovers = [p.name for p in shards_dir.iterdir() if not p.name.endswith(".tar")]
    assert not leftovers, f"non-shard files left in shards/: {leftovers}"
    listed = {Path(p).name for p in outputs.dataset["shards"]}
    assert listed == {p.name for p in shards_dir.glob("*.tar")}
    for path in shards_dir.glob("*.tar"):
        data = path.read_bytes()
        # tarfile writes two zero blocks at the end: a shard cut short lacks them.
        assert len(data) % 512 == 0 and data[-1024:] == bytes(1024), f"{path.name} is not a complete tar"
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                content = tar.extractfile(member).read()
                assert len(content) == member.size, f"{path.name}:{member.name} is cut short"
    index = {row["key"]: row for row in _rows(outputs.index)}
    stats = ReadStats()
    seen, problems = [], []
    for sample in _stored_samples(run, outputs, stats):
        key = sample.key
        seen.append(key)
        row = index.get(key)
        if row is None or Path(sample.shard).name != row["shard"]:
            problems.append(f"{key}: in {sample.shard}, index says {row and row['shard']}")
            continue
        problems += [f"{key}: {p}" for p in _check_sample(sample, row)]
    assert not (stats.bad_shards or stats.incomplete_samples or stats.refused_members), stats
    assert sorted(seen) == sorted(index), "the shards do not hold exactly the indexed samples"
    assert not problems, "\n".join(problems)


def _stored_samples(run: Run, outputs: Outputs, stats: ReadStats | None = None) -> list[dict]:
    return list(iter_samples([str(run.out / p) for p in outputs.dataset["shards"]], stats=stats))


SYNC_MARGIN_S = 0.1  # codec priming and frame overlap blur an edge by less than this


def test_sound_stays_in_sync_with_the_picture(run: Run, outputs: Outputs) -> None:
    """Sound is stored on the picture's clock: a track that starts late keeps its silence in front."""
    assert DATA.audio.representation == "logmel"  # the levels below read log-mel frames

    def frame(seconds: float) -> int:
        return max(0, int(seconds * SAMPLE_RATE / HOP))

    by_source = run.corpus.by_source()
    wrong = []
    for sample in _stored_samples(run, outputs):
        expected = by_source[sample.meta["source"]]
        if not sample.meta["has_audio"] or expected.media is None:
            continue
        levels = sample.content["audio"].astype(np.float32).mean(axis=1)  # mean log-mel of each frame
        media = expected.media
        before = levels[:frame(media.audio_from - SYNC_MARGIN_S)]
        during = levels[frame(media.audio_from + SYNC_MARGIN_S):frame(media.audio - SYNC_MARGIN_S)]
        if (before.size and before.max() > LOG_MEL_FLOOR + 2) or (
                during.size and during.min() < LOG_MEL_FLOOR + 3):
            wrong.append(f"{expected.kind}: sound expected {media.audio_from:.2f}-{media.audio:.2f} s; "
                         f"loud frames (s): {_spans(levels > LOG_MEL_FLOOR + 2, HOP / SAMPLE_RATE)}")
    assert not wrong, "\n".join(wrong)


def _spans(mask: np.ndarray, step: float) -> str:
    """``[(start, end), ...]`` in seconds of the True runs of ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = zip(edges[::2], edges[1::2], strict=True)
    return str([(round(float(a * step), 2), round(float(b * step), 2)) for a, b in runs])


def test_a_rerun_finds_everything_done_and_changes_nothing(run: Run, outputs: Outputs, ray_cluster) -> None:
    again = run_preprocess(ray_cluster, run.args)
    assert again.returncode == 0, _tail(again)
    assert re.search(r"\b(\d+) shards planned, \1 already complete, 0 to do", again.stdout), _tail(again)
    rerun = _read_outputs(run.out)
    assert rerun.index == outputs.index
    assert rerun.failures == outputs.failures
    assert rerun.shard_digests == outputs.shard_digests


def _default_audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """The audio stream a player plays: the first marked default, else the first."""
    streams = container.streams.audio
    return next((s for s in streams if s.disposition & av.stream.Disposition.default), streams[0])


def _channel_mean(path: Path) -> tuple[np.ndarray, int]:
    """The default audio stream decoded by PyAV as the mean of its full-range channels (LFE is left
    out, as downmixes do), up to the first undecodable packet; and its sample rate."""
    chunks = []
    with av.open(str(path)) as container:
        stream = _default_audio(container)
        keep = [i for i, channel in enumerate(stream.layout.channels) if channel.name != "LFE"]
        resampler = av.AudioResampler(format="fltp")  # planar float, whatever the decoder gives
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray()[keep].mean(axis=0) for f in resampler.resample(frame)]
        except av.error.FFmpegError:
            pass  # a cut file: what came before the cut is the reference
        return np.concatenate(chunks), stream.sample_rate


_WITH_AUDIO = [c.kind for c in CASES if isinstance(c.outcome, SampleOutcome) and c.outcome.has_audio]


@pytest.mark.parametrize("kind", _WITH_AUDIO)
def test_audio_is_downmixed_to_the_level_of_its_channels(kind: str, corpus: Corpus) -> None:
    """Mono must sound as loud as the channels it comes from, whatever the layout: the same sound
    uploaded in 5.1 must not be 10 dB louder (and clip) where its stereo upload is not."""
    expected = next(row for row in corpus.rows if row.kind == kind)
    path = _clip_path(corpus, expected)
    reference, rate = _channel_mean(path)
    clip = decode_clip(path, start=None, seconds=DATA.segment_seconds, fps=FPS, size=DATA.video.size,
                       sample_rate=rate)
    assert expected.media is not None
    lead = round(expected.media.audio_from * rate)  # the timeline's silence before a late track
    n = min(len(reference), clip.audio_samples - lead)
    ratio = float(np.sqrt(np.mean(clip.audio[lead:lead + n] ** 2) / np.mean(reference[:n] ** 2)))
    assert 0.8 < ratio < 1.25, f"{kind}: mono is {20 * math.log10(ratio):+.1f} dB from the channel mean"


def test_the_default_audio_track_is_the_sound(corpus: Corpus) -> None:
    """Of several audio tracks the decoder takes the one marked default, as players do, not the first."""
    expected = next(row for row in corpus.rows if row.kind == "mkv_audio_tracks")
    path = _clip_path(corpus, expected)
    with av.open(str(path)) as container:
        tracks = [s.index for s in container.streams.audio]
        assert len(tracks) == 3 and _default_audio(container).index == tracks[1]
    clip = decode_clip(path, start=None, seconds=DATA.segment_seconds, fps=None, size=DATA.video.size,
                       sample_rate=SAMPLE_RATE)
    sound = clip.audio[:clip.audio_samples]

    def likeness(track: int) -> float:
        with av.open(str(path)) as container:
            stream = container.streams[track]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            reference = np.concatenate([f.to_ndarray().ravel() for frame in container.decode(stream)
                                        for f in resampler.resample(frame)])
        n = min(len(reference), len(sound))
        return float(np.corrcoef(reference[:n], sound[:n])[0, 1])

    assert likeness(tracks[1]) > 0.99 and max(likeness(tracks[0]), likeness(tracks[2])) < 0.5
