"""Decode one clip into fixed-rate square video frames and mono audio at a fixed rate.

PyAV probes which streams a file holds and decodes the audio; decord decodes the video
(scaled while decoding, frames fetched in one batch). Probing first matters: decord reports
a stream it cannot decode (AV1) exactly like a missing one, and a clip must never turn
silently audio-only because of that.

Both streams are placed on the container's presentation clock, as a player shows them: time 0
is the container's start (its earliest stream), each stream starts where its own timestamps
say, and what lies before a stream's first frame or sample, or past its end, is absent (zeros,
outside the ``[first, end)`` range a ``DecodedClip`` records), never shifted or counted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np

# The version of what this module makes of a file, recorded with every dataset it decodes.
# 2: both streams on the container's presentation clock: each stream placed by its own timestamps,
#    read from a freshly opened container (version 1 measured the audio's start after the first
#    video frame had been decoded from the same container, so early audio packets were skipped, and
#    numbered video frames from the video stream's own first frame while the audio sat on the
#    file's clock: a clip whose video starts late came out about 2x its offset out of sync); a
#    stream that starts late is absent before its first sample (``DecodedClip.video_first`` /
#    ``audio_first``), not shifted to 0; audio decoded by PyAV, streamed from the segment's start
#    (seeking in full videos), from the track marked default when there are several; frames
#    counted with a 1 ms tolerance (version 1 counted the last frame of a 1.24 s clip at 25 fps twice).
# 1: the decoder before it (decord for both streams, audio from the first audio track).
DECODER_VERSION = 2

# Float slack when comparing instants with decord's (float32) frame times: well under a frame,
# above float32's resolution for a few hours of video.
_TOLERANCE_S = 1e-3
# Audio decoded before a seeked-to window starts, then dropped: AAC and Opus need a frame or two
# after a seek before their output is right, the resampler a few milliseconds of history.
_PREROLL_S = 0.2
# Audio frames whose timestamps stray less than this from where the previous frame ended follow on
# from it (Matroska rounds timestamps to 1 ms); larger jumps are gaps or overlaps in the file.
_JITTER_S = 0.005


class DecodeError(Exception):
    """A clip that cannot be decoded.

    ``reason`` is a short machine-readable code: ``"empty"`` (a zero-byte file, or
    nothing decodable in the requested window), ``"unreadable"`` (no container PyAV
    can open), ``"no_streams"``, ``"unsupported_codec:<codec>"`` or ``"decode_failed"``.
    ``str(err)`` is one line naming the file.
    """

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail} [{reason}]")
        self.path, self.reason, self.detail = str(path), reason, detail

    def __reduce__(self):  # keeps the fields when Ray or multiprocessing pickle the error
        return type(self), (self.path, self.reason, self.detail)


@dataclass(frozen=True)
class StreamInfo:
    """What PyAV sees in a file: its video stream and its audio stream (the ones marked default
    when there are several of a kind, else the first), with their starts on the container's clock."""

    has_video: bool
    has_audio: bool
    video_codec: str | None  # codec family ("h264", "av1"), not the decoder's name
    audio_codec: str | None
    width: int | None  # coded size, before rotation
    height: int | None
    fps: float | None
    duration: float | None  # seconds, the longest stream
    audio_rate: int | None
    audio_channels: int | None
    rotation: int  # counter-clockwise degrees (0, 90, 180, 270) to turn the coded frames for display
    audio_duration: float | None  # seconds of real sound, without the codec's padding
    audio_layout: str | None = None
    audio_start: float = 0.0  # seconds from the container's start to the audio stream's first sample
    video_start: float = 0.0  # seconds from the container's start to the video stream's first frame
    origin: float = 0.0  # the container's start on its streams' timestamps, seconds: the clip's time 0
    video_index: int | None = None  # the chosen streams' indices in the container
    audio_index: int | None = None


def _one_line(message: str) -> str:
    """First line of a library message, without decord's "[time] file.cc:line: " prefix."""
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "no message")
    return re.sub(r"^(?:\[[\d:]+\]\s+\S+:\d+:\s*)+", "", line)[:200]


def _seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _start(stream: av.stream.Stream | None) -> float | None:
    """The stream's first presentation time in seconds, from its own timestamps (no decoding)."""
    if stream is None or stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _pick(streams: Sequence[av.stream.Stream]) -> av.stream.Stream | None:
    """The stream a player plays: the first marked default, else the first. Cover art is no video."""
    streams = [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic]
    return next((s for s in streams if s.disposition & av.stream.Disposition.default), streams[0] if streams else None)


def _rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation, read from the first frame: PyAV exposes it on frames only."""
    try:
        frame = next(container.decode(stream))
    except (av.error.FFmpegError, StopIteration):
        return 0
    return round(frame.rotation / 90) % 4 * 90


@functools.lru_cache(maxsize=16)
def _downmix_gain(layout: str) -> float:
    """The gain of the mono downmix libswresample applies to ``layout`` (sqrt 2 for stereo)."""
    try:
        channels = len(av.AudioLayout(layout).channels)
    except (ValueError, av.error.FFmpegError):
        return 1.0
    ones = av.AudioFrame.from_ndarray(np.ones((channels, 1024), np.float32), format="fltp", layout=layout)
    ones.sample_rate = 48000
    mono = av.AudioResampler(format="flt", layout="mono", rate=48000).resample(ones)
    values = np.concatenate([f.to_ndarray().ravel() for f in mono])
    return float(np.median(values)) or 1.0


def probe(path: str | Path) -> StreamInfo:
    """Open ``path`` with PyAV and describe its streams; DecodeError if it cannot be opened."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise DecodeError(path, "empty", "the file is empty")
    try:
        with av.open(str(path)) as container:
            video, audio = _pick(container.streams.video), _pick(container.streams.audio)
            durations = [d for d in (_seconds(s) for s in container.streams) if d is not None]
            duration = container.duration / av.time_base if container.duration else max(durations, default=None)
            rate = (video.average_rate or video.guessed_rate) if video else None
            # Starts come from the streams' timestamps before anything is decoded: decoding one
            # stream moves the demuxer past the other's early packets.
            # Time 0 is where the first of them starts, as a player starts (the container's start
            # but for data and subtitle streams, which a player does not wait for).
            video_start, audio_start = _start(video), _start(audio)
            starts = [s for s in (video_start, audio_start) if s is not None]
            container_start = container.start_time / av.time_base if container.start_time is not None else 0.0
            origin = min(starts, default=container_start)
            return StreamInfo(
                has_video=video is not None,
                has_audio=audio is not None,
                video_codec=video.codec_context.codec.canonical_name if video else None,
                audio_codec=audio.codec_context.codec.canonical_name if audio else None,
                width=video.codec_context.width if video else None,
                height=video.codec_context.height if video else None,
                fps=float(rate) if rate else None,
                duration=duration,
                audio_rate=audio.codec_context.sample_rate if audio else None,
                audio_channels=audio.codec_context.channels if audio else None,
                rotation=_rotation(container, video) if video else 0,
                audio_duration=_seconds(audio) if audio else None,
                audio_layout=audio.layout.name if audio else None,
                audio_start=max(0.0, audio_start - origin) if audio_start is not None else 0.0,
                video_start=max(0.0, video_start - origin) if video_start is not None else 0.0,
                origin=origin,
                video_index=video.index if video else None,
                audio_index=audio.index if audio else None,
            )
    except av.error.FFmpegError as err:
        raise DecodeError(path, "unreadable", f"PyAV cannot open it: {_one_line(str(err))}") from None


@dataclass
class DecodedClip:
    """A decoded segment. Real content is ``[video_first, video_frames)`` frames and
    ``[audio_first, audio_samples)`` samples from the segment's start; everything outside is zeros
    (a stream that starts late, or ends early, is absent there)."""

    video: np.ndarray | None  # uint8 (num_frames, size, size, 3), zeros outside the real frames; None: not asked for
    video_frames: int  # end of the real frames (exclusive)
    audio: np.ndarray | None  # float32 (num_samples,) mono in [-1, 1], zeros outside the real samples
    audio_samples: int  # end of the real samples (exclusive)
    has_video: bool
    has_audio: bool
    video_first: int = 0  # first frame of real content: a stream that starts late is absent before it
    audio_first: int = 0  # first sample of real content

    def part(self, start_s: float, seconds: float, *, fps: float, sample_rate: int) -> DecodedClip:
        """``seconds`` from ``start_s`` (on whole frames and samples) as a clip of its own, its real
        content the part of this clip's that falls inside (none: an empty range)."""
        def cut(array: np.ndarray | None, first: int, end: int, rate: float) -> tuple[np.ndarray | None, int, int]:
            if array is None:
                return None, 0, 0
            at, size = round(start_s * rate), round(seconds * rate)
            lo, hi = min(max(first - at, 0), size), min(max(end - at, 0), size)
            if hi <= lo:  # none of the real content falls inside
                lo = hi = 0
            return array[at:at + size].copy(), lo, hi

        video, video_first, video_frames = cut(self.video, self.video_first, self.video_frames, fps)
        audio, audio_first, audio_samples = cut(self.audio, self.audio_first, self.audio_samples, sample_rate)
        return DecodedClip(video=video, video_frames=video_frames, audio=audio, audio_samples=audio_samples,
                           has_video=self.has_video, has_audio=self.has_audio, video_first=video_first,
                           audio_first=audio_first)


# decord's messages when it finds no stream it can decode (it ignores streams it has no decoder for).
_NO_STREAM = re.compile(r"cannot find video stream|can't find audio stream", re.IGNORECASE)


@contextmanager
def _decord_errors(path: str | Path, kind: str, codec: str | None) -> Iterator[None]:
    """Turn decord's errors into DecodeError, naming a stream PyAV saw but decord cannot decode."""
    try:
        yield
    except decord.DECORDError as err:
        message = _one_line(str(err))
        if _NO_STREAM.search(message):
            raise DecodeError(path, f"unsupported_codec:{codec}", f"decord cannot decode its {codec} {kind}") from None
        raise DecodeError(path, "decode_failed", f"{kind}: {message}") from None


def _nearest_frames(starts: np.ndarray, last_end: float, times: np.ndarray,
                    period: float) -> tuple[np.ndarray, int, int]:
    """For each instant, the frame whose start is nearest (the earlier of two as near). The instants the stream covers,
    ``[first, end)``, are those whose slot (the instant to the next, ``period`` on) overlaps the
    stream's first frame's start to its last frame's end, by more than ``_TOLERANCE_S`` (decord's times
    are float32): a slot in which a player shows some picture. Returns (frame per covered instant,
    first, end)."""
    if len(starts) == 0:
        return np.zeros(0, np.int64), 0, 0
    inside = np.flatnonzero((times + period > starts[0] + _TOLERANCE_S) & (times < last_end - _TOLERANCE_S))
    if len(inside) == 0:
        return np.zeros(0, np.int64), 0, 0
    first, end = int(inside[0]), int(inside[-1]) + 1
    times = times[first:end]
    after = np.clip(np.searchsorted(starts, times), 0, len(starts) - 1)
    before = np.maximum(after - 1, 0)
    # A tie (to float noise) goes to the earlier frame: the one on screen at that instant.
    earlier = np.abs(times - starts[before]) <= np.abs(starts[after] - times) + _TOLERANCE_S
    return np.where(earlier, before, after), first, end


def _frame_times(stamps: np.ndarray, fps: float | None) -> tuple[np.ndarray, float]:
    """Frame starts and the last frame's end, seconds on the video stream's clock, from decord's
    (frames, 2) start/end array. decord gives a Matroska frame no duration (end == start): the last
    frame then lasts one frame period."""
    starts = stamps[:, 0].astype(np.float64)
    last_end = float(stamps[-1, 1])
    if last_end <= starts[-1] + _TOLERANCE_S:
        period = 1 / fps if fps else float(np.median(np.diff(starts))) if len(starts) > 1 else 0.0
        last_end = starts[-1] + period
    return starts, last_end


def _decode_video(path: str | Path, info: StreamInfo, start: float, num_frames: int, fps: float,
                  size: int) -> tuple[np.ndarray, int, int]:
    out = np.zeros((num_frames, size, size, 3), np.uint8)
    # decord turns rotated video upright itself, and garbles the frames unless it is
    # asked for the upright (display) size.
    width, height = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
    # FFmpeg scales while decoding (much cheaper than resizing full frames afterwards);
    # keeping the aspect ratio puts the shorter side at `size`, then slicing crops the centre.
    scale = size / min(width, height)
    scaled_w, scaled_h = max(size, round(width * scale)), max(size, round(height * scale))
    with _decord_errors(path, "video", info.video_codec):
        reader = decord.VideoReader(str(path), num_threads=1, width=scaled_w, height=scaled_h)
        if len(reader) == 0:
            return out, 0, 0
        # decord's times start at 0 on the video stream's first frame (found by experiment, in
        # mp4, Matroska and WebM alike): the stream's own start puts them on the container's clock.
        starts, last_end = _frame_times(reader.get_frame_timestamp(np.arange(len(reader))), info.fps)
        indices, first, end = _nearest_frames(starts + info.video_start, last_end + info.video_start,
                                              start + np.arange(num_frames) / fps, 1 / fps)
        if len(indices) == 0:
            return out, 0, 0
        frames = reader.get_batch(indices.tolist()).asnumpy()
    top, left = (scaled_h - size) // 2, (scaled_w - size) // 2
    out[first:end] = frames[:, top:top + size, left:left + size]
    return out, first, end


class _AudioPlacer:
    """Writes resampled mono frames into a window by their timestamps (output-rate samples on the
    stream's clock), following on from the previous frame within ``_JITTER_S``."""

    def __init__(self, out: np.ndarray, base: int, sample_rate: int, limit: int | None) -> None:
        self.out, self.base, self.rate = out, base, sample_rate
        self.limit = limit  # the stream's real end (its duration), absolute output samples
        self.cursor: int | None = None
        self.first, self.end = None, 0

    def place(self, frame: av.AudioFrame, gain: float) -> None:
        data = frame.to_ndarray().reshape(-1)
        at = self.cursor
        if frame.pts is not None and frame.time_base is not None:
            stamped = round(frame.pts * frame.time_base * self.rate)
            if at is None or abs(stamped - at) > _JITTER_S * self.rate:
                at = stamped
        if at is None:
            at = self.base
        self.cursor = stop = at + len(data)
        if self.limit is not None:
            stop = min(stop, self.limit)
        lo, hi = max(at - self.base, 0), min(stop - self.base, len(self.out))
        if hi > lo:
            self.out[lo:hi] = data[lo - (at - self.base):hi - (at - self.base)] / gain
            self.first = lo if self.first is None else min(self.first, lo)
            self.end = max(self.end, hi)


def _decode_audio(path: str | Path, info: StreamInfo, start: float, num_samples: int,
                  sample_rate: int) -> tuple[np.ndarray, int, int]:
    """Stream the audio of ``[start, start + num_samples / sample_rate)`` (seconds on the clip's clock)
    through PyAV, downmixed to mono at ``sample_rate``: only that range is decoded (from a seek
    for a window well into the file). Returns (samples, first, end) of the real sound."""
    out = np.zeros(num_samples, np.float32)
    begin = info.origin + start  # the window on the stream's own timestamps, seconds
    finish = begin + num_samples / sample_rate
    limit = None
    if info.audio_duration is not None:  # AAC decodes to whole frames: the stream's duration says where sound ends
        limit = round((info.origin + info.audio_start + info.audio_duration) * sample_rate)
    placer = _AudioPlacer(out, round(begin * sample_rate), sample_rate, limit)
    decoded, failure = 0, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams[info.audio_index]
            if start - info.audio_start > 2 * _PREROLL_S:
                try:
                    container.seek(int((begin - _PREROLL_S) / stream.time_base), stream=stream, backward=True)
                except av.error.FFmpegError:  # not seekable: decode from the start and drop what comes before
                    pass
            resampler, setup, gain = None, None, 1.0
            done = False
            packets = container.demux(stream)
            while not done:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as err:  # a truncated or damaged file: keep what came before
                    failure = failure or err
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as err:  # one bad packet: skip it, as players do
                    failure = failure or err
                    continue
                for frame in frames:
                    decoded += 1
                    at = float(frame.pts * frame.time_base) if frame.pts is not None else None
                    if at is not None and at >= finish + _PREROLL_S:
                        done = True
                        break
                    if at is not None and at + frame.samples / frame.sample_rate < begin - _PREROLL_S:
                        continue
                    if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
                        if resampler is not None:
                            for mono in resampler.resample(None):
                                placer.place(mono, gain)
                        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
                        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                        # libswresample's mono downmix is louder than the channels: make it their (weighted) mean.
                        gain = 1.0 if frame.layout.name == "mono" else _downmix_gain(frame.layout.name)
                    for mono in resampler.resample(frame):
                        placer.place(mono, gain)
            if resampler is not None:
                for mono in resampler.resample(None):
                    placer.place(mono, gain)
    except av.error.FFmpegError as err:
        raise DecodeError(path, "decode_failed", f"audio: {_one_line(str(err))}") from None
    if decoded == 0 and isinstance(failure, av.error.DecoderNotFoundError):
        raise DecodeError(path, f"unsupported_codec:{info.audio_codec}", f"no decoder for its {info.audio_codec} audio")
    if decoded == 0 and failure is not None:
        raise DecodeError(path, "decode_failed", f"audio: {_one_line(str(failure))}")
    np.clip(out, -1.0, 1.0, out=out)
    if placer.first is None:
        return out, 0, 0
    out[:placer.first] = 0.0
    out[placer.end:] = 0.0
    return out, placer.first, placer.end


def decode_clip(path: str | Path, *, start: float | None, seconds: float, fps: float | None, size: int,
                sample_rate: int | None) -> DecodedClip:
    """Decode ``seconds`` from ``start`` (None: the file is already trimmed to its segment).

    Times are on the container's presentation clock (0 is its start). Video comes at a fixed
    ``fps`` (the source frame nearest each instant, none before the video stream starts or after
    it ends), shorter side resized to ``size`` and centre-cropped; audio is mono at
    ``sample_rate``, each decoded frame placed by its timestamp; an output frame counts as real when
    the video shows a picture during its 1 / ``fps`` slot; a stream whose rate is None is not decoded. Missing streams give zeros and a False flag; what lies outside a stream is zeros, and
    the real range of each is recorded (``video_first``/``video_frames``, ``audio_first``/``audio_samples``).
    """
    info = probe(path)
    wanted = [kind for kind, rate in (("audio", sample_rate), ("video", fps)) if rate is not None]
    if not any(getattr(info, f"has_{kind}") for kind in wanted):
        raise DecodeError(path, "no_streams", f"no {' or '.join(wanted)} stream")
    offset = start or 0.0
    video, video_first, video_frames = None, 0, 0
    audio, audio_first, audio_samples = None, 0, 0
    if fps is not None:
        num_frames = round(seconds * fps)
        if info.has_video:
            video, video_first, video_frames = _decode_video(path, info, offset, num_frames, fps, size)
        else:
            video = np.zeros((num_frames, size, size, 3), np.uint8)
    if sample_rate is not None:
        num_samples = round(seconds * sample_rate)
        if info.has_audio:
            audio, audio_first, audio_samples = _decode_audio(path, info, offset, num_samples, sample_rate)
        else:
            audio = np.zeros(num_samples, np.float32)
    if video_frames == 0 and audio_samples == 0:
        raise DecodeError(path, "empty", f"nothing to decode in {offset:.3f}-{offset + seconds:.3f} s")
    return DecodedClip(video=video, video_frames=video_frames, audio=audio, audio_samples=audio_samples,
                       has_video=info.has_video, has_audio=info.has_audio, video_first=video_first,
                       audio_first=audio_first)


def decode_at_recipe(path: str | Path, data, modalities: Sequence, *, start: float | None = None) -> DecodedClip:
    """Decode the streams ``modalities`` are derived from, at the recipe ``data`` (a DataConfig)."""
    streams = {s for m in modalities for s in m.streams}
    return decode_clip(path, start=start, seconds=data.segment_seconds,
                       fps=data.video.fps if "video" in streams else None,
                       size=data.video.stored_size or data.video.size,
                       sample_rate=data.audio.sample_rate if "audio" in streams else None)


# The decoder preprocessing calls: (path, data, modalities, start=...) -> DecodedClip.
Decoder = Callable[..., DecodedClip]
