"""Helpers shared by the benchmark scripts: the cached clip set, recipes, timing and tables.

The clips are the project's own synthetic textured clips (``pipeline.synthetic.make_dataset``
with ``textured=True``: 640x360 H.264 at 25 fps, 48 kHz stereo AAC, 10 s), written once into
``<work>/clips/`` and read back through the real sources stage (``pipeline.labels``,
``pipeline.audioset``, ``pipeline.media``), so every benchmark sees the same ``ClipRow`` objects
that ``jobs/preprocess.py`` would.

Every timing records both wall-clock and process CPU seconds (all threads of the process). On a
shared machine the CPU seconds are the steadier measure of "per core" cost; wall-clock is what
parallel speed-ups need. The 1-minute load average is printed with each measurement so a busy
machine shows in the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from perceiver.config import Config, load_config
from pipeline.audioset import read_segments
from pipeline.labels import LabelClass, load_labels
from pipeline.media import resolve_media
from pipeline.modality import PAPER_MODALITIES, Modality
from pipeline.recipe import DataConfig, modalities_of
from pipeline.records import ClipRow
from pipeline.synthetic import TEXTURED, make_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPES = ("tiny", "audioset")
CLIP_SECONDS = 10.0


def add_common_args(parser: argparse.ArgumentParser, default_clips: int) -> None:
    """``--work``, ``--clips`` and ``--quick`` (half the clips, fewer repeats)."""
    parser.add_argument("--work", type=Path, default=ROOT / ".bench",
                        help="cache and scratch folder (git-ignored; default: .bench/ in the repo)")
    parser.add_argument("--clips", type=int, default=default_clips, help="textured 10 s clips to use")
    parser.add_argument("--quick", action="store_true", help="half the clips and fewer repeats (a smoke run)")


def clip_count(args: argparse.Namespace) -> int:
    return max(2, args.clips // 2) if args.quick else args.clips


def recipe(name: str) -> Config:
    """The config of ``configs/<name>.yaml``, loaded and validated by the project's loader."""
    return load_config(CONFIGS / f"{name}.yaml")


def bound_modalities(data: DataConfig, names: Sequence[str] = PAPER_MODALITIES) -> tuple[Modality, ...]:
    """The modalities ``names`` bound to ``data`` (both recipes' ``inputs.modalities``: audio, video)."""
    return tuple(modalities_of(data, names))


@dataclass(frozen=True)
class ClipSet:
    """A synthetic AudioSet-style folder of textured clips and its rows, as the sources stage reads them."""

    root: Path
    segments_csv: Path
    labels_csv: Path
    media_dir: Path
    rows: list[ClipRow]
    classes: list[LabelClass]


def textured_clips(work: Path, count: int) -> ClipSet:
    """``count`` textured 10 s clips under ``work/clips/``, written on first use (about 5 s a clip)."""
    root = work / "clips" / f"textured-10s-{count}"
    labels_csv = root / "class_labels_indices.csv"  # make_dataset writes it last: its presence means complete
    if not labels_csv.exists():
        print(f"writing {count} textured {CLIP_SECONDS:.0f} s clips to {root} (cached for later runs) ...",
              flush=True)
        began = time.perf_counter()
        make_dataset(root, num_train=count, num_eval=0, seconds=CLIP_SECONDS, textured=True)
        print(f"  done in {time.perf_counter() - began:.0f} s", flush=True)
    classes = load_labels(labels_csv)
    segments_csv = root / "balanced_train_segments.csv"
    rows, failures = read_segments([segments_csv], classes)
    resolved, missing = resolve_media(rows, root / "clips")
    if failures or missing or len(resolved) != count:
        raise RuntimeError(f"{root}: {len(resolved)} of {count} clips usable; delete the folder to rewrite it")
    return ClipSet(root, segments_csv, labels_csv, root / "clips", resolved, classes)


def clip_format() -> str:
    f = TEXTURED
    return (f"{f.width}x{f.height} H.264 {f.fps:g} fps, {f.sample_rate // 1000} kHz "
            f"{'stereo' if f.audio_channels == 2 else 'mono'} AAC, {CLIP_SECONDS:g} s")


# ---------------------------------------------------------------- timing


def load1() -> float:
    return os.getloadavg()[0]


@dataclass
class Timing:
    """Wall and process-CPU seconds of one block, with the 1-minute load average around it."""

    wall: float = 0.0
    cpu: float = 0.0
    load_before: float | None = None
    load_after: float | None = None

    def __iadd__(self, other: Timing) -> Timing:
        """Accumulate another block: times add up, the load spans from the first block to the last."""
        if self.load_before is None:
            self.load_before = other.load_before
        self.wall += other.wall
        self.cpu += other.cpu
        self.load_after = other.load_after
        return self


@contextmanager
def timed() -> Iterator[Timing]:
    """Time the block: ``with timed() as t: ...`` then read ``t.wall`` and ``t.cpu``."""
    t = Timing(load_before=load1())
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield t
    finally:
        t.wall, t.cpu = time.perf_counter() - wall, time.process_time() - cpu
        t.load_after = load1()


# ---------------------------------------------------------------- output


def machine_summary() -> str:
    """One paragraph naming the machine and library versions, for the top of each report."""
    import decord
    import PIL
    import ray
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return (f"machine: {model}, {os.cpu_count()} CPUs visible, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), Pillow {PIL.__version__}, "
            f"decord {decord.__version__}, ray {ray.__version__}; load average now "
            + " / ".join(f"{x:.2f}" for x in os.getloadavg()))


def print_table(title: str, rows: Sequence[dict], notes: Sequence[str] = ()) -> None:
    """A titled, aligned table (pandas) with optional notes under it."""
    print(f"\n== {title}")
    if rows:
        print(pd.DataFrame(list(rows)).to_string(index=False))
    for note in notes:
        print(f"   {note}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def mb(n: float) -> float:
    """Bytes to decimal megabytes (10^6), the unit of the storage budget."""
    return n / 1e6
