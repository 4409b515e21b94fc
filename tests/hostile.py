"""A hostile-input corpus for the preprocessing job: one clip per way real downloads go wrong.

``write_hostile_corpus(root)`` writes ``root/clips/`` (media made with the project's own
``pipeline.synthetic.write_clip`` plus byte-level surgery), an AudioSet-format
``root/segments.csv`` and ``root/class_labels_indices.csv``, and returns the REQUIRED
outcome of every CSV data row. The outcomes say what a user needs, not what the code
happens to do today:

* a row becomes a sample only when every stream the file holds is decoded truthfully
  (never a silent audio-only sample because a video stream could not be decoded), with the
  real lengths recorded (a truncated file records the sound it really holds, not what its
  header claims), both streams on the file's clock (a track that starts late, sound or
  picture, is absent before it starts, never shifted to the start), from the audio track
  marked default when there are several, and as loud as its channels whatever their layout;
* anything else is one failure row naming the stage and a specific reason.

Rows are told apart by their CSV line (``source`` reads ``segments.csv:<line>``): a
duplicate row shares its ytid and start, hence its key, with the row it repeats.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
import numpy as np

from pipeline.keys import make_key
from pipeline.synthetic import CLASSES, remux, write_clip, write_multitrack_clip

SEGMENT_SECONDS = 2.0  # the tiny recipe's segment; one model window is 1 s
SEGMENTS_NAME = "segments.csv"
# The small synthetic format; kinds override what they are about.
_BASE = dict(seconds=SEGMENT_SECONDS, fps=16.0, width=96, height=96, sample_rate=16000)


class SampleOutcome(NamedTuple):
    outcome: Literal["sample"]
    has_audio: bool
    has_video: bool


class FailureOutcome(NamedTuple):
    outcome: Literal["failure"]
    stage: str
    reason_prefix: str  # the failure's ``error`` must start with this ("unsupported_codec" for ":av1")


Outcome = SampleOutcome | FailureOutcome


def sample(has_audio: bool = True, has_video: bool = True) -> SampleOutcome:
    return SampleOutcome("sample", has_audio, has_video)


def failure(stage: str, reason_prefix: str) -> FailureOutcome:
    return FailureOutcome("failure", stage, reason_prefix)


class Media(NamedTuple):
    """Where a file's sound and picture end, in seconds from its start (0 for a stream it lacks)."""

    audio: float
    video: float
    audio_from: float = 0.0  # where the sound starts: before it the sound is absent (zeros)
    video_from: float = 0.0  # where the picture starts: before it the picture is absent (zeros)


@dataclass(frozen=True)
class Expected:
    """One data row of ``segments.csv`` and what the pipeline must make of it."""

    kind: str
    ytid: str  # as written on the line (a malformed line may not parse to it)
    start: float
    line: int  # physical line in segments.csv
    outcome: Outcome
    why: str
    # For rows that must become samples: the real media inside the segment, which the sample
    # must record as its true lengths.
    media: Media | None = None

    @property
    def source(self) -> str:
        return f"{SEGMENTS_NAME}:{self.line}"

    @property
    def key(self) -> str:
        return make_key(self.ytid, self.start)


@dataclass
class Corpus:
    root: Path
    clips_dir: Path
    segments_csv: Path
    labels_csv: Path
    rows: list[Expected] = field(default_factory=list)

    def by_source(self) -> dict[str, Expected]:
        return {row.source: row for row in self.rows}


# ---------------------------------------------------------------------------- byte surgery


def _top_level_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level MP4 box type -> (offset, size); enough of ISO BMFF to find moov and mdat."""
    boxes: dict[str, tuple[int, int]] = {}
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:  # a 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        boxes.setdefault(kind.decode("latin-1"), (offset, size))
        offset += size
    return boxes


def _remux(src: Path, dst: Path, *, faststart: bool = False, rotation: int = 0) -> None:
    """Copy ``src``'s packets into ``dst``: the same coded media, another container or layout."""
    remux(src, dst, faststart=faststart, rotation=rotation)


def _decoded(src: Path) -> tuple[list[np.ndarray], float, np.ndarray, int, str]:
    """All RGB frames, their rate, and the audio (channels, samples) of ``src`` cut to its real duration."""
    with av.open(str(src)) as container:
        fps = float(container.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(src)) as container:
        stream = container.streams.audio[0]
        rate, layout = stream.sample_rate, stream.layout.name
        # The decoder's output runs on to a whole AAC frame; the stream duration says where sound ends.
        real = round(float(stream.duration * stream.time_base) * rate)
        audio = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)[:, :real]
    return frames, fps, audio, rate, layout


def _reencode(src: Path, dst: Path, *, frame_times: Sequence[float] | None = None,
              channel_gains: Sequence[float] | None = None, audio_delay: float = 0.0) -> None:
    """Re-encode ``src`` as H.264/AAC with frames at ``frame_times`` (seconds; the source frame
    showing at each time), its audio spread over 6 channels (5.1) with ``channel_gains``, and/or
    its audio starting ``audio_delay`` seconds after the picture (cut to end where it ended).

    For what ``write_clip`` cannot write: irregular timestamps, layouts beyond stereo, offset streams.
    """
    frames, source_fps, audio, rate, layout = _decoded(src)
    delay = round(audio_delay * rate)
    audio = audio[:, :audio.shape[1] - delay]
    times = np.arange(len(frames)) / source_fps if frame_times is None else np.asarray(frame_times)
    if channel_gains is not None:
        mono = audio.mean(axis=0, keepdims=True)
        audio, layout = np.concatenate([g * mono for g in channel_gains]).astype(np.float32), "5.1"
    height, width = frames[0].shape[:2]
    with av.open(str(dst), "w", format="mp4") as out:
        # Millisecond timestamps: the stream has no single frame rate to count in.
        vstream = out.add_stream("h264", rate=round(source_fps), options={"mbtree": "0"})
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.codec_context.time_base = vstream.time_base = Fraction(1, 1000)
        astream = out.add_stream("aac", rate=rate, layout=layout)
        for t in times:
            showing = frames[min(int(t * source_fps), len(frames) - 1)]
            frame = av.VideoFrame.from_ndarray(showing, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(vstream.encode(frame))
        out.mux(vstream.encode(None))
        sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
        sound.sample_rate, sound.pts = rate, delay
        out.mux(astream.encode(sound))
        out.mux(astream.encode(None))


def _decodable(path: Path) -> Media:
    """What FFmpeg (through PyAV) can decode from a damaged file before the damage: the oracle
    for the real length of a truncated clip."""
    seconds = []
    for kind in ("audio", "video"):
        total = 0.0
        with av.open(str(path)) as container:
            streams = getattr(container.streams, kind)
            if streams:
                try:
                    for frame in container.decode(streams[0]):
                        total += frame.samples / frame.sample_rate if kind == "audio" else 1 / float(
                            streams[0].average_rate)
                except av.error.FFmpegError:
                    pass  # the cut: everything before it counts
        seconds.append(total)
    return Media(*seconds)


# ---------------------------------------------------------------------------- kinds
#
# A maker writes one file for a row with ``labels`` and returns the media it holds, or None
# when it is not valid media at all.

Maker = Callable[[Path, tuple[int, ...]], Media | None]


def _clip(**overrides: object) -> Maker:
    """A plain ``write_clip`` file with some format fields changed."""
    def make(path: Path, labels: tuple[int, ...]) -> Media:
        spec = {**_BASE, **overrides}
        write_clip(path, labels=labels, **spec)
        seconds = float(spec["seconds"])
        return Media(seconds if spec.get("audio", True) else 0.0, seconds if spec.get("video", True) else 0.0)
    return make


def _bytes(data: bytes) -> Maker:
    def make(path: Path, labels: tuple[int, ...]) -> None:
        path.write_bytes(data)
    return make


def _via_temp(build: Callable[[Path, Path], Media | None], **overrides: object) -> Maker:
    """Write a ``write_clip`` source to a scratch file, then let ``build(src, dst)`` derive the row's
    file; ``build`` returns the media it leaves when that differs from the source's."""
    def make(path: Path, labels: tuple[int, ...]) -> Media | None:
        with tempfile.TemporaryDirectory() as scratch:
            src = Path(scratch) / "src.mp4"
            media = _clip(**overrides)(src, labels)
            return build(src, path) or media
    return make


def _cut_before_moov(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    boxes = _top_level_boxes(data)
    assert boxes["mdat"][0] < boxes["moov"][0], "write_clip is expected to put the index last"
    dst.write_bytes(data[:boxes["moov"][0]])


def _faststart_cut(fraction: float, *, zero_fill: bool = False) -> Callable[[Path, Path], Media]:
    """Index in front, then only ``fraction`` of the media data: a download that stopped early.

    ``zero_fill`` keeps the full size with zeros after the cut, as downloaders that preallocate
    their file leave it.
    """
    def build(src: Path, dst: Path) -> Media:
        fast = src.with_name("faststart.mp4")  # beside the scratch source, never in the clips folder
        _remux(src, fast, faststart=True)
        data = fast.read_bytes()
        boxes = _top_level_boxes(data)
        assert boxes["moov"][0] < boxes["mdat"][0], "faststart should put the index first"
        mdat, size = boxes["mdat"]
        cut = mdat + int(size * fraction)
        dst.write_bytes(data[:cut] + (bytes(len(data) - cut) if zero_fill else b""))
        return _decodable(dst)
    return build


def _rotated(src: Path, dst: Path) -> None:
    _remux(src, dst, rotation=90)


def _same_packets(src: Path, dst: Path) -> None:
    _remux(src, dst)


def _variable_frame_rate(src: Path, dst: Path) -> None:
    # Gaps of 30-170 ms in a repeating pattern, like a phone dropping frames under load.
    gaps = np.resize([0.03, 0.17, 0.06, 0.12, 0.05], 64)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    _reencode(src, dst, frame_times=times[times < SEGMENT_SECONDS])


def _surround(src: Path, dst: Path) -> None:
    _reencode(src, dst, channel_gains=(0.6, 0.6, 0.8, 0.2, 0.4, 0.4))  # FL FR FC LFE BL BR


_AUDIO_DELAY_S = 0.5


def _late_audio(src: Path, dst: Path) -> Media:
    # What `ffmpeg -ss ... -c copy` trimming leaves: the picture from a keyframe before the cut,
    # the sound from the cut itself.
    _reencode(src, dst, audio_delay=_AUDIO_DELAY_S)
    return Media(SEGMENT_SECONDS, SEGMENT_SECONDS, audio_from=_AUDIO_DELAY_S)


_VIDEO_DELAY_S = 0.5


def _late_video(src: Path, dst: Path) -> Media:
    # A remuxed download whose picture starts after its sound (an edited upload, a cut on a
    # keyframe): the empty edit in front of the video track must stay empty.
    remux(src, dst, video_delay_s=_VIDEO_DELAY_S)
    return Media(SEGMENT_SECONDS, SEGMENT_SECONDS + _VIDEO_DELAY_S, video_from=_VIDEO_DELAY_S)


def _audio_tracks(path: Path, labels: tuple[int, ...]) -> Media:
    """yt-dlp's merge of several audio languages: the second of three tracks is the default one and
    carries the row's sound; the others sound another class."""
    visual = [i for i in labels if CLASSES[i].modality == "video"]
    audible = [i for i in labels if CLASSES[i].modality == "audio"]
    other = next(c.index for c in CLASSES if c.modality == "audio" and c.index not in audible)
    spec = {k: v for k, v in _BASE.items() if k != "seconds"}
    write_multitrack_clip(path, tracks=[(other,), tuple(audible), (other,)], default=1,
                          seconds=SEGMENT_SECONDS, video_labels=visual, **spec)
    return Media(SEGMENT_SECONDS, SEGMENT_SECONDS)


@dataclass(frozen=True)
class _Case:
    kind: str
    outcome: Outcome
    why: str
    make: Maker | None = None  # None: no file (or the row never gets as far as looking for one)
    file_name: str = "{ytid}.mp4"
    # The CSV line for (ytid, start, quoted MIDs); None: the standard AudioSet line.
    line: Callable[[str, float, str], str] | None = None
    duplicate_of: str | None = None  # kind of an earlier row whose ytid and start this row repeats


def _segment_line(ytid: str, start: float, mids: str) -> str:
    return f'{ytid}, {start:.3f}, {start + SEGMENT_SECONDS:.3f}, "{mids}"'


_GOOD = "a user wants every clip with usable sound and picture"

CASES: tuple[_Case, ...] = (
    _Case("good", sample(), "baseline: the synthetic writer's own format", _clip()),
    _Case("zero_bytes", failure("decode", "empty"), "nothing to decode", _bytes(b"")),
    _Case("text_as_mp4", failure("decode", "unreadable"), "an HTML error page saved under the clip's name",
          _bytes(b"<html><body>Video unavailable</body></html>\n" * 20)),
    _Case("random_bytes", failure("decode", "unreadable"), "no container at all",
          _bytes(np.random.default_rng(7).bytes(50_000))),
    _Case("no_moov", failure("decode", "unreadable"),
          "a download cut before its index (moov at the end): nothing can say where frames are",
          _via_temp(_cut_before_moov)),
    _Case("half_faststart", failure("decode", "decode_failed"),
          "index in front, half the data: its video stream cannot be decoded, so it must not become an "
          "audio-only sample (and half of 2 s is under one window anyway)",
          _via_temp(_faststart_cut(0.5))),
    _Case("zero_tail", failure("decode", "decode_failed"),
          "a preallocated download that stopped at 60 %: full size, zeros after the cut",
          _via_temp(_faststart_cut(0.6, zero_fill=True))),
    _Case("cut_faststart_audio", sample(True, False),
          "an audio-only download cut at 70 %: keep the sound it holds and record its real, shorter "
          "length (decord decodes it short without complaint)",
          _via_temp(_faststart_cut(0.7), video=False)),
    _Case("no_audio", sample(False, True), _GOOD + "; the missing stream is flagged", _clip(audio=False)),
    _Case("no_video", sample(True, False), _GOOD + "; the missing stream is flagged", _clip(video=False)),
    _Case("short_0s2", failure("decode", "too_short"), "0.2 s holds no 1 s model window", _clip(seconds=0.2)),
    _Case("long_3s", sample(), "a file longer than its segment: keep the first 2 s", _clip(seconds=3.0)),
    _Case("stereo_44k", sample(), _GOOD, _clip(sample_rate=44100, audio_channels=2)),
    _Case("surround_48k", sample(), _GOOD + " (5.1 is downmixed)",
          _via_temp(_surround, sample_rate=48000, audio_channels=2)),
    _Case("late_audio", sample(), _GOOD + "; the sound must stay in sync with the picture (silence first)",
          _via_temp(_late_audio)),
    _Case("late_video", sample(), _GOOD + "; the picture must stay in sync with the sound (absent first, "
          "not shifted to the start)", _via_temp(_late_video)),
    _Case("mkv_audio_tracks", sample(), _GOOD + "; of several audio tracks the one marked default is the sound",
          _audio_tracks, file_name="{ytid}.mkv"),
    _Case("m4a_audio_only", sample(True, False), "an audio-only download (YouTube's m4a): the sound is the sample",
          _clip(video=False), file_name="{ytid}.m4a"),
    _Case("audio_8k", sample(), _GOOD + " (8 kHz is upsampled)", _clip(sample_rate=8000)),
    _Case("tiny_18x10", sample(), _GOOD + " (upscaled and cropped)", _clip(width=18, height=10)),
    _Case("hd_1280x720", sample(), _GOOD + " (downscaled and cropped)",
          _clip(width=1280, height=720, fps=8.0)),
    _Case("vfr", sample(), _GOOD + " (frames are picked by timestamp)", _via_temp(_variable_frame_rate)),
    _Case("rotated_90", sample(), _GOOD + " (landscape with a 90-degree display matrix: turned upright)",
          _via_temp(_rotated, width=160, height=96)),
    _Case("webm_vp9_opus", sample(), _GOOD + " (YouTube's own format)",
          _via_temp(_same_packets, video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000),
          file_name="{ytid}.webm"),
    _Case("mkv_vp9_aac", sample(), _GOOD + " (what yt-dlp merges VP9 video and AAC audio into)",
          _via_temp(_same_packets, video_codec="libvpx-vp9"), file_name="{ytid}.mkv"),
    _Case("av1", failure("decode", "unsupported_codec"),
          "decord cannot decode AV1: an audio-only sample would silently drop the picture",
          _clip(video_codec="libsvtav1")),
    _Case("panns_name", sample(), "PANNs-style Y-prefixed file name", _clip(), file_name="Y{ytid}.mp4"),
    _Case("missing_file", failure("source", "missing_file"), "no media for the row"),
    _Case("duplicate", failure("source", "duplicate"), "the same segment twice: the first one is kept",
          duplicate_of="good"),
    _Case("unknown_label", failure("source", "unknown_label"), "dropping the label would change the task",
          _clip(), line=lambda ytid, start, mids: _segment_line(ytid, start, mids + ",/m/not_a_class")),
    _Case("no_labels", failure("source", "no_labels"), "nothing to learn from", _clip(),
          line=lambda ytid, start, mids: _segment_line(ytid, start, "")),
    _Case("malformed_fields", failure("source", "malformed_row"), "label list left unquoted: 5 fields",
          _clip(),
          line=lambda ytid, start, mids: _segment_line(ytid, start, mids).replace('"', "")),
    _Case("malformed_quote", failure("source", "malformed_row"),
          "an unclosed quote must not swallow the rows after it", _clip(),
          line=lambda ytid, start, mids: _segment_line(ytid, start, mids)[:-1]),
    _Case("malformed_times", failure("source", "malformed_row"), "ends before it starts", _clip(),
          line=lambda ytid, start, mids: f'{ytid}, {start:.3f}, {start - 1:.3f}, "{mids}"'),
)
KINDS: tuple[str, ...] = tuple(case.kind for case in CASES)


def _ytid(number: int, kind: str) -> str:
    # AudioSet IDs begin with '-' and hold '_' often enough to break naive tools: all of these do.
    return f"-{number:02d}_{kind}"


def _default_labels(number: int) -> tuple[int, ...]:
    visual = [c.index for c in CLASSES if c.modality == "video"]
    audible = [c.index for c in CLASSES if c.modality == "audio"]
    return visual[number % len(visual)], audible[number % len(audible)]


def write_labels_csv(path: Path) -> None:
    """``class_labels_indices.csv`` of the synthetic classes, in AudioSet's format."""
    rows = "".join(f'{c.index},{c.mid},"{c.display_name}"\n' for c in CLASSES)
    path.write_text("index,mid,display_name\n" + rows)


def write_hostile_corpus(root: Path) -> Corpus:
    """Write every kind of ``CASES`` under ``root`` and return the required outcome of each CSV row."""
    root = Path(root)
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root, clips, root / SEGMENTS_NAME, root / "class_labels_indices.csv")
    write_labels_csv(corpus.labels_csv)
    # AudioSet's three comment lines; the counts go in the second once known.
    header = ["# Segments csv created by tests.hostile", "",
              "# YTID, start_seconds, end_seconds, positive_labels"]
    lines: list[str] = []
    by_kind: dict[str, Expected] = {}
    positives = 0
    for number, case in enumerate(CASES):
        ytid, start = _ytid(number, case.kind), 10.0 * number
        if case.duplicate_of is not None:
            ytid, start = by_kind[case.duplicate_of].ytid, by_kind[case.duplicate_of].start
        labels = _default_labels(number)
        media = case.make(clips / case.file_name.format(ytid=ytid), labels) if case.make else None
        if isinstance(case.outcome, SampleOutcome):
            assert media is not None, f"{case.kind}: a row that must become a sample needs media"
            media = media._replace(audio=min(media.audio, SEGMENT_SECONDS),
                                   video=min(media.video, SEGMENT_SECONDS))
        else:
            media = None
        mids = ",".join(CLASSES[i].mid for i in labels)
        positives += len(labels)
        lines.append((case.line or _segment_line)(ytid, start, mids))
        row = Expected(case.kind, ytid, start, line=len(header) + len(lines), outcome=case.outcome,
                       why=case.why, media=media)
        by_kind[case.kind] = row
        corpus.rows.append(row)
    header[1] = (f"# num_ytids={len({r.ytid for r in corpus.rows})}, num_segs={len(lines)}, "
                 f"num_unique_labels={len(CLASSES)}, num_positive_labels={positives}")
    corpus.segments_csv.write_text("\n".join(header + lines) + "\n")
    return corpus


if __name__ == "__main__":  # write a corpus to look at: python -m tests.hostile NEW_DIR
    import sys

    for expected in write_hostile_corpus(Path(sys.argv[1])).rows:
        print(f"{expected.source:16} {expected.kind:20} {expected.ytid:24} {tuple(expected.outcome)}")
