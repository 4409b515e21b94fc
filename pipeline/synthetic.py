"""A synthetic AudioSet-like dataset: real H.264/AAC mp4 clips plus AudioSet-format CSVs.

Half the classes are only visible (shapes, bars, a blinking border) and half only
audible (tones, a chirp, noise bursts), and every clip carries 1-3 of them, so a
model needs both modalities to score well. Every event lasts the whole clip, so any
1 s window of a clip shows all of its labels. Everything is deterministic per seed.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SyntheticClass:
    index: int
    mid: str
    display_name: str
    modality: str  # "video" | "audio"


CLASSES: list[SyntheticClass] = [
    SyntheticClass(0, "/m/syn_red_square", "Red square", "video"),
    SyntheticClass(1, "/m/syn_green_circle", "Green circle", "video"),
    SyntheticClass(2, "/m/syn_blue_bars", "Horizontal bars", "video"),
    SyntheticClass(3, "/m/syn_blink", "Blinking frame", "video"),
    SyntheticClass(4, "/m/syn_low_tone", "Low tone", "audio"),
    SyntheticClass(5, "/m/syn_high_tone", "High tone", "audio"),
    SyntheticClass(6, "/m/syn_chirp", "Rising chirp", "audio"),
    SyntheticClass(7, "/m/syn_noise_bursts", "Noise bursts", "audio"),
]


@dataclass(frozen=True)
class ClipFormat:
    """Size, rate and channel count of the clips of one dataset."""

    width: int
    height: int
    fps: float
    sample_rate: int
    audio_channels: int


# Small clips train fast; the textured format mimics a real 360p YouTube upload for benchmarks.
SMALL = ClipFormat(width=96, height=96, fps=16.0, sample_rate=16000, audio_channels=1)
TEXTURED = ClipFormat(width=640, height=360, fps=25.0, sample_rate=48000, audio_channels=2)

Painter = Callable[[np.ndarray, float], None]  # paints onto a float32 (H, W, 3) frame at time t


def _wander(rng: np.random.Generator, half_size: float, width: int, height: int) -> Callable[[float], tuple[float, float]]:
    """A smooth random path for a shape's centre, kept inside the central square.

    The decoder centre-crops the shorter side, so shapes must never leave that square.
    """
    reach = (min(width, height) / 2 - half_size) * 0.9
    fx, fy = rng.uniform(0.2, 0.6, 2)
    px, py = rng.uniform(0, 2 * math.pi, 2)

    def at(t: float) -> tuple[float, float]:
        return (width / 2 + reach * math.sin(2 * math.pi * fx * t + px),
                height / 2 + reach * math.sin(2 * math.pi * fy * t + py))

    return at


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.clip(np.array(rgb, np.float32) + rng.uniform(-15, 15, 3), 0, 255).astype(np.float32)


def _red_square(rng: np.random.Generator, width: int, height: int) -> Painter:
    half = 0.15 * min(width, height)
    path, colour = _wander(rng, half, width, height), _jitter(rng, (225, 35, 35))

    def paint(frame: np.ndarray, t: float) -> None:
        x, y = path(t)
        frame[max(0, round(y - half)):round(y + half), max(0, round(x - half)):round(x + half)] = colour

    return paint


def _green_circle(rng: np.random.Generator, width: int, height: int) -> Painter:
    radius = 0.18 * min(width, height)
    path, colour = _wander(rng, radius, width, height), _jitter(rng, (40, 210, 60))

    def paint(frame: np.ndarray, t: float) -> None:
        x, y = path(t)
        y0, x0 = max(0, int(y - radius)), max(0, int(x - radius))
        yy, xx = np.ogrid[y0:int(y + radius) + 1, x0:int(x + radius) + 1]
        box = frame[y0:y0 + yy.shape[0], x0:x0 + xx.shape[1]]
        box[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = colour

    return paint


def _blue_bars(rng: np.random.Generator, width: int, height: int) -> Painter:
    period = 0.25 * min(width, height)
    speed = rng.uniform(0.3, 0.8) * period * rng.choice([-1, 1])  # pixels per second, up or down
    phase, colour = rng.uniform(0, period), _jitter(rng, (50, 70, 235))
    rows = np.arange(height, dtype=np.float32)

    def paint(frame: np.ndarray, t: float) -> None:
        on = ((rows + phase + speed * t) % period) < period / 2
        frame[on] = 0.25 * frame[on] + 0.75 * colour  # translucent, so the background shows through

    return paint


def _blinking_border(rng: np.random.Generator, width: int, height: int) -> Painter:
    thick = max(2, round(0.1 * min(width, height)))
    half_period = 0.25  # seconds on, then as long off: visible at 8 fps and in any 1 s window
    phase, colour = rng.uniform(0, 2 * half_period), _jitter(rng, (245, 225, 40))

    def paint(frame: np.ndarray, t: float) -> None:
        if int((t + phase) / half_period) % 2 == 0:
            for edge in (np.s_[:thick], np.s_[-thick:], np.s_[:, :thick], np.s_[:, -thick:]):
                frame[edge] = colour

    return paint


# In drawing order: translucent bars first, the border last.
_PAINTERS: dict[int, Callable[[np.random.Generator, int, int], Painter]] = {
    2: _blue_bars, 0: _red_square, 1: _green_circle, 3: _blinking_border,
}


def _tone(hz: float, amplitude: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """A sine near ``hz`` (within 5%) at a random phase."""
    return lambda t, rng: amplitude * np.sin(2 * np.pi * hz * rng.uniform(0.95, 1.05) * t
                                             + rng.uniform(0, 2 * np.pi))


def _chirp(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # An exponential sweep of 600 -> 2000 Hz repeated every 0.4 s: every window holds whole sweeps.
    period, f0, ratio = 0.4, 600.0, 2000.0 / 600.0
    local = (t + rng.uniform(0, period)) % period
    k = math.log(ratio) / period
    return 0.2 * np.sin(2 * np.pi * f0 * (np.exp(k * local) - 1) / k)


def _noise_bursts(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    on = ((t + rng.uniform(0, 0.25)) % 0.25) < 0.08  # 80 ms bursts, four a second
    return 0.25 * on * rng.uniform(-1, 1, t.shape)


_SOUNDS: dict[int, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    4: _tone(250, 0.2), 5: _tone(3500, 0.15), 6: _chirp, 7: _noise_bursts,
}


def _smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cloud-like texture in [0, 1]: several octaves of bicubically upscaled random noise."""
    out = np.zeros((height, width), np.float32)
    for cells, weight in ((4, 1.0), (12, 0.6), (40, 0.4), (160, 0.3)):
        small = rng.random((max(2, cells * height // width), cells), dtype=np.float32)
        out += weight * np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _flat_background(rng: np.random.Generator, width: int, height: int) -> Callable[[float], np.ndarray]:
    """A dark tinted gradient with a slow brightness drift and fresh sensor-like noise per frame."""
    base = rng.uniform(25, 75, 3).astype(np.float32)
    ramp = np.linspace(-12, 12, height, dtype=np.float32)[:, None, None] * rng.choice([-1, 1])
    still = base + ramp + np.zeros((height, width, 3), np.float32)
    drift_hz, drift_phase = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)

    def at(t: float) -> np.ndarray:
        drift = 8 * math.sin(2 * math.pi * drift_hz * t + drift_phase)
        return still + drift + rng.normal(0, 3, still.shape).astype(np.float32)

    return at


def _textured_background(rng: np.random.Generator, width: int, height: int) -> Callable[[float], np.ndarray]:
    """Two layers of coloured cloud texture panning at different speeds, like a moving camera."""
    margin = round(0.2 * min(width, height))
    big_h, big_w = height + 2 * margin, width + 2 * margin
    layers = []
    for _ in range(2):
        lum = _smooth_noise(rng, big_h, big_w)[..., None]
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        layers.append(255 * (0.15 + 0.85 * lum) * tint)
    pans = rng.uniform(0.05, 0.3, (2, 2))  # Hz of each layer's x and y pan
    phases = rng.uniform(0, 2 * np.pi, (2, 2))

    def at(t: float) -> np.ndarray:
        frame = np.zeros((height, width, 3), np.float32)
        for layer, weight, hz, ph in zip(layers, (0.65, 0.35), pans, phases, strict=True):
            dx, dy = (round(margin * (1 + math.sin(2 * math.pi * f * t + p))) for f, p in zip(hz, ph, strict=True))
            frame += weight * layer[dy:dy + height, dx:dx + width]
        return frame

    return at


def _frames(labels: Sequence[int], num_frames: int, fps: float, width: int, height: int,
            textured: bool, rng: np.random.Generator) -> Iterator[np.ndarray]:
    background = (_textured_background if textured else _flat_background)(rng, width, height)
    painters = [make(rng, width, height) for index, make in _PAINTERS.items() if index in labels]
    for i in range(num_frames):
        t = i / fps
        frame = background(t)
        for paint in painters:
            paint(frame, t)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _audio(labels: Sequence[int], num_samples: int, sample_rate: int, channels: int,
           rng: np.random.Generator) -> np.ndarray:
    """(channels, num_samples) float32: the labelled sounds over quiet noise, panned slightly."""
    t = np.arange(num_samples) / sample_rate
    mix = sum((make(t, rng) * rng.uniform(0.7, 1.0) for index, make in _SOUNDS.items() if index in labels),
              np.zeros(num_samples))
    gains = rng.uniform(0.8, 1.0, (channels, 1))
    return (gains * mix + rng.normal(0, 0.006, (channels, num_samples))).astype(np.float32)


# x264's macroblock-tree rate control gave different bytes from run to run here (its AVX-512
# code, it seems: asm=avx2 or asm=0 fixed it too); without it the output is reproducible.
_ENCODER_OPTIONS = {"h264": {"mbtree": "0"}, "libx264": {"mbtree": "0"}}

# Container format by file suffix; anything else is written as mp4.
_CONTAINERS = {".mkv": "matroska", ".webm": "webm", ".m4a": "ipod", ".mov": "mov"}


def container_format(path: str | Path) -> str:
    """The FFmpeg muxer for ``path``'s suffix: matroska, webm, ipod (``.m4a``), mov or mp4."""
    return _CONTAINERS.get(Path(path).suffix.lower(), "mp4")


def _write_streams(path: str | Path, *, frames: Iterator[np.ndarray] | None, fps: float, width: int, height: int,
                   samples: np.ndarray | None, sample_rate: int, video_codec: str, audio_codec: str) -> None:
    """Encode RGB ``frames`` and ``samples`` ((channels, n) float32) into ``path``, interleaved like an upload."""
    layout = "mono" if samples is None or samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container_format(path)) as container:
        if frames is not None:
            vstream = container.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1001),
                                           options=_ENCODER_OPTIONS.get(video_codec, {}))
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            vstream.codec_context.gop_size = max(1, round(2 * fps))  # a keyframe every 2 s, like uploads
        if samples is not None:
            astream = container.add_stream(audio_codec, rate=sample_rate, layout=layout)
            astream.bit_rate = 64000 * samples.shape[0]
        sent = 0  # audio samples encoded so far

        def send_audio(upto: int) -> None:
            nonlocal sent
            if samples is not None and upto > sent:
                chunk = np.ascontiguousarray(np.clip(samples[:, sent:upto], -1, 1))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = sample_rate, sent
                container.mux(astream.encode(frame))
                sent = upto

        if frames is not None:
            # Audio goes in step with the frames so the file is interleaved like a real upload.
            for i, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
                send_audio(round((i + 1) / fps * sample_rate))
            container.mux(vstream.encode(None))
        if samples is not None:
            send_audio(samples.shape[1])
            container.mux(astream.encode(None))


def write_clip(path: str | Path, *, seconds: float, fps: float, width: int, height: int, sample_rate: int,
               labels: Sequence[int] = (), audio_channels: int = 1, video: bool = True, audio: bool = True,
               textured: bool = False, seed: int = 0, video_codec: str = "h264",
               audio_codec: str = "aac") -> None:
    """Write one clip showing/sounding the classes in ``labels``, in the container its suffix names
    (mp4 unless ``.mkv``, ``.webm``, ``.m4a`` or ``.mov``; see ``container_format``).

    ``video=False`` or ``audio=False`` leaves that stream out. ``width`` and ``height``
    must be even (4:2:0 chroma). Other codecs (``"mpeg4"``, ``"libsvtav1"``,
    ``"libvpx-vp9"``) make hostile-input test files.
    """
    # Separate generators, so a clip's sound does not depend on whether its video was written.
    video_rng, audio_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    samples = _audio(labels, round(seconds * sample_rate), sample_rate, audio_channels, audio_rng)
    frames = _frames(labels, round(seconds * fps), fps, width, height, textured, video_rng) if video else None
    _write_streams(path, frames=frames, fps=fps, width=width, height=height, samples=samples if audio else None,
                   sample_rate=sample_rate, video_codec=video_codec, audio_codec=audio_codec)


def write_changing_clip(path: str | Path, *, parts: Sequence[tuple[float, Sequence[int]]], fps: float, width: int,
                        height: int, sample_rate: int, video: bool = True, audio: bool = True,
                        seed: int = 0) -> Path:
    """A long clip whose classes change over time: ``parts`` are (seconds, labels) in order, each part
    showing/sounding its labels (from a fresh background) for its seconds, as ``write_clip`` paints them.

    For timelines: ``parts=[(90, (4,)), (90, (7,))]`` is a 3-minute clip whose sound turns from a low
    tone to noise bursts at 90 s. Frames are painted one at a time while encoding, so the length costs
    no memory but the mono waveform's.
    """
    video_rng, audio_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    samples = np.concatenate([_audio(labels, round(seconds * sample_rate), sample_rate, 1, audio_rng)
                              for seconds, labels in parts], axis=1)
    frames = itertools.chain.from_iterable(
        _frames(labels, round(seconds * fps), fps, width, height, False, video_rng) for seconds, labels in parts)
    _write_streams(path, frames=frames if video else None, fps=fps, width=width, height=height,
                   samples=samples if audio else None, sample_rate=sample_rate, video_codec="h264",
                   audio_codec="aac")
    return Path(path)


# ---------------------------------------------------------------------------- remuxed files
#
# What real downloads look like after a remux: streams that start at different times, several
# audio tracks of which one is marked default.


def remux(src: str | Path, dst: str | Path, *, video_delay_s: float = 0.0, audio_delay_s: float = 0.0,
          rotation: int = 0, faststart: bool = False) -> Path:
    """Copy ``src``'s packets into ``dst`` (container by its suffix) without re-encoding.

    ``video_delay_s`` / ``audio_delay_s`` move every packet of that kind of stream later on the
    file's clock, so the stream starts that much after the other (an mp4 gets an empty edit, a
    Matroska file later block timestamps). ``rotation`` sets a display matrix on the video;
    ``faststart`` puts an mp4's index in front.
    """
    dst = Path(dst)
    options = {"movflags": "faststart"} if faststart else {}
    delays = {"video": video_delay_s, "audio": audio_delay_s}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=container_format(dst), options=options) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        if rotation:
            for s in inp.streams.video:
                streams[s.index].set_display_rotation(rotation)
        shifts = {s.index: round(delays.get(s.type, 0.0) / s.time_base) for s in inp.streams}
        for packet in inp.demux():
            if packet.size == 0:  # the demuxer's end-of-stream marker carries no data
                continue
            # A Matroska packet may lack a dts (a B-frame's is not stored): skipping it loses the keyframe.
            if shift := shifts[packet.stream.index]:
                packet.pts = None if packet.pts is None else packet.pts + shift
                packet.dts = None if packet.dts is None else packet.dts + shift
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def write_multitrack_clip(path: str | Path, *, tracks: Sequence[Sequence[int]], default: int, seconds: float,
                          fps: float, width: int, height: int, sample_rate: int, video_labels: Sequence[int] = (),
                          seed: int = 0) -> Path:
    """A clip with one video stream and one audio stream per entry of ``tracks`` (the audio labels
    of each), where only track ``default`` carries the default disposition (what yt-dlp and
    players pick: the decoder must too). Written as ``.mkv`` by callers, any container works."""
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        sources = []
        for number, labels in enumerate(tracks):
            src = Path(scratch) / f"track{number}.mp4"
            write_clip(src, seconds=seconds, fps=fps, width=width, height=height, sample_rate=sample_rate,
                       labels=(*video_labels, *labels), video=number == 0, seed=seed * 101 + number)
            sources.append(src)
        inputs = [av.open(str(src)) for src in sources]
        try:
            with av.open(str(path), "w", format=container_format(path)) as out:
                mapping = {}
                for number, inp in enumerate(inputs):
                    for s in inp.streams:
                        mapping[number, s.index] = made = out.add_stream_from_template(s)
                        on = s.type != "audio" or number == default  # video tracks and the chosen audio
                        made.disposition = av.stream.Disposition.default if on else av.stream.Disposition(0)
                for number, inp in enumerate(inputs):
                    for packet in inp.demux():
                        if packet.size:
                            packet.stream = mapping[number, packet.stream.index]
                            out.mux(packet)
        finally:
            for inp in inputs:
                inp.close()
    return path


# ---------------------------------------------------------------------------- a sync test clip

SYNC_EVENT_S = 1.0  # where write_sync_clip puts its flash and its beep, before any delay
SYNC_BEEP_HZ = 1000.0
_SYNC_CODECS = {"webm": ("libvpx-vp9", "libopus")}  # other containers: H.264 + AAC


def write_sync_clip(path: str | Path, *, video_delay_s: float = 0.0, audio_delay_s: float = 0.0,
                    seconds: float = 3.0, event_s: float = SYNC_EVENT_S, fps: float = 25.0, width: int = 64,
                    height: int = 64, sample_rate: int = 48000) -> Path:
    """A flash (one white frame) and a beep (a 40 ms tone burst) written at the same instant,
    ``event_s``, over dark frames and near-silence; then remuxed into ``path`` (container by suffix:
    H.264/AAC, or VP9/Opus for ``.webm``) with the video or the audio stream starting
    ``video_delay_s`` / ``audio_delay_s`` later.

    A decoder that keeps both streams on the file's clock shows the flash
    ``video_delay_s - audio_delay_s`` seconds after the beep starts (see ``flash_and_beep``).
    """
    path = Path(path)
    video_codec, audio_codec = _SYNC_CODECS.get(container_format(path), ("h264", "aac"))
    rng = np.random.default_rng(0)
    flash = round(event_s * fps)

    def frames() -> Iterator[np.ndarray]:
        for i in range(round(seconds * fps)):
            level = 255 if i == flash else 20
            yield np.full((height, width, 3), level, np.uint8)

    t = np.arange(round(seconds * sample_rate)) / sample_rate
    burst = (t >= event_s) & (t < event_s + 0.04)
    samples = 0.002 * rng.standard_normal(t.shape) + 0.5 * burst * np.sin(2 * np.pi * SYNC_BEEP_HZ * (t - event_s))
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        src = Path(scratch) / f"src{path.suffix}"
        _write_streams(src, frames=frames(), fps=fps, width=width, height=height,
                       samples=samples[None].astype(np.float32), sample_rate=sample_rate,
                       video_codec=video_codec, audio_codec=audio_codec)
        return remux(src, path, video_delay_s=video_delay_s, audio_delay_s=audio_delay_s)


def flash_and_beep(video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Seconds from a decoded window's start to the flash (its brightest frame) and to the beep's
    onset (where the sound first reaches half its peak) of a ``write_sync_clip`` file."""
    flash = int(np.argmax(video.reshape(len(video), -1).mean(axis=1))) / fps
    loud = np.abs(audio)
    beep = int(np.argmax(loud >= 0.5 * loud.max())) / sample_rate
    return flash, beep


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _youtube_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Unique 11-character IDs; every third starts with '-' and every other holds a '_'.

    Real AudioSet IDs do both, which breaks command-line tools and naive parsing.
    """
    ids: list[str] = []
    while len(ids) < count:
        chars = list(rng.choice(list(_ID_CHARS), 11))
        if len(ids) % 3 == 0:
            chars[0] = "-"
        if len(ids) % 2 == 0:
            chars[int(rng.integers(1, 11))] = "_"
        ytid = "".join(chars)
        if ytid not in ids:
            ids.append(ytid)
    return ids


def _draw_labels(rng: np.random.Generator, count: int) -> list[tuple[int, ...]]:
    """1-3 labels per clip; clip i always has class i mod 8, so a split of 8+ clips covers all."""
    out = []
    for i in range(count):
        extra = rng.choice(len(CLASSES), size=int(rng.integers(0, 3)), replace=False)
        out.append(tuple(sorted({i % len(CLASSES), *map(int, extra)})))
    return out


@dataclass
class SyntheticDataset:
    root: Path
    clips_dir: Path
    train_csv: Path
    eval_csv: Path
    labels_csv: Path
    train: list[tuple[str, tuple[int, ...]]]  # (ytid, label indices) per clip
    eval: list[tuple[str, tuple[int, ...]]]


def _write_segments(path: Path, rows: list[tuple[str, tuple[int, ...]]], starts: np.ndarray,
                    seconds: float) -> None:
    num_labels = sum(len(labels) for _, labels in rows)
    lines = [
        "# Segments csv created by pipeline.synthetic",
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(CLASSES)}, "
        f"num_positive_labels={num_labels}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    for (ytid, labels), start in zip(rows, starts, strict=True):
        mids = ",".join(CLASSES[i].mid for i in labels)
        lines.append(f'{ytid}, {start:.3f}, {start + seconds:.3f}, "{mids}"')
    path.write_text("\n".join(lines) + "\n")


def make_dataset(out_dir: str | Path, *, num_train: int, num_eval: int, seconds: float = 2.0, seed: int = 0,
                 textured: bool = False, width: int | None = None, height: int | None = None,
                 fps: float | None = None, sample_rate: int | None = None) -> SyntheticDataset:
    """Write ``out_dir/clips/{ytid}.mp4`` and the AudioSet CSVs for two splits.

    The clips are already trimmed to their segment; the CSVs give each segment a
    whole-second start inside its (imaginary) full YouTube video, as AudioSet does.
    Unset sizes and rates come from the small format, or the 360p one if ``textured``.
    """
    fmt = TEXTURED if textured else SMALL
    width, height = width or fmt.width, height or fmt.height
    fps, sample_rate = fps or fmt.fps, sample_rate or fmt.sample_rate
    root = Path(out_dir)
    clips_dir = root / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _youtube_ids(rng, num_train + num_eval)
    splits = {"train": list(zip(ids[:num_train], _draw_labels(rng, num_train), strict=True)),
              "eval": list(zip(ids[num_train:], _draw_labels(rng, num_eval), strict=True))}
    for number, (ytid, labels) in enumerate(splits["train"] + splits["eval"]):
        write_clip(clips_dir / f"{ytid}.mp4", seconds=seconds, fps=fps, width=width, height=height,
                   sample_rate=sample_rate, labels=labels, audio_channels=fmt.audio_channels,
                   textured=textured, seed=seed * 1_000_003 + number)
    dataset = SyntheticDataset(root=root, clips_dir=clips_dir, train_csv=root / "balanced_train_segments.csv",
                               eval_csv=root / "eval_segments.csv", labels_csv=root / "class_labels_indices.csv",
                               train=splits["train"], eval=splits["eval"])
    for path, rows in ((dataset.train_csv, dataset.train), (dataset.eval_csv, dataset.eval)):
        _write_segments(path, rows, rng.integers(0, 300, len(rows)).astype(float), seconds)
    dataset.labels_csv.write_text(
        "index,mid,display_name\n" + "".join(f'{c.index},{c.mid},"{c.display_name}"\n' for c in CLASSES))
    return dataset
