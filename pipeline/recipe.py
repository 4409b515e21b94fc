"""The data recipe: how clips are decoded, stored and windowed, and the record dataset.json keeps of it.

Each modality's fields live with its kind (``pipeline.video.VideoRecipe``,
``pipeline.audio.AudioRecipe``, or a custom kind's ``Recipe`` under ``data.custom.<name>``);
``recipe_record`` is what preprocessing writes and training compares against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.audio import AudioRecipe
from pipeline.modality import Modality, bind, recipe_sections, tags
from pipeline.video import VideoRecipe


class ConfigError(ValueError):
    """A config file, override or recipe that does not fit the schema; the message is one line."""


@dataclass
class DataConfig:
    """The preprocessing recipe; dataset.json records it and training checks against it."""

    segment_seconds: float = 10.0  # stored length of every sample (AudioSet segments are 10 s)
    video: VideoRecipe = field(default_factory=VideoRecipe)
    audio: AudioRecipe = field(default_factory=AudioRecipe)
    # Modalities of other kinds, by name: {kind: "registered name or module:Class", <its recipe fields>}.
    custom: dict[str, Any] = field(default_factory=dict)
    # Training clips with less real content are recorded as too_short. None: one model window, since a
    # shorter clip's every training window is mostly padding. Evaluation splits keep every clip that
    # decodes (padded and masked), so their mAP covers the whole list.
    min_seconds: float | None = None
    shard_size: int = 64  # clips per shard
    # Training splits: store this many windows of each clip, each its own sample, instead of the whole
    # segment (0), so that a training sample reads one window, not ten seconds (docs/shards.md). Their
    # starts are drawn on the window grid from (window_seed, the clip's key): a new seed regenerates
    # them. Evaluation splits always store whole segments, for their evenly spaced crops.
    train_windows: int = 0
    window_seed: int = 0
    # "shard": the trainer reads the features the shards carry, checks them against the model's own
    # fourier_features and feeds them to the model; "device": the model computes them (identical values).
    fourier_source: str = "shard"
    decode_timeout_s: float = 120.0  # a clip taking longer (from its start, not its queueing) is a failure
    max_in_flight: int = 0  # clip tasks in flight; 0 = the cluster's CPUs
    # Clips one task encodes, in a row: the driver's cost per task (submission, status, Ray's messages)
    # is shared by that many rows. A hung clip's task is cancelled and its other clips run again.
    clips_per_task: int = 4


def modalities_of(data: DataConfig, names: Sequence[str]) -> list[Modality]:
    """The named modalities bound to ``data``; ConfigError for one without a recipe or kind."""
    try:
        return bind(data, names)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_recipe(data: DataConfig, modalities: Sequence[Modality]) -> None:
    """The recipe rules the schema's types cannot express; ConfigError with the first broken one."""
    names = [m.name for m in modalities]
    checks = [(bool(names) and len(set(names)) == len(names), "inputs.modalities must name each modality once"),
              (data.fourier_source in ("shard", "device"), "data.fourier_source must be 'shard' or 'device'"),
              (data.train_windows >= 0, "data.train_windows must be >= 0 (0: store whole segments)"),
              (data.clips_per_task >= 1, "data.clips_per_task must be >= 1")]
    for m in modalities:
        checks += m.checks()
        checks.append((data.segment_seconds >= m.window_s - 1e-6,
                       f"data.segment_seconds is shorter than one {m.name} window"))
    checks.append((all(abs(m.window_s - modalities[0].window_s) < 1e-6 for m in modalities),
                   "one window must last as long in every modality, but it lasts "
                   + ", ".join(f"{m.window_s:g} s in {m.name}" for m in modalities)))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def recipe_record(data: DataConfig, modalities: Sequence[Modality]) -> dict:
    """The recipe as dataset.json records it and training compares it."""
    return {"segment_seconds": data.segment_seconds, **recipe_sections(data, modalities),
            "fourier_source": data.fourier_source, "modalities": tags(modalities),
            "train_windows": data.train_windows, "window_seed": data.window_seed}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(held: dict, data: DataConfig, modalities: Sequence[Modality]) -> list[tuple[str, object, object]]:
    """(field, dataset's value, config's value) where the config's recipe differs from a recorded one.

    Fields marked ``training_may_differ`` (storage choices, the window length, which the grids pin
    where it matters), ``fourier_source`` and how training samples were stored (whole segments or
    windows: the loader reads either) are not compared. A field the record lacks (a dataset
    written before the field existed) counts as holding its default.
    """
    want, have = _flatten(recipe_record(data, modalities)), _flatten(held)
    defaults = _flatten({m.name: asdict(type(m.recipe)()) for m in modalities})
    free = {f"{m.name}.{f.name}" for m in modalities for f in fields(m.recipe) if f.metadata.get("training_may_differ")}
    free.update(("fourier_source", "train_windows", "window_seed"))
    return [(key, have.get(key, defaults.get(key)), value) for key, value in want.items()
            if key not in free and have.get(key, defaults.get(key)) != value]
