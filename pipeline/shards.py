"""The shard format, writer and reader side by side (schema version ``SCHEMA_VERSION``).

A shard is a POSIX tar file. Its first entry has the key ``__fourier__`` and holds, per
modality, the Fourier position features of the recipe's window grid, once per shard:

    __fourier__.json              {"schema_version", "modalities": {name: tag}} (tag: see
                                  pipeline.modality.tags: name, id, grid, Fourier spec)
    __fourier__.<name>.npy        float32 (num_tokens, fourier_channels) for each modality

Then one sample per clip, members named ``<key>.<ext>`` (keys hold no dots, since webdataset
cuts keys at the first dot), one member per stored modality (``pipeline.modality``):

    <key>.json                    metadata: key, ytid, start/end seconds, labels (class
                                  indices), source, the modality tags, and per modality
                                  ``has_<name>``, its true length ``<name>_<unit>``,
                                  ``<name>_padded`` and its record ``<name>: {...}``
    <key>.<name>.npy              an array: audio int16 (samples,) waveform or float16
                                  (frames, n_mels) log-mel; video uint8 (frames, size, size, 3)
                                  [video encoding "raw"]
    <key>.<name>.mjpeg            JPEG frames back to back (a Motion-JPEG elementary stream);
                                  json ``<name>.frames`` and ``<name>.frame_bytes`` give their
                                  count and each one's length [video encoding "jpeg"]

A recipe stores only its modalities: an audio-only dataset has no video member.

Members are only ``.npy`` (read with allow_pickle=False after the header's shape is checked
against the member's size), ``.json`` and ``.mjpeg``. The reader refuses every other member
unread, so nothing in a shard is ever unpickled or executed. Tar headers (POSIX pax, so long keys
fit) carry fixed mtime/owner so a rerun writes byte-identical shards.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys

from pipeline import batch_memory, storage

# 2: a clip's JPEG frames in one .mjpeg member (1 had one .jpg member per frame: 250 tar headers
# per 10 s clip, and tar parsing cost more than decoding the frames a window uses).
SCHEMA_VERSION = 2
FOURIER_KEY = "__fourier__"
MAX_MEMBER_BYTES = 256 << 20
_SAMPLE_MEMBER = re.compile(r"^(json|[a-z][a-z0-9_]*\.(npy|mjpeg))$")
_FOURIER_MEMBER = re.compile(r"^(json|[a-z][a-z0-9_]*\.npy)$")
log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One clip as stored: what the writer takes and the reader yields.

    ``content`` holds each modality's stored content by name: an array, or a list of JPEG frames
    (bytes when written; zero-copy memoryviews when read, or one decoded uint8 array with
    ``decode_frames``).
    """

    key: str
    meta: dict
    content: dict[str, np.ndarray | list]
    shard: str | None = None  # the shard it was read from


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


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order: the JSON, then each modality's content."""
    meta = dict(sample.meta, key=sample.key, schema_version=SCHEMA_VERSION)
    members = []
    for name, content in sample.content.items():
        if isinstance(content, np.ndarray):
            members.append((f"{name}.npy", _npy_bytes(content)))
        else:
            meta[name] = dict(meta.get(name, {}), frames=len(content), frame_bytes=[len(f) for f in content])
            members.append((f"{name}.mjpeg", b"".join(content)))
    members.insert(0, ("json", json.dumps(meta, sort_keys=True).encode()))
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
    with storage.atomic_output(location.fs, location.join(name)) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: names past 100 bytes
            for members in [fourier, *samples]:
                for member_name, data in members:
                    info = tarfile.TarInfo(member_name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))
        return f.tell()  # the tar closed, before atomic_output moves it into place


# ---------------------------------------------------------------- reading


# What a reader skips, by kind: the ReadStats lists that ``ReadStats.skipped`` counts.
SKIPPED = ("bad_shards", "refused_members", "incomplete_samples")


@dataclass
class ReadStats:
    """What a reader read and skipped; training records the skips (``skipped``) per step."""

    shards: int = 0
    samples: int = 0
    bad_shards: list[str] = field(default_factory=list)
    refused_members: list[str] = field(default_factory=list)
    incomplete_samples: list[str] = field(default_factory=list)

    def skipped(self) -> dict[str, int]:
        """How many of each kind in ``SKIPPED`` the reader skipped."""
        return {kind: len(getattr(self, kind)) for kind in SKIPPED}

    def take(self) -> ReadStats:
        """Everything counted so far, handed over; this one counts on from zero (a reader keeps it)."""
        taken = ReadStats(self.shards, self.samples, self.bad_shards, self.refused_members, self.incomplete_samples)
        self.shards = self.samples = 0
        self.bad_shards, self.refused_members, self.incomplete_samples = [], [], []
        return taken


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
        raise ShardFormatError(f"{name}: the .mjpeg member holds {len(stream)} bytes, the JSON lists "
                               f"{len(frame_bytes)} frames of {sum(frame_bytes)} bytes for {frames} frames")
    view = memoryview(stream)
    return [view[a:b] for a, b in itertools.pairwise(itertools.accumulate(frame_bytes, initial=0))]


def decode_jpeg_frames(frames: Sequence[bytes | memoryview]) -> np.ndarray:
    """uint8 (frames, H, W, 3) from JPEG bytes (Pillow, libjpeg-turbo; Pillow's
    decompression-bomb limit applies to hostile headers)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in frames])


@dataclass
class EncodedFrames:
    """A batch of windows whose frames are still JPEG, as the loader hands them to the training step:
    decoding there, in batches on the worker's device, is what lets a GPU node keep up.

    The frames lie end to end in one buffer, so a batch crosses the DataLoader's process boundary and
    is pinned as one tensor, not one per frame."""

    data: torch.Tensor  # uint8 (total bytes,): every frame's JPEG, window-major
    offsets: torch.Tensor  # int64 (windows x frames + 1,): frame i is data[offsets[i]:offsets[i + 1]]
    shape: tuple[int, ...]  # one decoded window: (frames, height, width, 3)

    @classmethod
    def join(cls, windows: Sequence[Sequence[bytes]], shape: tuple[int, ...]) -> EncodedFrames:
        """One batch from each window's frames (``shape[0]`` JPEGs each; an empty one does not decode)."""
        frames = [f for w in windows for f in w]
        offsets = np.zeros(len(frames) + 1, np.int64)
        np.cumsum([len(f) for f in frames], out=offsets[1:])
        data = batch_memory.concatenate([np.frombuffer(f, np.uint8) for f in frames], np.uint8)
        return cls(data, torch.from_numpy(offsets), shape)

    @property
    def frames(self) -> list[torch.Tensor]:
        """Each frame's JPEG as a 1-D uint8 view of ``data``."""
        at = self.offsets.tolist()
        return [self.data[a:b] for a, b in itertools.pairwise(at)]

    def __len__(self) -> int:
        """The number of windows, as ``len`` of a decoded batch's tensor gives it."""
        return (len(self.offsets) - 1) // self.shape[0]

    def pin_memory(self) -> EncodedFrames:
        return EncodedFrames(self.data.pin_memory(), self.offsets, self.shape)

    def windows(self, start: int, stop: int) -> EncodedFrames:
        offsets = self.offsets[start * self.shape[0]:stop * self.shape[0] + 1]
        return EncodedFrames(self.data[int(offsets[0]):int(offsets[-1])], offsets - offsets[0], self.shape)

    def decode(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (windows, *shape) on ``device``, bool (windows,) decoded whole): a window whose frame
        does not decode or has another size is zeros and False, as a missing stream would be."""
        count, per, frames = len(self), self.shape[0], self.frames
        try:  # one batched call on CPU and CUDA alike (nvJPEG on a GPU)
            images = _decode_jpeg(frames, device)
        except RuntimeError:
            images = [_decode_or_none(f, device) for f in frames]
        out = torch.zeros((count, *self.shape), dtype=torch.uint8, device=device)
        ok = torch.zeros(count, dtype=torch.bool)
        for w in range(count):
            window = images[w * per:(w + 1) * per]
            if all(i is not None and i.shape == (3, *self.shape[1:3]) for i in window):
                out[w] = torch.stack(window).permute(0, 2, 3, 1)
                ok[w] = True
            else:
                log.warning("a video window does not decode; treated as absent")
        return out, ok.to(device)


def _decode_jpeg(frames, device):
    """torchvision's decoder (a list of frames, or one), imported here: importing torchvision takes about
    2 s (it loads its model zoo), which every process that reads shards would pay; only JPEG windows need it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(frames, mode=ImageReadMode.RGB, device=device)


def _decode_or_none(frame, device):
    try:
        return _decode_jpeg(frame, device)
    except RuntimeError:
        return None


def _members(path: str, stats: ReadStats, max_member_bytes: int, *, fourier: bool = False) -> Iterator[dict]:
    """Tar members as webdataset's ``{"fname", "data", "__url__"}`` dicts, then an EOF marker.

    Streams are opened through pyarrow.fs (never webdataset's gopen, which runs ``pipe:``
    URLs as shell commands). Members are screened by name and size before they are read. The
    ``__fourier__`` entry's members are read only with ``fourier``: a sample reader passes over
    them (5 MB at the audioset recipe) without holding them in memory.
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
                    log.warning("refused member %s in %s: %s", info.name, storage.shown(path), why)
                    continue
                if key != FOURIER_KEY or fourier:
                    yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": path}
    except (tarfile.TarError, OSError, EOFError) as err:
        stats.bad_shards.append(path)
        log.warning("skipping the rest of corrupt shard %s: %s", storage.shown(path), err)
    yield {}  # webdataset's end-of-shard marker: samples never span shards


def _decode(raw: dict, stats: ReadStats, decode_frames: bool) -> Sample | None:
    name = f"{raw['__url__']}:{raw['__key__']}"
    try:
        meta = json.loads(raw["json"])
        content = {}
        for ext, data in raw.items():
            modality, _, kind = ext.partition(".")
            if kind == "npy":
                content[modality] = load_npy(data, f"{name}.{ext}")
            elif kind == "mjpeg":
                record = meta[modality]
                frames = split_frames(data, record["frame_bytes"], record["frames"], f"{name}.{ext}")
                content[modality] = decode_jpeg_frames(frames) if decode_frames else frames
        # Every modality the JSON declares (has_<name>) must be stored, or the sample is incomplete.
        if missing := [k[4:] for k in meta if k.startswith("has_") and k[4:] not in content]:
            raise ShardFormatError(f"no {missing[0]} member, though its JSON declares that modality")
        return Sample(raw["__key__"], meta, content, raw["__url__"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        stats.incomplete_samples.append(name)
        if isinstance(err, KeyError):
            why = "no .json member" if err.args[0] == "json" else f"its JSON lacks the field {err.args[0]!r}"
        else:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("skipping sample %s:%s: %s", storage.shown(raw["__url__"]), raw["__key__"], why)
        return None


def iter_samples(
    paths: Iterable[str],
    *,
    decode_frames: bool = True,
    stats: ReadStats | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[Sample]:
    """Yield each ``Sample`` of the given shards, in order.

    JPEG frames come decoded (uint8 frames x H x W x 3); with ``decode_frames=False`` they stay a
    list of per-frame JPEG buffers, so a reader can decode only the frames it uses.
    The ``__fourier__`` entry is never yielded (see ``read_fourier``). Corrupt shards and
    incomplete samples are skipped with a warning and counted in ``stats``.
    """
    stats = stats if stats is not None else ReadStats()

    def members():
        for path in paths:
            stats.shards += 1
            yield from _members(path, stats, max_member_bytes)

    for raw in group_by_keys(members(), handler=_warn_and_continue):
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
    for member in _members(path, stats, MAX_MEMBER_BYTES, fourier=True):
        if not member or base_plus_ext(member["fname"])[0] != FOURIER_KEY:
            break
        entry[base_plus_ext(member["fname"])[1]] = member["data"]
    if "json" not in entry:
        raise ShardFormatError(f"{path}: no {FOURIER_KEY} entry at the start of the shard")
    header = json.loads(entry["json"])
    tags = header["modalities"]
    return tags, {name: load_npy(entry[f"{name}.npy"], f"{path}:{name}") for name in tags}
