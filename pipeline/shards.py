"""The shard format, writer and reader side by side (schema version ``SCHEMA_VERSION``).

A shard is a POSIX tar file. Its first entry has the key ``__fourier__`` and holds, per
modality, the Fourier position features of the recipe's window grid, once per shard:

    __fourier__.json              {"schema_version", "modalities": {name: tag}} (tag: see
                                  pipeline.features.modality_tag: name, id, grid, Fourier spec)
    __fourier__.<name>.npy        float32 (num_tokens, fourier_channels) for each modality

Then one sample per clip, members named ``<key>.<ext>`` (keys hold no dots, since webdataset
cuts keys at the first dot):

    <key>.json                    metadata: key, ytid, start/end seconds, labels (class
                                  indices), has_audio/has_video, true lengths (audio_samples,
                                  video_frames), stored lengths, the modality tags, source
    <key>.audio.npy               int16 (samples,) waveform, or float16 (frames, n_mels) log-mel
    <key>.video.npy               uint8 (frames, size, size, 3)       [encoding "raw"]
    <key>.video.mjpeg             the frames' JPEGs back to back (a Motion-JPEG elementary
                                  stream); json video.frame_bytes gives each frame's length
                                  [encoding "jpeg"]

Members are only ``.npy`` (read with allow_pickle=False after the header's shape is checked
against the member's size), ``.json`` and ``.mjpeg``. The reader refuses every other member
unread, so nothing in a shard is ever unpickled or executed. Tar headers (POSIX pax, so long keys
fit) carry fixed mtime/owner so a rerun writes byte-identical shards.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys

from pipeline import storage

# 2: a clip's JPEG frames in one .mjpeg member (1 had one .jpg member per frame: 250 tar headers
# per 10 s clip, and tar parsing cost more than decoding the frames a window uses).
SCHEMA_VERSION = 2
FOURIER_KEY = "__fourier__"
MAX_MEMBER_BYTES = 256 << 20
_SAMPLE_MEMBER = re.compile(r"^(json|audio\.npy|video\.npy|video\.mjpeg)$")
_FOURIER_MEMBER = re.compile(r"^(json|[a-z]+\.npy)$")
log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One clip as stored: metadata plus the stored arrays of each modality."""

    key: str
    meta: dict
    audio: np.ndarray  # int16 (samples,) or float16 (frames, n_mels)
    video: np.ndarray  # uint8 (frames, size, size, 3)


class ShardFormatError(ValueError):
    """A member that the reader refuses to decode."""


# ---------------------------------------------------------------- writing


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_jpeg_frames(video: np.ndarray, quality: int) -> list[bytes]:
    """One JPEG per frame of uint8 (frames, H, W, 3)."""
    out = []
    for frame in video:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def sample_members(sample: Sample, video_encoding: str, jpeg_quality: int) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order."""
    meta = dict(sample.meta, key=sample.key, schema_version=SCHEMA_VERSION)
    if video_encoding == "raw":
        video = [("video.npy", _npy_bytes(sample.video))]
    else:
        frames = encode_jpeg_frames(sample.video, jpeg_quality)
        meta["video"] = dict(meta.get("video", {}), frame_bytes=[len(f) for f in frames])
        video = [("video.mjpeg", b"".join(frames))]
    members = [("json", json.dumps(meta, sort_keys=True).encode()), ("audio.npy", _npy_bytes(sample.audio)), *video]
    return [(f"{sample.key}.{ext}", data) for ext, data in members]


def fourier_members(tags: Mapping[str, dict], features: Mapping[str, np.ndarray]) -> list[tuple[str, bytes]]:
    """The leading ``__fourier__`` entry: each modality's tag and its position features."""
    header = {"schema_version": SCHEMA_VERSION, "modalities": dict(tags)}
    members = [(f"{FOURIER_KEY}.json", json.dumps(header, sort_keys=True).encode())]
    members += [(f"{FOURIER_KEY}.{name}.npy", _npy_bytes(features[name].astype(np.float32))) for name in tags]
    return members


def write_shard(
    location: storage.Location,
    name: str,
    fourier: list[tuple[str, bytes]],
    samples: Iterable[list[tuple[str, bytes]]],
) -> int:
    """Write ``fourier`` then each sample's members into ``location/name`` atomically.

    Returns the shard's size in bytes. The shard is visible under its name only when complete.
    """
    size = 0
    with storage.atomic_output(location.fs, location.join(name)) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: names past 100 bytes
            for members in [fourier, *samples]:
                for member_name, data in members:
                    info = tarfile.TarInfo(member_name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))
        size = f.tell()
    return size


# ---------------------------------------------------------------- reading


@dataclass
class ReadStats:
    """What a reader skipped; training logs and reports these counts."""

    shards: int = 0
    samples: int = 0
    bad_shards: list[str] = field(default_factory=list)
    refused_members: list[str] = field(default_factory=list)
    incomplete_samples: list[str] = field(default_factory=list)


def load_npy(data: bytes, name: str = "member") -> np.ndarray:
    """Decode ``.npy`` bytes without pickle, checking the header against the bytes first.

    A header that claims more elements than the member holds is refused before any
    allocation; object dtypes (which would need pickle) are refused.
    """
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf, max_header_size=10000)
    except (ValueError, SyntaxError) as err:
        raise ShardFormatError(f"{name}: not a valid .npy header ({err})") from None
    if dtype.hasobject:
        raise ShardFormatError(f"{name}: object arrays are refused (they would need pickle)")
    count = 1
    for n in shape:
        count *= int(n)
    body = len(data) - buf.tell()
    if count * dtype.itemsize != body:
        raise ShardFormatError(f"{name}: header claims shape {tuple(shape)} ({count * dtype.itemsize} bytes) "
                               f"but the member holds {body} bytes")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def split_frames(stream: bytes, frame_bytes: Sequence[int], frames: int, name: str) -> list[memoryview]:
    """The JPEG of each frame in a ``.mjpeg`` member, without copying, checked against the JSON."""
    if len(frame_bytes) != frames or sum(frame_bytes) != len(stream) or min(frame_bytes, default=1) <= 0:
        raise ShardFormatError(f"{name}: video.mjpeg holds {len(stream)} bytes, the JSON lists "
                               f"{len(frame_bytes)} frames of {sum(frame_bytes)} bytes for {frames} frames")
    view, out, at = memoryview(stream), [], 0
    for n in frame_bytes:
        out.append(view[at:at + n])
        at += n
    return out


def decode_jpeg_frames(frames: Sequence[bytes | memoryview]) -> np.ndarray:
    """uint8 (frames, H, W, 3) from JPEG bytes (Pillow, libjpeg-turbo; Pillow's
    decompression-bomb limit applies to hostile headers)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in frames])


def _members(path: str, stats: ReadStats, max_member_bytes: int) -> Iterator[dict]:
    """Tar members as webdataset's ``{"fname", "data", "__url__"}`` dicts, then an EOF marker.

    Streams are opened through pyarrow.fs (never webdataset's gopen, which runs ``pipe:``
    URLs as shell commands). Members are screened by name and size before they are read.
    """
    loc = storage.locate(path)
    try:
        with loc.fs.open_input_stream(loc.path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                pattern = _FOURIER_MEMBER if key == FOURIER_KEY else _SAMPLE_MEMBER
                if ext is None or not pattern.match(ext) or info.size > max_member_bytes:
                    why = "too large" if ext and pattern.match(ext) else "not a .npy/.json/.mjpeg member"
                    stats.refused_members.append(f"{path}:{info.name} ({why})")
                    log.warning("refused member %s in %s: %s", info.name, path, why)
                    continue
                yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": path}
    except (tarfile.TarError, OSError, EOFError) as err:
        stats.bad_shards.append(path)
        log.warning("skipping the rest of corrupt shard %s: %s", path, err)
    yield {}  # webdataset's end-of-shard marker: samples never span shards


def _decode(raw: dict, stats: ReadStats, decode_frames: bool) -> dict | None:
    name = f"{raw['__url__']}:{raw['__key__']}"
    try:
        meta = json.loads(raw["json"])
        sample = {"__key__": raw["__key__"], "__shard__": raw["__url__"], "meta": meta,
                  "audio": load_npy(raw["audio.npy"], name + ".audio.npy")}
        if "video.npy" in raw:
            sample["video"] = load_npy(raw["video.npy"], name + ".video.npy")
        else:
            frames = split_frames(raw["video.mjpeg"], meta["video"]["frame_bytes"], meta["video"]["frames"], name)
            sample["video" if decode_frames else "video_jpeg"] = (
                decode_jpeg_frames(frames) if decode_frames else frames)
        return sample
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        stats.incomplete_samples.append(name)
        log.warning("skipping sample %s: %s", name, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def iter_samples(
    paths: Iterable[str],
    *,
    decode_frames: bool = True,
    stats: ReadStats | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[dict]:
    """Yield each sample of the given shards, in order, as a dict:

    ``__key__``, ``__shard__``, ``meta`` (the JSON), ``audio`` (stored array) and ``video``
    (uint8 frames x H x W x 3). With ``decode_frames=False`` JPEG-encoded video comes as
    ``video_jpeg`` (a list of per-frame JPEG buffers) so a reader can decode only the frames it uses.
    The ``__fourier__`` entry is never yielded (see ``read_fourier``). Corrupt shards and
    incomplete samples are skipped with a warning and counted in ``stats``.
    """
    stats = stats if stats is not None else ReadStats()

    def members():
        for path in paths:
            stats.shards += 1
            yield from _members(path, stats, max_member_bytes)

    for raw in group_by_keys(members(), handler=_warn_and_continue):
        if raw["__key__"] == FOURIER_KEY:
            continue
        sample = _decode(raw, stats, decode_frames)
        if sample is not None:
            stats.samples += 1
            yield sample


def _warn_and_continue(err: Exception) -> bool:
    log.warning("skipping a malformed member: %s", err)
    return True


def read_fourier(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The shard's ``__fourier__`` entry: (modality tags by name, float32 features by name)."""
    stats = ReadStats()
    entry: dict[str, bytes] = {}
    for member in _members(path, stats, MAX_MEMBER_BYTES):
        if not member or base_plus_ext(member["fname"])[0] != FOURIER_KEY:
            break
        entry[base_plus_ext(member["fname"])[1]] = member["data"]
    if "json" not in entry:
        raise ShardFormatError(f"{path}: no {FOURIER_KEY} entry at the start of the shard")
    header = json.loads(entry["json"])
    tags = header["modalities"]
    return tags, {name: load_npy(entry[f"{name}.npy"], f"{path}:{name}") for name in tags}
