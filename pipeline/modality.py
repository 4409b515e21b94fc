"""What a modality is, and the registry that finds one by name.

A modality *kind* (``Video``, ``RawAudio``, ``LogMelAudio``, or a class outside the package) is
one object that knows everything the data path does with that modality, from the decoded clip to
the model's tokens: its recipe fields, the streams it is decoded from, what it stores (an array
becomes ``<key>.<name>.npy``, JPEG frames ``<key>.<name>.mjpeg``), its presence as an extent in
time, how a training window is cut, how it becomes tokens, and its Fourier grid (``Modality``).
Preprocessing, the shard reader, the loader, the input array and evaluation iterate over the
configured modalities (``bind``) and never name one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from pipeline import batch_memory
from pipeline.fourier import fourier_features
from pipeline.shards import Sample

# The paper's input modalities, in its concatenation order: the default of inputs.modalities.
PAPER_MODALITIES = ("audio", "video")

# Field metadata of recipe fields that training may set otherwise than the shards were made with:
# storage choices, and the window length (the cut happens at training time; the token grids in the
# modality tags pin it where it matters).
TRAINING_MAY_DIFFER = {"training_may_differ": True}

# Content a modality stores for one clip: an array (a .npy member) or JPEG frames (a .mjpeg member).
Content = np.ndarray | list


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality is laid out as tokens."""

    name: str  # the modality's name in configs, shards and batches
    content_channels: int  # C_m, values per patch
    grid: tuple[int, ...]  # index grid of patches, e.g. (T', H', W') or (T',)
    num_bands: int  # Fourier bands per axis
    max_resolution: tuple[int, ...] | None = None  # None: the grid itself

    @property
    def num_tokens(self) -> int:
        """M_m = prod(grid)."""
        return math.prod(self.grid)

    @property
    def fourier_channels(self) -> int:
        """F_m = len(grid) * (2 * num_bands + 1)."""
        return len(self.grid) * (2 * self.num_bands + 1)

    def position_features(self) -> Tensor:
        """(M_m, F_m) float32 Fourier features of the grid, rows in row-major grid order."""
        return fourier_features(self.grid, self.num_bands, self.max_resolution)

    def tag(self, tag_id: int) -> dict:
        """The JSON tag that names the modality's tokens in shards and dataset.json."""
        return {"name": self.name, "id": tag_id, "grid": list(self.grid), "content_channels": self.content_channels,
                "fourier": {"num_bands": self.num_bands, "max_resolution": list(self.max_resolution or self.grid),
                            "concat_pos": True, "sine_only": False, "channels": self.fourier_channels}}


class Modality:
    """One modality kind bound to its recipe: ``name`` (in configs, shards, batches), ``recipe`` and ``data``.

    A kind sets the class attributes below and implements:

    - ``step_s``: seconds between possible window starts (video 1/fps, raw audio 1/rate, log-mel hop/rate);
    - ``window_units``: window starts in one model window; ``window_shape``: one window's array shape;
    - ``spec``: its ``ModalitySpec`` (patch grid, content width, Fourier bands); the grid's first axis is
      time, its slots spanning the window evenly;
    - ``real_units(clip)``: (the file has its stream, first unit of real content, end of real content) of
      a ``DecodedClip``;
    - ``encode(clip)``: (stored content, its ``meta[name]`` record, holding the stored length as ``[unit]``);
    - ``window(content, meta, start_s)``: the window from ``start_s`` seconds, an array of ``window_shape``
      (ValueError, or OSError and SyntaxError from a damaged JPEG, when unusable);
    - ``tokens(windows)``: (B, *window_shape) windows on the device -> (B, M_m, C_m) float patch tokens.
    """

    kind: ClassVar[str]  # registered name
    tag_id: ClassVar[int]  # stable id in shard tags: a shard written today means the same next year
    streams: ClassVar[tuple[str, ...]]  # container streams decoded for it
    unit: ClassVar[str]  # what its lengths count ("frames", "samples"): meta["<name>_<unit>"]
    Recipe: ClassVar[type]
    dropout: ClassVar[bool] = False  # whether whole-modality dropout (the paper's video dropout) applies
    # What a window holds from the shard to the device (``prepare`` turns it into model values there):
    # batches in the loader's buffers and queues, and copies to the device, stay as small as stored.
    dtype: ClassVar[type] = np.float32

    def __init__(self, name: str, recipe: Any, data: Any):
        self.name, self.recipe, self.data = name, recipe, data

    @property
    def unit_s(self) -> float:
        """Seconds per unit of its true and stored lengths."""
        return self.step_s

    @property
    def window_s(self) -> float:
        return self.window_units * self.step_s

    @property
    def length_key(self) -> str:
        return f"{self.name}_{self.unit}"

    def checks(self) -> list[tuple[bool, str]]:
        """(holds, message) pairs of recipe rules its types cannot express."""
        return []

    def meta_fields(self, clip: Any, record: dict) -> dict:
        """The sample metadata of this modality: presence, true length, padding and its record."""
        has, first, end = self.real_units(clip)
        return {f"has_{self.name}": has, f"{self.name}_first": first, self.length_key: end,
                f"{self.name}_padded": first > 0 or end < record[self.unit], self.name: record}

    def real_span(self, meta: dict) -> tuple[float, float]:
        """(first, end) seconds of real content from the clip's start; (0, 0) when the clip lacks it.

        Before the decoder put every stream on one clock, real content always began at 0 (a sample
        without ``<name>_first``)."""
        if not meta[f"has_{self.name}"]:
            return 0.0, 0.0
        return meta.get(f"{self.name}_first", 0) * self.unit_s, meta[self.length_key] * self.unit_s

    def token_mask(self, meta: dict, start_s: float) -> np.ndarray:
        """(M_m,) bool: the tokens of the window from ``start_s`` whose time slot overlaps real content."""
        first, end = self.real_span(meta)
        slots = self.spec.grid[0]
        edges = start_s + self.window_s * np.arange(slots + 1) / slots
        real = (edges[:-1] < end - 1e-9) & (edges[1:] > first + 1e-9)
        return np.repeat(real, self.spec.num_tokens // slots)

    def stored_seconds(self, meta: dict) -> float:
        return meta[self.name][self.unit] * self.unit_s

    def blank(self) -> np.ndarray:
        """An absent window: what a missing or damaged modality becomes (its tokens are zeroed anyway)."""
        return np.zeros(self.window_shape, self.dtype)

    def collate(self, windows: list) -> Any:
        """A batch's windows as the loader hands them on: one host tensor, or what ``Batch.to`` decodes."""
        return batch_memory.stack(windows)

    def prepare(self, windows: Tensor, *, generator: torch.Generator | None = None, augment: Any = None) -> Tensor:
        """The batch's windows on the device made ready for ``tokens``: the model's size and values, and,
        in training (``augment`` given), the kind's augmentation drawn from ``generator``."""
        return windows


_REGISTRY: dict[str, type[Modality]] = {}


def register(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a kind available by its ``kind`` name."""
    _REGISTRY[cls.kind] = cls
    return cls


def kind_class(name: str) -> type[Modality]:
    """A registered kind, or one named by import path ``package.module:Class``."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr) if attr else None
    except (ImportError, AttributeError) as err:
        raise ValueError(f"modality kind {name!r} cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Modality)):
        raise ValueError(f"modality kind {name!r}: expected a registered kind ({', '.join(sorted(_REGISTRY))}) "
                         "or an import path module:Class of a pipeline.modality.Modality subclass")
    return cls


def _load_builtin() -> None:
    importlib.import_module("pipeline.video")
    importlib.import_module("pipeline.audio")


def bind(data: Any, names: Sequence[str]) -> list[Modality]:
    """The configured modalities, in ``names`` order, each bound to its recipe.

    A name that is a field of ``data`` (``video``, ``audio``) uses that section: its ``kind`` field
    if it has one, else the kind of that name. Any other name needs ``data.custom.<name>`` with a
    ``kind`` (registered name or import path) and the kind's recipe fields.
    """
    out = []
    for name in names:
        if hasattr(data, name) and is_dataclass(getattr(data, name)):
            recipe = getattr(data, name)
            cls = kind_class(getattr(recipe, "kind", name))
        elif name in data.custom:
            spec = dict(data.custom[name])
            if "kind" not in spec:
                raise ValueError(f"data.custom.{name} needs a kind (a registered name or module:Class)")
            cls = kind_class(spec.pop("kind"))
            known = {f.name for f in fields(cls.Recipe)}
            if unknown := sorted(set(spec) - known):
                raise ValueError(f"data.custom.{name}.{unknown[0]} is not a field of {cls.__name__}'s recipe "
                                 f"({', '.join(sorted(known))})")
            recipe = cls.Recipe(**spec)
        else:
            raise ValueError(f"modality {name!r} has no recipe: use video or audio, or define data.custom.{name}")
        out.append(cls(name, recipe, data))
    return out


def recipe_sections(data: Any, modalities: Sequence[Modality]) -> dict[str, dict]:
    """Each modality's recipe as a plain dict, under its section name (custom ones with their kind)."""
    out = {}
    for m in modalities:
        custom = data.custom.get(m.name)
        out[m.name] = {"kind": custom["kind"], **asdict(m.recipe)} if custom else asdict(m.recipe)
    return out


def tags(modalities: Sequence[Modality]) -> dict[str, dict]:
    """The shards' modality tags, by name: produced here and nowhere else."""
    return {m.name: m.spec.tag(m.tag_id) for m in modalities}


def clip_sample(key: str, clip: Any, modalities: Sequence[Modality], meta: dict) -> Sample:
    """A decoded clip (``pipeline.decode.DecodedClip``) as the sample a shard stores: ``meta`` plus each
    modality's content and record."""
    meta, content = dict(meta), {}
    for m in modalities:
        content[m.name], record = m.encode(clip)
        meta.update(m.meta_fields(clip, record))
    return Sample(key, meta, content)


def window_starts(real_s: float, stored_s: float, modalities: Sequence[Modality], count: int | None,
                  rng: np.random.Generator | None) -> list[float]:
    """Start times (seconds) of ``count`` windows in a clip whose real content ends at ``real_s``
    and whose stored content lasts ``stored_s``.

    Random (``rng`` given) or evenly spaced from start to end (``rng`` None), on the coarsest
    modality's grid of window starts, so every modality starts on a whole unit. A window may run
    into padding only when the clip is shorter than a window.
    """
    step = max(m.step_s for m in modalities)
    width = round(modalities[0].window_s / step)
    last = min(max(0, math.floor(real_s / step + 1e-6) - width), math.floor(stored_s / step + 1e-6) - width)
    if rng is not None:
        return [int(rng.integers(0, last + 1)) * step for _ in range(count or 1)]
    count = count or 1
    return [(round(i * last / (count - 1)) if count > 1 else last // 2) * step for i in range(count)]


def position_features(modalities: Sequence[Modality]) -> dict[str, np.ndarray]:
    """float32 (M_m, F_m) Fourier features per modality: the model's own function on the grid."""
    return {m.name: m.spec.position_features().numpy() for m in modalities}

