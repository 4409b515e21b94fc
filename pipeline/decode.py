"""Decode one clip into fixed-rate square video frames and mono audio at a fixed rate.

PyAV probes which streams a file holds; decord decodes them. Probing first matters:
decord reports a stream it cannot decode (AV1) exactly like a missing one, and a
clip must never turn silently audio-only because of that.
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
    """What PyAV sees in a file: the first video and the first audio stream."""

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
    audio_start: float = 0.0  # seconds from the file's start to its first decoded sound


def _one_line(message: str) -> str:
    """First line of a library message, without decord's "[time] file.cc:line: " prefix."""
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "no message")
    return re.sub(r"^(?:\[[\d:]+\]\s+\S+:\d+:\s*)+", "", line)[:200]


def _seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation, read from the first frame: PyAV exposes it on frames only."""
    try:
        frame = next(container.decode(stream))
    except (av.error.FFmpegError, StopIteration):
        return 0
    return round(frame.rotation / 90) % 4 * 90


def _audio_start(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float:
    """Where the first decoded sound lies on the file's clock (a late-starting track is > 0)."""
    origin = (container.start_time or 0) / av.time_base
    try:
        frame = next(container.decode(stream))
    except (av.error.FFmpegError, StopIteration):
        return 0.0
    return max(0.0, float(frame.pts * frame.time_base) - origin) if frame.pts is not None else 0.0


@functools.lru_cache(maxsize=16)
def _downmix_gain(layout: str) -> float:
    """The gain of the mono downmix libswresample applies to ``layout`` (sqrt 2 for stereo)."""
    channels = len(av.AudioLayout(layout).channels)
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
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            durations = [d for d in (_seconds(s) for s in container.streams) if d is not None]
            duration = container.duration / av.time_base if container.duration else max(durations, default=None)
            rate = (video.average_rate or video.guessed_rate) if video else None
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
                audio_start=_audio_start(container, audio) if audio else 0.0,
            )
    except av.error.FFmpegError as err:
        raise DecodeError(path, "unreadable", f"PyAV cannot open it: {_one_line(str(err))}") from None


@dataclass
class DecodedClip:
    video: np.ndarray | None  # uint8 (num_frames, size, size, 3), zeros past video_frames; None: not asked for
    video_frames: int  # frames really decoded
    audio: np.ndarray | None  # float32 (num_samples,) mono in [-1, 1], zeros past audio_samples
    audio_samples: int  # samples really decoded
    has_video: bool
    has_audio: bool


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


def _nearest_frames(stamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time, the frame whose start is nearest; times after the last frame ends get none.

    ``stamps`` is decord's (frames, 2) array of start and end seconds.
    """
    if len(stamps) == 0:
        return np.zeros(0, np.int64)
    times = times[times < stamps[-1, 1]]
    starts = stamps[:, 0]
    after = np.clip(np.searchsorted(starts, times), 0, len(starts) - 1)
    before = np.maximum(after - 1, 0)
    return np.where(np.abs(times - starts[before]) <= np.abs(starts[after] - times), before, after)


def _decode_video(path: str | Path, info: StreamInfo, start: float, num_frames: int, fps: float,
                  size: int) -> tuple[np.ndarray, int]:
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
        stamps = reader.get_frame_timestamp(np.arange(len(reader)))
        indices = _nearest_frames(stamps, start + np.arange(num_frames) / fps)
        if len(indices) == 0:
            return out, 0
        frames = reader.get_batch(indices.tolist()).asnumpy()
    top, left = (scaled_h - size) // 2, (scaled_w - size) // 2
    out[:len(indices)] = frames[:, top:top + size, left:left + size]
    return out, len(indices)


def _decode_audio(path: str | Path, info: StreamInfo, start: float, num_samples: int,
                  sample_rate: int) -> tuple[np.ndarray, int]:
    out = np.zeros(num_samples, np.float32)
    with _decord_errors(path, "audio", info.audio_codec):
        # decord's own resampler (libswresample) is faster than torchaudio's here and
        # filters aliasing better; mono=False with resampling returns garbage in decord 0.6.
        decoded = decord.AudioReader(str(path), sample_rate=sample_rate, mono=True)[:].asnumpy()[0]
    # decord pads to whole codec frames; the stream's duration says where the sound ends,
    # and a truncated file decodes shorter than its header claims.
    real = len(decoded)
    if info.audio_duration is not None:
        real = min(real, round(info.audio_duration * sample_rate))
    # decord puts the first sound at sample 0; on the picture's clock it starts at audio_start.
    lead = round(info.audio_start * sample_rate)
    first = round(start * sample_rate)
    at, src = max(0, lead - first), max(0, first - lead)
    count = max(0, min(num_samples - at, real - src))
    out[at:at + count] = decoded[src:src + count]
    if info.audio_layout and info.audio_layout != "mono":
        out /= _downmix_gain(info.audio_layout)  # makes decord's downmix the channels' (weighted) mean
    np.clip(out, -1.0, 1.0, out=out)
    return out, at + count if count else 0


def decode_clip(path: str | Path, *, start: float | None, seconds: float, fps: float | None, size: int,
                sample_rate: int | None) -> DecodedClip:
    """Decode ``seconds`` from ``start`` (None: the file is already trimmed to its segment).

    Video comes at a fixed ``fps`` (the source frame nearest each instant, none past
    the end of the file), shorter side resized to ``size`` and centre-cropped; audio
    is mono at ``sample_rate``; a stream whose rate is None is not decoded. Missing streams
    give zeros and a False flag; what lies past the end of the file is zeros, and the true
    lengths are recorded.
    """
    info = probe(path)
    wanted = [kind for kind, rate in (("audio", sample_rate), ("video", fps)) if rate is not None]
    if not any(getattr(info, f"has_{kind}") for kind in wanted):
        raise DecodeError(path, "no_streams", f"no {' or '.join(wanted)} stream")
    offset = start or 0.0
    video, video_frames, audio, audio_samples = None, 0, None, 0
    if fps is not None:
        num_frames = round(seconds * fps)
        if info.has_video:
            video, video_frames = _decode_video(path, info, offset, num_frames, fps, size)
        else:
            video = np.zeros((num_frames, size, size, 3), np.uint8)
    if sample_rate is not None:
        num_samples = round(seconds * sample_rate)
        if info.has_audio:
            audio, audio_samples = _decode_audio(path, info, offset, num_samples, sample_rate)
        else:
            audio = np.zeros(num_samples, np.float32)
    if video_frames == 0 and audio_samples == 0:
        raise DecodeError(path, "empty", f"nothing to decode in {offset:.3f}-{offset + seconds:.3f} s")
    return DecodedClip(video=video, video_frames=video_frames, audio=audio, audio_samples=audio_samples,
                       has_video=info.has_video, has_audio=info.has_audio)


def decode_at_recipe(path: str | Path, data, modalities: Sequence, *, start: float | None = None) -> DecodedClip:
    """Decode the streams ``modalities`` are derived from, at the recipe ``data`` (a DataConfig)."""
    streams = {s for m in modalities for s in m.streams}
    return decode_clip(path, start=start, seconds=data.segment_seconds,
                       fps=data.video.fps if "video" in streams else None, size=data.video.size,
                       sample_rate=data.audio.sample_rate if "audio" in streams else None)


# The decoder preprocessing calls: (path, data, modalities, start=...) -> DecodedClip.
Decoder = Callable[..., DecodedClip]
