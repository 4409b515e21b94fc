"""Preprocessing cost on natural-looking clips: throughput per core, bytes per clip, Ray scaling.

Everything runs the project's own stages on synthetic textured 10 s clips (640x360 H.264 at
25 fps, 48 kHz stereo AAC; ``pipeline.synthetic``), cached under ``--work``:

1. clips/s per core of full preprocessing (``pipeline.encode.encode_clip``: decode, features,
   shard members) at the tiny and the audioset recipe, beside bare decoding
   (``pipeline.decode.decode_clip``: decord video, PyAV audio) on the same clips, with the split
   of the extra cost (audio features, shard members / JPEG encoding);
2. bytes per clip of each storage encoding at the audioset recipe (video raw uint8 or JPEG at
   several qualities, audio int16 or float16 log-mel), measured as the size of a real shard
   written by ``pipeline.shards.write_shard``, against the 4 MB per 10 s budget, and the
   highest JPEG quality that fits it;
3. read + decode throughput per core of each encoding: a shard read back with
   ``pipeline.shards.iter_samples`` and either every frame decoded or only one model
   window's frames (``perceiver.loader.crop_window``);
4. the ratio of full preprocessing to bare decoding (target >= 0.8 at the audioset recipe);
4b. ``decode_clip`` (both streams on the container's clock, PyAV audio, decord video) against a bare
   decord read of the same frames and audio written here (``decord.VideoReader`` + ``get_batch`` of
   the same frame indices, ``decord.AudioReader``), one process, alternating per clip (target:
   decode_clip >= 0.85x the bare read's clips per CPU second at the audioset recipe); and what one
   segment of a full video (``--full-videos``: decode_clip seeks to it) costs against a trimmed clip,
   beside the bare read of that segment (decord's AudioReader decodes the whole file's sound);
5. the real Ray path (``jobs/preprocess.py`` with an embedded local Ray, ``--address local``)
   with 1 and 2 clips in flight against 1 and 2 plain spawned processes running
   ``encode_clip`` and writing the same shard (target: Ray at 2 workers >= 0.9x two plain
   processes). Ray's cluster start-up is reported apart.

"Per core" figures divide by process CPU seconds (one process, torch at one thread, decord at
one thread), which stays steady when other work shares the machine; the Ray comparison needs
wall-clock time and prints the load average around it: rerun when the load was high.

    python benchmarks/preprocess.py            # 4-5 minutes on 2 cores (the first run also writes
                                               # the 16 clips, about 5 s each, and section 4b's
                                               # 60 s video, about 30 s)
    python benchmarks/preprocess.py --quick    # fewer clips and repeats (--skip-ray: no section 5)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# The project root, so `python benchmarks/preprocess.py` imports the project's packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    CONFIGS,
    RECIPES,
    ROOT,
    ClipSet,
    Timing,
    add_common_args,
    bound_modalities,
    clip_count,
    clip_format,
    load1,
    machine_summary,
    mb,
    print_table,
    recipe,
    textured_clips,
    timed,
    verdict,
)
from perceiver.config import DataConfig  # noqa: E402
from perceiver.loader import crop_window, window_starts  # noqa: E402
from pipeline import modality, shards, storage  # noqa: E402
from pipeline.decode import DecodedClip, decode_clip  # noqa: E402
from pipeline.encode import ClipResult, EncodeOptions, encode_clip  # noqa: E402
from pipeline.modality import Modality  # noqa: E402
from pipeline.records import ClipRow  # noqa: E402
from pipeline.synthetic import TEXTURED, write_clip  # noqa: E402

BUDGET_BYTES = 4_000_000  # per 10 s clip, decimal megabytes
RATIO_TARGET = 0.8  # full preprocessing / bare decoding throughput at the audioset recipe
RAY_TARGET = 0.9  # Ray with 2 workers / two plain processes
BARE_TARGET = 0.85  # decode_clip / a bare decord read of the same frames and audio, audioset recipe


# ---------------------------------------------------------------- 1 and 4: per-core throughput


@dataclass
class StageCosts:
    """Summed costs over the clips of one recipe."""

    clips: int = 0
    decode: Timing = dataclasses.field(default_factory=Timing)  # decode_clip alone
    encode: Timing = dataclasses.field(default_factory=Timing)  # encode_clip: the full preprocessing
    audio: Timing = dataclasses.field(default_factory=Timing)  # the audio modality's encode
    members: Timing = dataclasses.field(default_factory=Timing)  # the video's encode (JPEG) + shards.sample_members


def decode_args(data: DataConfig, mods: Sequence[Modality], start: float | None = None) -> dict:
    """decode_clip's arguments for a clip at a recipe, as encode_clip's decoder (decode_at_recipe) passes
    them (``start`` None: a trimmed clip)."""
    streams = {s for m in mods for s in m.streams}
    return dict(start=start, seconds=data.segment_seconds, fps=data.video.fps if "video" in streams else None,
                size=data.video.size, sample_rate=data.audio.sample_rate if "audio" in streams else None)


def measure_stages(rows: Sequence[ClipRow], data: DataConfig) -> tuple[StageCosts, dict[str, DecodedClip]]:
    """Time bare decoding and full preprocessing of every clip, alternating their order per clip.

    Also times the two stages encode_clip adds to decoding, on the decoded clip. Returns the
    costs and the decoded clips (by path), which the storage measurements reuse.
    """
    mods = bound_modalities(data)
    options = EncodeOptions(data, mods)
    tags = modality.tags(mods)
    audio_mod = next(m for m in mods if m.name == "audio")
    encode_clip(rows[0], options, tags)  # warm-up: imports, the mel filter bank, decord's first open
    costs, decoded = StageCosts(), {}
    for i, row in enumerate(rows):
        def bare(row: ClipRow = row) -> None:
            with timed() as t:
                decoded[row.path] = decode_clip(row.path, **decode_args(data, mods))
            costs.decode += t

        def full(row: ClipRow = row) -> None:
            with timed() as t:
                result = encode_clip(row, options, tags)
            if result.failure:
                raise RuntimeError(f"encode_clip failed: {result.failure}")
            costs.encode += t

        for step in (bare, full) if i % 2 == 0 else (full, bare):
            step()
        clip = decoded[row.path]
        with timed() as t:
            audio, _ = audio_mod.encode(clip)
        costs.audio += t
        with timed() as t:
            content = {m.name: audio if m is audio_mod else m.encode(clip)[0] for m in mods}
            shards.sample_members(shards.Sample(row.key, {}, content))
        costs.members += t
        costs.clips += 1
    return costs, decoded


# ---------------------------------------------------------------- 4b: decode_clip against a bare decord read


def bare_decord_read(path: str, data: DataConfig, width: int, height: int,
                     start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The frames and the sound of ``data.segment_seconds`` from ``start``, read with decord alone: what
    decode_clip does at its core, without probing, timestamps on the container's clock or PyAV.

    ``width`` x ``height`` is the source's coded size (known here; decode_clip probes it). Frames are
    the nearest to each instant of the recipe's fps, decoded scaled with the shorter side at the
    recipe's size and centre-cropped; the sound is decord's mono downmix at the recipe's rate.
    """
    size, fps = data.video.size, data.video.fps
    scale = size / min(width, height)
    scaled_w, scaled_h = max(size, round(width * scale)), max(size, round(height * scale))
    reader = decord.VideoReader(path, num_threads=1, width=scaled_w, height=scaled_h)
    starts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64)
    times = start + np.arange(round(data.segment_seconds * fps)) / fps
    times = times[times < starts[-1] + 1 / fps]
    after = np.clip(np.searchsorted(starts, times), 0, len(starts) - 1)
    before = np.maximum(after - 1, 0)
    indices = np.where(np.abs(times - starts[before]) <= np.abs(starts[after] - times), before, after)
    top, left = (scaled_h - size) // 2, (scaled_w - size) // 2
    frames = reader.get_batch(indices.tolist()).asnumpy()[:, top:top + size, left:left + size]
    rate = data.audio.sample_rate
    sound = decord.AudioReader(path, sample_rate=rate, mono=True)[:].asnumpy()[0]
    first = round(start * rate)
    return frames, sound[first:first + round(data.segment_seconds * rate)]


@dataclass
class BareComparison:
    clips: int = 0
    decode: Timing = dataclasses.field(default_factory=Timing)  # decode_clip
    bare: Timing = dataclasses.field(default_factory=Timing)  # bare_decord_read
    max_frame_diff: float = 0.0  # mean absolute pixel difference of the two, worst clip
    sound_rms_ratio: float = 1.0  # RMS of decode_clip's sound / the bare read's, worst clip (|log|)


def compare_with_bare(rows: Sequence[ClipRow], data: DataConfig, repeats: int) -> BareComparison:
    """decode_clip and bare_decord_read of every clip, alternating which goes first."""
    mods = bound_modalities(data)
    size = {}
    for row in rows:  # the coded size the bare read needs, found outside the timed part
        with av.open(row.path) as container:
            ctx = container.streams.video[0].codec_context
            size[row.path] = (ctx.width, ctx.height)
    bare_decord_read(rows[0].path, data, *size[rows[0].path])  # warm-up
    decode_clip(rows[0].path, **decode_args(data, mods))
    result = BareComparison()
    for rep in range(repeats):
        for i, row in enumerate(rows):
            def ours(row: ClipRow = row) -> DecodedClip:
                with timed() as t:
                    clip = decode_clip(row.path, **decode_args(data, mods))
                result.decode += t
                return clip

            def bare(row: ClipRow = row) -> tuple[np.ndarray, np.ndarray]:
                with timed() as t:
                    got = bare_decord_read(row.path, data, *size[row.path])
                result.bare += t
                return got

            if (i + rep) % 2 == 0:
                clip, (frames, sound) = ours(), bare()
            else:
                (frames, sound), clip = bare(), ours()
            result.clips += 1
            n = min(len(frames), clip.video_frames)
            diff = float(np.abs(clip.video[:n].astype(np.int16) - frames[:n]).mean())
            result.max_frame_diff = max(result.max_frame_diff, diff)
            m = min(len(sound), clip.audio_samples)
            ratio = float(np.sqrt(np.mean(clip.audio[:m] ** 2) / max(np.mean(sound[:m] ** 2), 1e-12)))
            if abs(np.log(ratio)) > abs(np.log(result.sound_rms_ratio)):
                result.sound_rms_ratio = ratio
    return result


def full_video(work: Path, seconds: float, segment: float) -> tuple[Path, Path]:
    """A textured ``seconds`` s video standing for a full YouTube video, and a ``segment`` s clip of the
    same content (the same generator and seed: the video's first ``segment`` s as a trimmed clip);
    written once, cached."""
    f = TEXTURED
    paths = []
    for length, name in ((seconds, f"full-{seconds:g}s.mp4"), (segment, f"full-{seconds:g}s.first-{segment:g}s.mp4")):
        path = work / "clips" / name
        if not path.exists():
            print(f"writing a {length:g} s textured video to {path} (cached for later runs) ...", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_name(f".{path.stem}.part.mp4")
            write_clip(scratch, seconds=length, fps=f.fps, width=f.width, height=f.height,
                       sample_rate=f.sample_rate, audio_channels=f.audio_channels, labels=(0, 6), textured=True,
                       seed=11)
            scratch.rename(path)
        paths.append(path)
    return paths[0], paths[1]


def segment_costs(full: Path, trimmed: Path, data: DataConfig, repeats: int) -> list[dict]:
    """CPU ms of one segment: the trimmed clip, segments seeked to in the full video, and the bare
    decord read of each (which decodes the whole file's sound); best of ``repeats`` each."""
    mods = bound_modalities(data)
    seconds = data.segment_seconds
    with av.open(str(full)) as container:
        length = container.duration / av.time_base
        ctx = container.streams.video[0].codec_context
        width, height = ctx.width, ctx.height

    def best(run: Callable[[], object]) -> float:
        cpu = []
        for _ in range(repeats):
            with timed() as t:
                run()
            cpu.append(t.cpu)
        return min(cpu)

    cases = [(f"trimmed {seconds:g} s clip (start=None)", str(trimmed), None)]
    cases += [(f"segment at {start:g} s of a {length:g} s video (--full-videos)", str(full), start)
              for start in (0.0, round((length - seconds) / 2), length - seconds)]
    table, reference = [], None
    for what, path, start in cases:
        ours = best(lambda path=path, start=start: decode_clip(path, **decode_args(data, mods, start)))
        bare = best(lambda path=path, start=start: bare_decord_read(path, data, width, height, start or 0.0))
        reference = reference or ours
        table.append({"what": what, "decode_clip ms": f"{1000 * ours:.0f}", "vs trimmed": f"{ours / reference:.2f}",
                      "bare decord ms": f"{1000 * bare:.0f}", "bare vs trimmed": f"{bare / reference:.2f}"})
    return table


# ---------------------------------------------------------------- 2: bytes per clip


@dataclass(frozen=True)
class Encoding:
    """One storage choice: video raw or JPEG at a quality, audio raw int16 or float16 log-mel."""

    video: str  # "raw" | "jpeg"
    quality: int
    audio: str  # "raw" | "logmel"

    @property
    def name(self) -> str:
        video = "video-raw" if self.video == "raw" else f"jpeg-q{self.quality}"
        return f"{video}+audio-{self.audio}"

    def apply(self, data: DataConfig) -> DataConfig:
        return dataclasses.replace(
            data, video=dataclasses.replace(data.video, encoding=self.video, jpeg_quality=self.quality),
            audio=dataclasses.replace(data.audio, representation=self.audio))


@dataclass
class StoredShard:
    encoding: Encoding
    data: DataConfig
    path: str
    clips: int
    shard_bytes: int
    fourier_bytes: int  # a shard holding only the __fourier__ entry (with the tar end blocks)
    video_bytes: int  # member bytes, all clips
    audio_bytes: int
    meta_bytes: int
    members_cpu: float  # CPU seconds of encode_clip past decoding (features + members), all clips

    @property
    def per_clip(self) -> float:
        """Bytes per clip in a full shard: its own members and tar headers, plus its share of the
        once-per-shard Fourier entry at the recipe's shard size."""
        return (self.shard_bytes - self.fourier_bytes) / self.clips + self.fourier_bytes / self.data.shard_size

    @property
    def tar_overhead(self) -> float:
        own = self.shard_bytes - self.fourier_bytes
        return (own - self.video_bytes - self.audio_bytes - self.meta_bytes) / self.clips


# decode_clip's results by (path, its arguments), kept while storage choices are compared.
DECODED: dict[tuple, DecodedClip] = {}


def decode_key(path: str, data: DataConfig, mods: Sequence[Modality], start: float | None = None) -> tuple:
    return (str(path), *sorted(decode_args(data, mods, start).items()))


def memo_decode(path: str, data: DataConfig, modalities: Sequence[Modality], *,
                start: float | None = None) -> DecodedClip:
    """decode_clip with its results kept (in ``DECODED``), handed to encode_clip as its decoder
    (``EncodeOptions.decoder``) while storage choices are compared: each choice then runs the real
    encode_clip (features, members, metadata) without decoding again. A module-level function, so it
    pickles (a process without the cache decodes)."""
    key = decode_key(path, data, modalities, start)
    if key not in DECODED:
        DECODED[key] = decode_clip(path, **decode_args(data, modalities, start))
    return DECODED[key]


def store(rows: Sequence[ClipRow], data: DataConfig, encoding: Encoding, out: storage.Location) -> StoredShard:
    """encode_clip every row with ``encoding`` (decoding memoised) and write one real shard of them."""
    data = encoding.apply(data)
    mods = bound_modalities(data)
    options = EncodeOptions(data, mods, decoder=memo_decode)
    tags = modality.tags(mods)
    results: list[ClipResult] = []
    with timed() as t:
        for row in rows:
            results.append(encode_clip(row, options, tags))
    if failed := [r.failure for r in results if r.failure]:
        raise RuntimeError(f"encode_clip failed: {failed[0]}")
    fourier = shards.fourier_members(tags, modality.position_features(mods))
    path = out.join(f"{encoding.name}.tar")
    size = shards.write_shard(out, f"{encoding.name}.tar", fourier, [r.members for r in results])
    fourier_size = shards.write_shard(out, f"{encoding.name}.fourier-only.tar", fourier, [])

    def member_bytes(test: Callable[[str], bool]) -> int:
        return sum(len(b) for r in results for name, b in r.members if test(name))

    return StoredShard(encoding, data, path, len(results), size, fourier_size,
                       video_bytes=member_bytes(lambda n: ".video." in n),
                       audio_bytes=member_bytes(lambda n: n.endswith(".audio.npy")),
                       meta_bytes=member_bytes(lambda n: n.endswith(".json")),
                       members_cpu=t.cpu)


def highest_quality_within(budget: float, rows: Sequence[ClipRow], data: DataConfig, out: storage.Location,
                           low: int = 1, high: int = 100) -> tuple[int | None, float | None]:
    """The highest JPEG quality whose shard stays within ``budget`` bytes per clip (bisection;
    size grows with quality), with its bytes per clip; (None, None) if even ``low`` is over."""
    @functools.cache
    def size(q: int) -> float:
        return store(rows, data, Encoding("jpeg", q, data.audio.representation), out).per_clip

    if size(high) <= budget:
        return high, size(high)
    if size(low) > budget:
        return None, None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) <= budget else (low, mid)
    return low, size(low)


# ---------------------------------------------------------------- 3: read + decode


def read_back(shard: StoredShard, repeats: int, whole: bool, seed: int = 0) -> Timing:
    """Read the shard ``repeats`` times and cut one model window of every sample.

    ``whole``: decode every frame while reading (``decode_frames=True``), as a reader that
    needs the whole segment would; otherwise decode only the window's frames (the training path).
    """
    rng = np.random.default_rng(seed)
    mods = bound_modalities(shard.data)
    with timed() as t:
        for sample in shards.iter_samples([shard.path] * repeats, decode_frames=whole):
            start = window_starts(sample.meta, mods, 1, rng)[0]
            for m in mods:
                crop_window(sample, m, start)
    return t


# ---------------------------------------------------------------- 5: Ray against plain processes


@dataclass
class RayRun:
    workers: int
    startup: float  # process start to the first line of run_preprocess (imports, ray.init)
    run: float  # run_preprocess: plan, encode tasks, shard writer, index and dataset.json
    teardown: float  # the summary line to process exit (ray shutdown)
    summary: str
    load_before: float
    load_after: float


def ray_preprocess(clips: ClipSet, workers: int, out: Path, timeout: float = 600) -> RayRun:
    """``jobs/preprocess.py`` at the audioset recipe on an embedded local Ray, ``workers`` clips in flight.

    Phases are timed from the job's own output lines: the "N shards planned" line that
    run_preprocess prints once the cluster is up, and the summary line it ends with.
    """
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, str(ROOT / "jobs" / "preprocess.py"), "--segments", str(clips.segments_csv),
               "--labels", str(clips.labels_csv), "--media-dir", str(clips.media_dir), "--out", str(out),
               "--config", str(CONFIGS / "audioset.yaml"), "--set", f"data.max_in_flight={workers}",
               "--address", "local"]
    log_path = out.parent / f"ray-w{workers}.stderr.log"
    load_before = load1()
    began = time.perf_counter()
    planned = finished = None
    summary = ""
    with open(log_path, "w") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=log, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            if line.startswith("preprocess:") and "planned" in line:
                planned = now
            elif line.startswith("preprocess:") and " samples in " in line:
                finished, summary = now, line.strip()
        proc.wait(timeout=timeout)
    ended = time.perf_counter()
    if proc.returncode != 0 or planned is None or finished is None:
        raise RuntimeError(f"jobs/preprocess.py exited {proc.returncode}; see {log_path}:\n"
                           + log_path.read_text()[-3000:])
    if f"{len(clips.rows)} samples in" not in summary or " 0 failed" not in summary:
        raise RuntimeError(f"unexpected result: {summary}")
    return RayRun(workers, planned - began, finished - planned, ended - finished, summary, load_before, load1())


def _plain_worker_init() -> None:
    torch.set_num_threads(1)  # as Ray gives a 1-CPU task OMP_NUM_THREADS=1


def _plain_encode(args: tuple[ClipRow, EncodeOptions, dict]) -> ClipResult:
    return encode_clip(*args)


def plain_preprocess(rows: Sequence[ClipRow], data: DataConfig, workers: int, out: storage.Location) -> Timing:
    """``workers`` spawned processes run encode_clip; the parent writes the shard, as Ray's writer does.

    The time includes starting the processes and their imports (Ray's workers pay their
    imports inside its run too).
    """
    options = EncodeOptions(data, bound_modalities(data))
    tags = modality.tags(options.modalities)
    with timed() as t:
        with mp.get_context("spawn").Pool(workers, initializer=_plain_worker_init) as pool:
            results = pool.map(_plain_encode, [(row, options, tags) for row in rows], chunksize=1)
        fourier = shards.fourier_members(tags, modality.position_features(options.modalities))
        ordered = sorted((r for r in results if r.index_rows), key=lambda r: r.key)
        shards.write_shard(out, f"plain-w{workers}.tar", fourier, [r.members for r in ordered])
    if len(ordered) != len(rows):
        raise RuntimeError(f"{len(rows) - len(ordered)} clips failed in plain processes")
    return t


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_clips=16)
    parser.add_argument("--qualities", type=int, nargs="+", default=[60, 70, 80, 90], help="JPEG qualities")
    parser.add_argument("--skip-ray", action="store_true", help="leave out section 5 (Ray start-up is slow)")
    parser.add_argument("--full-seconds", type=float, default=60.0,
                        help="length of the full video whose segments section 4b decodes (written once)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = clip_count(args)
    repeats = 1 if args.quick else 3
    clips = textured_clips(args.work, n)
    rows = clips.rows
    # Whole segments, as every evaluation split stores them: the larger form, which the 4 MB budget is
    # about (a training split with data.train_windows stores its windows: tests/test_windows.py).
    configs = {name: recipe(name) for name in RECIPES}
    for cfg in configs.values():
        cfg.data.train_windows = 0
    audioset = configs["audioset"].data
    scratch = args.work / "preprocess"
    shutil.rmtree(scratch, ignore_errors=True)
    out = storage.locate(scratch / "shards")

    print(machine_summary())
    print(f"clips: {n} synthetic textured clips ({clip_format()}) in {clips.media_dir}")
    results: dict[str, bool] = {}

    # 1 and 4
    costs: dict[str, StageCosts] = {}
    decoded: dict[str, DecodedClip] = {}
    for name, cfg in configs.items():
        costs[name], got = measure_stages(rows, cfg.data)
        if name == "audioset":
            decoded = got
    table = []
    for name, c in costs.items():
        d = configs[name].data
        table.append({
            "recipe": name,
            "segment": f"{d.segment_seconds:g}s {d.video.size}px {d.video.fps:g}fps {d.video.encoding}"
                       + (f" q{d.video.jpeg_quality}" if d.video.encoding == "jpeg" else "")
                       + f" / {d.audio.sample_rate // 1000}kHz {d.audio.representation}",
            "decode clips/s/core": f"{c.clips / c.decode.cpu:.2f}",
            "full clips/s/core": f"{c.clips / c.encode.cpu:.2f}",
            "full/decode": f"{c.decode.cpu / c.encode.cpu:.3f}",
            "decode ms": f"{1000 * c.decode.cpu / c.clips:.0f}",
            "full ms": f"{1000 * c.encode.cpu / c.clips:.0f}",
            "audio feat ms": f"{1000 * c.audio.cpu / c.clips:.1f}",
            "members ms": f"{1000 * c.members.cpu / c.clips:.1f}",
            "full clips/s wall": f"{c.clips / c.encode.wall:.2f}",
            "load": f"{c.decode.load_before:.1f}-{c.encode.load_after:.1f}",
        })
    print_table("1/4. Preprocessing per core: full (encode_clip) vs bare decoding (decode_clip), one process", table, [
        "clips/s/core = clips per process-CPU second; ms = CPU ms per clip; the two stages encode_clip adds to "
        "decoding, timed apart on the decoded clip:",
        "audio feat = the audio modality's encode (int16 or log-mel), members = the video modality's encode "
        "(JPEG encode of every frame) + shards.sample_members (npy / mjpeg members); "
        "full/decode = decode ms / full ms (target >= 0.8 at audioset)",
    ])
    ratio = costs["audioset"].decode.cpu / costs["audioset"].encode.cpu
    results["full preprocessing / bare decoding >= 0.8 (audioset)"] = ratio >= RATIO_TARGET

    # 4b
    table, bare_ratio = [], None
    for name in ("audioset",) if args.quick else RECIPES:
        c = compare_with_bare(rows, configs[name].data, repeats)
        speed = c.bare.cpu / c.decode.cpu
        bare_ratio = speed if name == "audioset" else bare_ratio
        table.append({
            "recipe": name,
            "decode_clip clips/s/core": f"{c.clips / c.decode.cpu:.2f}",
            "bare decord clips/s/core": f"{c.clips / c.bare.cpu:.2f}",
            "decode_clip/bare": f"{speed:.3f}",
            "decode_clip ms": f"{1000 * c.decode.cpu / c.clips:.0f}",
            "bare ms": f"{1000 * c.bare.cpu / c.clips:.0f}",
            "max pixel diff": f"{c.max_frame_diff:.2f}",
            "sound RMS ratio": f"{c.sound_rms_ratio:.3f}",
            "load": f"{c.decode.load_before:.1f}-{c.decode.load_after:.1f}",
        })
    segments = segment_costs(*full_video(args.work, args.full_seconds, audioset.segment_seconds), audioset,
                             max(3, repeats))
    print_table("4b. decode_clip vs a bare decord read of the same frames and audio, one process", table, [
        f"{len(rows)} clips x {repeats} pass(es), alternating order; clips/s/core = clips per process-CPU second; "
        f"decode_clip/bare = bare CPU / decode_clip CPU (target >= {BARE_TARGET} at audioset)",
        "bare = decord.VideoReader (scaled) + get_batch of the nearest frames + decord.AudioReader (mono); "
        "decode_clip adds the PyAV probe, container-clock timestamps and PyAV audio (streamed)",
        "max pixel diff = mean |decode_clip - bare| of the frames (0: the same frames); sound RMS ratio = "
        "decode_clip's level / decord's mono downmix (decode_clip keeps the channels' level: 1/sqrt 2 for stereo)",
    ])
    print_table(f"4b. One segment of a full video against a trimmed clip of the same content (audioset recipe, "
                f"CPU ms, best of {max(3, repeats)})", segments, [
        "decode_clip seeks both streams to the segment (decord: the keyframe before it; PyAV audio: 0.2 s before "
        "it); the bare read (what decoder version 1 did) decodes the whole file's sound for every segment; "
        "vs trimmed = / the trimmed clip's decode_clip ms",
    ])
    results[f"decode_clip >= {BARE_TARGET}x a bare decord read (audioset)"] = bare_ratio >= BARE_TARGET

    # 2
    DECODED.update({decode_key(r.path, audioset, bound_modalities(audioset)): decoded[r.path] for r in rows})
    configured = Encoding(audioset.video.encoding, audioset.video.jpeg_quality, audioset.audio.representation)
    variants = [Encoding("raw", audioset.video.jpeg_quality, "raw")]
    variants += [Encoding("jpeg", q, "raw") for q in sorted(set(args.qualities) | {configured.quality})]
    variants += [Encoding("jpeg", configured.quality, "logmel")]
    stored = {v: store(rows, audioset, v, out) for v in variants}
    table = []
    for v, s in stored.items():
        table.append({
            "encoding": v.name + (" (config)" if v == configured else ""),
            "video MB": f"{mb(s.video_bytes / s.clips):.3f}",
            "audio MB": f"{mb(s.audio_bytes / s.clips):.3f}",
            "json+tar KB": f"{(s.meta_bytes / s.clips + s.tar_overhead) / 1e3:.0f}",
            "fourier KB": f"{s.fourier_bytes / s.data.shard_size / 1e3:.0f}",
            "MB/clip": f"{mb(s.per_clip):.3f}",
            "MB/10s": f"{mb(s.per_clip) * 10 / audioset.segment_seconds:.3f}",
            "vs raw": f"{s.per_clip / stored[variants[0]].per_clip:.3f}",
            "<= 4 MB": "yes" if s.per_clip <= BUDGET_BYTES else "no",
            "encode ms/clip": f"{1000 * s.members_cpu / s.clips:.0f}",
        })
    config_bytes = stored[configured].per_clip
    best_q, best_bytes = highest_quality_within(BUDGET_BYTES, rows, audioset, out)
    print_table(f"2. Bytes per clip at the audioset recipe ({audioset.segment_seconds:g} s, {audioset.video.size} px, "
                f"{audioset.video.fps:g} fps, {audioset.audio.sample_rate // 1000} kHz), real shards", table, [
        "measured on shards written by shards.write_shard: members + tar headers per clip, plus 1/shard_size "
        f"({audioset.shard_size}) of the once-per-shard Fourier entry",
        "encode ms/clip = CPU ms of encode_clip past decoding (features + members, all frames)",
        f"configured jpeg_quality {configured.quality}: {mb(config_bytes):.3f} MB per clip, budget 4 MB (4,000,000 "
        f"bytes): {verdict(config_bytes <= BUDGET_BYTES)}; highest quality within budget: "
        + (f"q{best_q} ({mb(best_bytes):.3f} MB)" if best_q else "none"),
    ])
    results["audioset config <= 4 MB per 10 s clip"] = config_bytes <= BUDGET_BYTES

    # 3
    table = []
    for v, s in stored.items():
        row = {"encoding": v.name, "MB/clip": f"{mb(s.per_clip):.2f}"}
        rate = {}
        for label, whole in (("whole segment", True), ("one window", False)):
            t = read_back(s, repeats, whole)
            rate[whole] = s.clips * repeats / t.cpu
            row[f"{label} samples/s/core"] = f"{rate[whole]:.1f}"
            row[f"{label} MB/s/core"] = f"{mb(s.shard_bytes * repeats) / t.cpu:.0f}"
        row["window/whole speed"] = f"{rate[False] / rate[True]:.2f}"
        table.append(row)
    window = audioset.video.num_frames / audioset.video.fps
    print_table(f"3. Read + decode per core (shards.iter_samples, then a {window:g} s window via loader.crop_window)",
                table, [
        "whole segment: iter_samples(decode_frames=True) decodes every frame; one window: decode_frames=False, "
        f"crop_window decodes only the window's {audioset.video.num_frames} JPEG frames",
        f"MB/s = shard bytes read per CPU second; shards come from the page cache ({repeats} passes), so this is "
        "the CPU cost, not the disk's",
    ])

    # 5
    if not args.skip_ray:
        ray_dir = scratch / "ray"
        ray_dir.mkdir(parents=True, exist_ok=True)
        print(f"\n(running jobs/preprocess.py on an embedded Ray, then plain processes: {n} clips each way ...)",
              flush=True)
        # Best of `rounds` runs each, alternating which goes first: other work on a shared machine
        # only ever slows a run down, so the fastest run is the least disturbed one.
        rounds = 1 if args.quick else 2
        runs: dict[int, RayRun] = {}
        plain: dict[int, Timing] = {}
        for workers in (1, 2):
            for round_ in range(rounds):
                for kind in ("ray", "plain") if round_ % 2 == 0 else ("plain", "ray"):
                    if kind == "ray":
                        run = ray_preprocess(clips, workers, ray_dir / f"w{workers}")
                        if workers not in runs or run.run < runs[workers].run:
                            runs[workers] = run
                    else:
                        took = plain_preprocess(rows, audioset, workers, out)
                        if workers not in plain or took.wall < plain[workers].wall:
                            plain[workers] = took
        table = []
        for workers in (1, 2):
            r, p = runs[workers], plain[workers]
            table.append({
                "workers": workers,
                "ray run s": f"{r.run:.1f}",
                "ray clips/s": f"{n / r.run:.2f}",
                "ray start-up s": f"{r.startup:.1f}",
                "ray shutdown s": f"{r.teardown:.1f}",
                "plain s": f"{p.wall:.1f}",
                "plain clips/s": f"{n / p.wall:.2f}",
                "ray/plain": f"{p.wall / r.run:.2f}",
                "load ray": f"{r.load_before:.1f}-{r.load_after:.1f}",
                "load plain": f"{p.load_before:.1f}-{p.load_after:.1f}",
            })
        ray_speedup = runs[1].run / runs[2].run
        plain_speedup = plain[1].wall / plain[2].wall
        ray_vs_plain = plain[2].wall / runs[2].run
        print_table(f"5. Ray (jobs/preprocess.py, embedded local Ray on {os.cpu_count()} CPUs, "
                    "data.max_in_flight=workers) vs plain spawned processes, audioset recipe", table, [
            f"best of {rounds} run(s) each, alternating order; "
            "ray run = run_preprocess from its plan line to its summary line (encode tasks incl. worker imports, "
            "shard writer, index, dataset.json); start-up (interpreter, imports, ray.init) and shutdown apart",
            "plain = multiprocessing spawn Pool running encode_clip, parent writes the shard; includes process "
            "start and imports",
            f"speed-up 1 -> 2 workers: ray {ray_speedup:.2f}x, plain {plain_speedup:.2f}x; "
            f"ray at 2 / plain at 2 = {ray_vs_plain:.2f} (target >= {RAY_TARGET})",
            f"ray summary (2 workers): {runs[2].summary}",
        ])
        results["Ray 2 workers >= 0.9x two plain processes"] = ray_vs_plain >= RAY_TARGET

    print_table("Targets", [{"target": k, "result": verdict(v)} for k, v in results.items()], [
        f"full/decode at audioset = {ratio:.3f}; config bytes per clip = {mb(config_bytes):.3f} MB",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
