"""Preprocessing on Ray: clips fan out as tasks, shards are written as they complete.

Why Ray tasks rather than Ray Data ``map_batches``: a decode can hang (decord loops forever on
some files) and must be bounded per clip. A task can be cancelled with ``force=True``, which
kills its worker process; a Ray Data block cannot be cut per clip, and Ray Data drops whole
blocks on errors. A task is a short run of one shard's clips (``data.clips_per_task``), so that
Ray's cost per task in the driver is shared, and each clip is bounded on its own: the one a
cancelled task hung on is recorded, the others run again (``max_calls`` recycles workers, since
decord leaks across readers). The driver holds only small status records and object
references. When all clips of a shard are in, one writer task streams their members into the
shard, so bytes go worker -> object store -> writer -> storage, never through the driver.

Resume: the plan (which keys go to which shard) is a function of the inputs, and a shard is
finished once its part record ``_parts/<shard>.json`` exists (written after the shard itself).
A rerun skips finished shards and redoes the rest.

At AudioSet's 2 million rows a run has some 31,000 shards: reading their part records one by
one would cost as many GET requests. So every ``BUNDLE`` finished shards a task packs their
records into one ``_parts/bundles/`` file; a run reads the bundles and the singles no bundle
holds (a kill between two bundles), in parallel, once at its start, and keeps the records of the
shards it writes, so finalizing reads nothing back. Singles are not deleted: pyarrow's S3
``delete_file`` puts a ``prefix/`` marker back, which file-backed servers refuse.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.util.state
from tqdm import tqdm

from pipeline import faults, modality, records, shards, storage
from pipeline.dataset import DatasetMismatchError
from pipeline.decode import DECODER_VERSION
from pipeline.encode import EncodeOptions, encode_clip, failure_row, plan_shards
from pipeline.labels import LabelClass
from pipeline.recipe import recipe_record
from pipeline.records import ClipRow

log = logging.getLogger(__name__)
PARTS = "_parts"
BUNDLES = f"{PARTS}/bundles"
BUNDLE = 200  # part records per bundle: 31,000 shards cost 155 bundle GETs and 31 list pages
ROW_GROUP = 65536  # rows per parquet row group of index.parquet and failures.parquet
READERS = 16  # parallel GETs when part records are read back
WAIT_BATCH = 256  # finished tasks the driver takes per wake-up: one ray.wait over all in flight serves them all
WAIT_S = 0.1  # longest wake-up interval (a finished task waits this long at most to be replaced)
SCAN_S = 1.0  # how often the driver looks for decodes past data.decode_timeout_s


class StorageError(RuntimeError):
    """A shard or record could not be written to ``--out``."""


@dataclass
class PreprocessJob:
    """Everything one preprocessing run needs; ``jobs/preprocess.py`` builds it from arguments."""

    out: storage.Location
    rows: list[ClipRow]  # every parsed row, with media resolved where found
    missing: dict[str, dict]  # key -> failure row, for rows whose media was not found
    source_failures: list[dict]  # rows that never became ClipRows (malformed, duplicate, ...)
    classes: list[LabelClass]
    options: EncodeOptions
    split: str = "train"
    retry_failed: bool = False
    inputs: dict = field(default_factory=dict)  # how the job was called, for dataset.json
    task_cpus: float = 1.0  # CPUs a clip task reserves (below 1 where a stand-in decoder does no work)
    # Clips a worker process encodes before Ray replaces it (rounded up to whole tasks): decord leaks
    # across readers. 0: never (a stand-in decoder that leaks nothing, where worker start-up would be
    # most of the work).
    task_calls: int = 100


@dataclass
class Phases:
    """Where a run's time went, per phase: wall-clock bounds (``time.time()``, so a storage server's
    request log lines up with them) and the driver process's CPU seconds (all its threads)."""

    wall: dict[str, tuple[float, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.time(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = (wall, time.time())
            self.cpu[name] = time.process_time() - cpu


@dataclass
class Summary:
    written: int  # samples stored
    clips: int  # clips they came from (fewer with data.train_windows)
    failed: int
    by_reason: dict[str, int]
    shards: int
    seconds: float
    phases: Phases  # "plan", "clips" (absent when nothing was left to do), "finalize" and, within it, "index"

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items())) or "none"
        windows = f" ({self.clips} clips)" if self.clips != self.written else ""
        return (f"preprocess: {self.written} samples{windows} in {self.shards} shards, {self.failed} failed "
                f"({reasons}) in {self.seconds:.0f} s")


@ray.remote(num_cpus=0, max_restarts=0)
class _StartClock:
    """When each clip started encoding, on this actor's clock, and in which worker process, for the
    decode timeout: it counts from there, not from its task's submission, so a task queued behind busy
    CPUs or waiting for a worker that is still importing torch on a loaded node is never taken for a
    hung decode. The worker lets the driver tell a start left behind by a worker that died from one
    made by the attempt Ray retried in its place (``_attempt_running``). The driver asks only about tasks in flight for longer than the
    timeout, so a healthy run costs it nothing per clip (a streaming task reporting its own start cost
    the driver 0.5-0.8 ms of CPU per clip: docs/performance.md)."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[float, str]] = {}

    def start(self, key: str, worker: str) -> None:
        self._started[key] = time.monotonic(), worker  # a retried task starts again

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self._started.pop(key, None)

    def running_for(self, keys: list[str]) -> list[tuple[float, str] | None]:
        """Seconds since each clip started, and the worker it started in; None for one not started yet."""
        now = time.monotonic()
        return [(now - self._started[k][0], self._started[k][1]) if k in self._started else None for k in keys]


@functools.cache
def _start_clock(name: str) -> ray.actor.ActorHandle:
    return ray.get_actor(name)  # once per worker process


def _report_start(clock: str, key: str) -> None:
    try:
        _start_clock(clock).start.remote(key, ray.get_runtime_context().get_worker_id())  # not waited for
    except ValueError:  # the clock is gone: the driver counts from submission then
        pass


@dataclass(frozen=True)
class _Setup:
    """What every clip task of a run shares: put in the object store once, not pickled with each task."""

    options: EncodeOptions
    tags: dict
    clock: str  # the run's _StartClock, by name


def _encode_task(rows: list[ClipRow], setup: _Setup) -> tuple[list[dict], list[list]]:
    """Each clip's status (for the driver) and shard members (for the writer), as two objects."""
    node = ray.get_runtime_context().get_node_id()
    statuses, members = [], []
    for row in rows:
        _report_start(setup.clock, row.key)
        faults.clip_task_started(row.key)
        res = encode_clip(row, setup.options, setup.tags)
        statuses.append({"key": res.key, "index_rows": res.index_rows, "failure": res.failure, "node": node})
        members.append(res.members)
    return statuses, members


@ray.remote(num_cpus=0, max_retries=3)
def _write_task(out: storage.Location, part: dict, fourier: list, picks: list[tuple[int, int]],
                *batches: list[list]) -> int:
    """The shard (unless every clip of it failed), then its part record, which marks it finished.
    ``picks`` names each sample as (argument of ``batches``, clip within that task's members)."""
    if samples := [batches[b][i] for b, i in picks]:
        part = dict(part, bytes=shards.write_shard(out.child("shards"), part["shard"], fourier, samples))
    storage.write_bytes(out.fs, _part_path(out, part["shard"]), json.dumps(part).encode())
    return part["bytes"]


def _plan_digest(plan: Sequence[tuple[str, list[ClipRow]]]) -> dict[str, str]:
    return {name: hashlib.sha256("\n".join(r.key for r in rows).encode()).hexdigest()[:16] for name, rows in plan}


def _read_plan(fs, plan_file: str) -> dict | None:
    try:
        return json.loads(_read_whole(fs, plan_file))
    except FileNotFoundError:
        return None


def _check_same_dataset(job: PreprocessJob, plan_file: str, digest: dict[str, str], recipe: dict,
                        held: dict | None) -> dict:
    """Refuse to mix two datasets in one directory (``held``: what ``plan_file`` holds, if anything);
    a rerun of the same command passes. Returns the record written."""
    record = {"split": job.split, "recipe": recipe, "classes": [c.mid for c in job.classes], "shards": digest}
    if held is not None:
        for part in ("split", "recipe", "classes"):
            if held.get(part) != record[part]:
                raise DatasetMismatchError(
                    f"{job.out.shown} already holds a dataset with a different {part}: "
                    f"choose a new --out or delete that directory")
        clash = [n for n, d in digest.items() if n in held["shards"] and held["shards"][n] != d]
        if clash:
            raise DatasetMismatchError(
                f"{job.out.shown} already holds shard {clash[0]} made from other rows (the inputs changed): "
                f"choose a new --out, or rerun with the original segment lists")
        record["shards"] = {**held["shards"], **digest}
    storage.write_bytes(job.out.fs, plan_file, json.dumps(record, sort_keys=True).encode())
    return record


def _read_whole(fs, path: str) -> bytes:
    """One GET: pyarrow's input stream (storage.read_bytes) fetches an S3 object in 256 KB ranges, 15 GETs
    for a bundle of 3.7 MB; a random-access file learns the size first (a HEAD) and reads it at once."""
    with storage._request(fs, path, "reading"), fs.open_input_file(path) as f:
        return f.read()


def _read_json(fs, paths: Iterable[str]) -> list:
    with ThreadPoolExecutor(READERS) as pool:  # the requests wait on the network, not on the GIL
        return list(pool.map(lambda p: json.loads(_read_whole(fs, p)), paths))


class _Finished:
    """The finished shards' part records, as the driver keeps them until finalize: their index rows in
    Arrow tables of ``ROW_GROUP`` rows. As dicts they cost about 1 KB a row, 2 GB of driver memory at
    AudioSet's 2 million rows; as Arrow about 0.25 KB (a table per shard would cost twice that in
    per-buffer overhead)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.names: set[str] = set()  # finished shards, without ``.tar``
        self.stored: list[str] = []  # finished shards that hold samples (every clip of a shard may fail)
        self.failures: list[dict] = []  # failures.parquet rows of the clip stages, a retried key's included
        self.nodes: collections.Counter = collections.Counter()  # Ray node id -> clips it encoded
        self._tables: list[pa.Table] = []
        self._rows: list[dict] = []

    def add(self, part: dict) -> None:
        name = part["shard"][: -len(".tar")]
        if name in self.names:  # in a bundle and a single, or in two bundles (a retried bundle task)
            return
        self.names.add(name)
        self.stored += [part["shard"]] if part["samples"] else []
        self.failures += part["failures"]
        self.nodes.update(part.get("nodes", {}))
        self._rows += part["samples"]
        if len(self._rows) >= ROW_GROUP:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def samples(self) -> pa.Table:
        """Every index row, in the order the shards finished."""
        return pa.concat_tables([*self._tables, pa.Table.from_pylist(self._rows, schema=self.schema)])

    def unresolved(self, clips: pa.Array) -> list[dict]:
        """The failures whose clip is not among ``clips`` (``_clips_of``): a retry that stores it wins."""
        failed = pa.array([f["key"] for f in self.failures], pa.string())
        stored = pc.is_in(failed, value_set=clips).to_pylist()
        return [f for f, s in zip(self.failures, stored, strict=True) if not s]


def _clips_of(samples: pa.Table) -> pa.Array:
    """The keys of the clips that became ``samples`` (a stored window's ``clip``), each once."""
    return pc.unique(pc.coalesce(samples["clip"], samples["key"]).combine_chunks())


def _index_schema(modalities: Sequence) -> pa.Schema:
    """index.parquet's columns: an IndexRow, then each modality's presence and true length."""
    return records.schema(records.IndexRow, [(c, t) for m in modalities
                                             for c, t in ((f"has_{m.name}", pa.bool_()), (m.length_key, pa.int64()))])


def _load_parts(out: storage.Location, finished: _Finished) -> None:
    """Add the finished shards' part records to ``finished``: the bundles, then the singles no bundle holds."""
    for bundle in _read_json(out.fs, storage.list_files(out.fs, out.join(BUNDLES), ".json")):
        for part in bundle:
            finished.add(part)
    singles = [p for p in storage.list_files(out.fs, out.join(PARTS), ".json")
               if p.rsplit("/", 1)[1][: -len(".json")] not in finished.names]
    for part in _read_json(out.fs, singles):
        finished.add(part)


@ray.remote(num_cpus=0, max_retries=3)
def _bundle_task(out: storage.Location, parts: list[dict]) -> None:
    """One bundle file for ``parts`` (a retried task may write a second: ``_load_parts`` reads both as one)."""
    storage.write_bytes(out.fs, out.join(BUNDLES, f"{parts[0]['shard'][:-len('.tar')]}-{uuid.uuid4().hex[:8]}.json"),
                        json.dumps(parts).encode())


def _part_path(out: storage.Location, shard: str) -> str:
    return out.join(PARTS, shard[: -len(".tar")] + ".json")


def _retry_plan(job: PreprocessJob, finished: _Finished, planned: list[str]) -> list[tuple[str, list[ClipRow]]]:
    """Rows that failed in a clip stage (or whose media was missing) become new shards, named by
    a round no earlier plan used (a killed retry may have planned names it never wrote)."""
    by_key = {r.key: r for r in job.rows}
    failed = {f["key"] for f in finished.unresolved(_clips_of(finished.samples()))}
    retried = [by_key[k] for k in sorted(failed) if k in by_key and k not in job.missing]
    used = [int(n.split("-retry")[1].split("-")[0]) for n in planned if f"{job.split}-retry" in n]
    round_ = 1 + max(used, default=0)
    return plan_shards(retried, job.options.data.shard_size, f"{job.split}-retry{round_}")


def _statuses(refs: list[ray.ObjectRef]) -> list[list[dict] | ray.exceptions.RayError]:
    """The statuses of each finished clip task's clips, in one call unless one of the tasks failed."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError:
        pass
    got = []
    for ref in refs:
        try:
            got.append(ray.get(ref))
        except ray.exceptions.RayError as err:  # task error, crashed worker, lost object, dead node
            got.append(err)
    return got


def _running_for(clock: ray.actor.ActorHandle, keys: list[str]) -> list[tuple[float, str] | None] | None:
    """Seconds each clip has been running and its worker (None: not started yet), from the start clock;
    None if the clock is gone."""
    try:
        return ray.get(clock.running_for.remote(keys), timeout=60)
    except ray.exceptions.RayError as err:
        log.warning("the decode timeout's start clock did not answer (%s): counting from submission",
                    str(err).strip().splitlines()[-1])
        return None


def _overdue(rows: list[ClipRow], started: list[tuple[float, str] | None] | None, since_submission: float,
             timeout: float) -> tuple[bool, ClipRow | None, str | None]:
    """Whether a clip task has run past ``timeout``, the clip it hangs on (the one it started last) and
    the worker that started it, from each clip's (seconds running, worker) or None. Without the clock
    (``started`` None) a task counts from its submission and only a one-clip task's culprit is known."""
    if started is None:
        return since_submission > timeout, rows[0] if len(rows) == 1 else None, None
    begun = [(entry, row) for entry, row in zip(started, rows, strict=True) if entry is not None]
    if not begun:
        return False, None, None
    (age, worker), row = min(begun, key=lambda b: b[0][0])
    return age > timeout, row, worker


def _attempt_running(ref: ray.ObjectRef, worker: str | None) -> bool:
    """Whether the latest attempt of ``ref``'s task is running, in ``worker`` if one is named, from Ray's
    state API. A worker that died mid-clip leaves that clip's start on the clock while Ray's retry waits
    for a CPU or has not reached its first clip yet: such a task is not hung. True where the state API
    cannot tell (no dashboard, the task's events dropped), so that a hung decode is never left running;
    asked only of tasks already overdue on the clock."""
    try:
        attempts = ray.util.state.get_task(ref, timeout=10)
    except Exception as err:  # any failure of this check must fall back to the clock, not stop the run
        log.warning("Ray's state API did not answer (%s): trusting the start clock", str(err).strip()[:200])
        return True
    if not attempts:
        return True
    attempts = attempts if isinstance(attempts, list) else [attempts]
    latest = max(attempts, key=lambda a: a.attempt_number)
    return latest.state == "RUNNING" and worker in (None, latest.worker_id)


def _tasks(plan: list[tuple[str, list[ClipRow]]], missing: dict, per_task: int) -> Iterator[tuple[str, list[ClipRow]]]:
    """Each shard's clips with media, in runs of ``per_task``: a task never spans two shards."""
    for name, rows in plan:
        found = [r for r in rows if r.key not in missing]
        for start in range(0, len(found), per_task):
            yield name, found[start:start + per_task]


def _execute(job: PreprocessJob, plan: list[tuple[str, list[ClipRow]]], tags: dict, finished: _Finished) -> None:
    """Run the pending shards of ``plan`` on the cluster, writing each shard and its part record
    (also added to ``finished``) and a bundle of every ``BUNDLE`` of them.

    A task encodes ``data.clips_per_task`` clips of one shard, so the driver's costs per task (its
    submission, its status, Ray's messages about it) are shared by that many rows; the rest is per
    wake-up (one ``ray.wait`` returns up to ``WAIT_BATCH`` finished tasks) or per shard, and the look for
    hung decodes visits only the tasks in flight for longer than the timeout. A task cancelled on a hung
    clip records that clip as a timeout and gives the others a new task; a task that keeps failing is
    split into one task per clip, so that only the clip that fails it is recorded.
    """
    data = job.options.data
    fourier_ref = ray.put(shards.fourier_members(tags, modality.position_features(job.options.modalities)))
    in_flight_cap = data.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo = collections.deque(_tasks(plan, job.missing, data.clips_per_task))
    results: dict[str, dict[str, tuple]] = {name: {} for name, _ in plan}
    expected = {name: [r.key for r in rows] for name, rows in plan}
    running: dict[ray.ObjectRef, tuple] = {}  # status ref -> shard, rows, members ref
    by_age: collections.deque[tuple[float, ray.ObjectRef]] = collections.deque()  # (submitted, status ref), in order
    writers: dict[ray.ObjectRef, dict] = {}  # -> the shard's part record
    bundles: list[ray.ObjectRef] = []
    unbundled: list[dict] = []
    clock_name = f"pav-start-clock-{uuid.uuid4().hex}"
    clock = _StartClock.options(name=clock_name).remote()
    setup = ray.put(_Setup(job.options, tags, clock_name))
    # Made remote here: Ray takes max_calls only where a remote function is made, not in .options().
    encode = ray.remote(num_returns=2, max_retries=3, num_cpus=job.task_cpus,
                        max_calls=-(-job.task_calls // data.clips_per_task))(_encode_task)
    written = 0
    next_scan = time.monotonic() + SCAN_S
    bar = tqdm(total=sum(len(rows) for _, rows in todo), unit="clip", desc="preprocess", mininterval=2.0,
               smoothing=0.1)

    def finish_clip(name: str, key: str, status: dict, members_ref: ray.ObjectRef | None = None,
                    position: int = 0) -> None:
        results[name][key] = (status, members_ref, position)
        if len(results[name]) == len(expected[name]):
            shard = results.pop(name)
            ordered = [shard[k] for k in expected[name]]
            part = _part(name, [st for st, _, _ in ordered])
            stored = [(m, i) for st, m, i in ordered if st["index_rows"]]
            batches = list(dict.fromkeys(m for m, _ in stored))  # each task's members once, in order
            writers[_write_task.remote(job.out, part, fourier_ref, [(batches.index(m), i) for m, i in stored],
                                       *batches)] = part

    for name, rows in plan:  # media never found: recorded without a task
        for r in rows:
            if r.key in job.missing:
                finish_clip(name, r.key, {"key": r.key, "index_rows": [], "failure": job.missing[r.key]})
    while todo or running or writers:
        # Writers hold whole shards: when storage falls behind, stop decoding until it catches up.
        while todo and len(running) < in_flight_cap and len(writers) < in_flight_cap:
            name, rows = todo.popleft()
            status_ref, members_ref = encode.remote(rows, setup)
            running[status_ref] = (name, rows, members_ref)
            by_age.append((time.monotonic(), status_ref))
        waiting = [*running, *writers]
        ready, _ = ray.wait(waiting, num_returns=min(len(waiting), WAIT_BATCH), timeout=WAIT_S, fetch_local=False)
        done = [ref for ref in ready if ref in running]
        for ref in ready:
            if ref in writers:
                part = writers.pop(ref)
                try:
                    part["bytes"] = ray.get(ref)
                except ray.exceptions.RayError as err:
                    cause = str(err).strip().splitlines()[-1]
                    raise StorageError(f"writing shard {part['shard']} to {job.out.shown} failed ({cause}); finished "
                                       f"shards are kept: fix the storage and rerun the same command") from None
                finished.add(part)
                unbundled.append(part)
                if len(unbundled) == BUNDLE:
                    bundles.append(_bundle_task.remote(job.out, unbundled))
                    unbundled = []
                written += 1
                faults.driver_shard_written(written)
        heard = []  # keys the start clock can forget
        for ref, statuses in zip(done, _statuses(done), strict=True):
            name, rows, members_ref = running.pop(ref)
            heard += [r.key for r in rows]
            if not isinstance(statuses, ray.exceptions.RayError):
                for position, (row, status) in enumerate(zip(rows, statuses, strict=True)):
                    finish_clip(name, row.key, status, members_ref, position)
                bar.update(len(rows))
            elif len(rows) > 1:  # Ray's retries are spent: one task per clip finds the clip that fails
                todo.extendleft((name, [r]) for r in rows)
            else:
                message = str(statuses).strip().splitlines()[-1][:300]
                finish_clip(name, rows[0].key, {"key": rows[0].key, "index_rows": [], "failure": failure_row(
                    rows[0], "worker", "worker_error", f"{rows[0].path}: {message}")})
                bar.update(1)
        if heard:
            clock.forget.remote(heard)
        now = time.monotonic()
        if now < next_scan:
            continue
        next_scan = now + SCAN_S
        while by_age and by_age[0][1] not in running:
            by_age.popleft()
        old = []  # only a task submitted longer than the timeout ago can have run longer than that
        for submitted, ref in by_age:
            if now - submitted <= data.decode_timeout_s:
                break
            if ref in running:
                old.append((submitted, ref))
        if not old:
            continue
        started = _running_for(clock, [r.key for _, ref in old for r in running[ref][1]])
        taken = 0
        for submitted, ref in old:
            name, rows, _ = running[ref]
            task_started = None if started is None else started[taken:taken + len(rows)]
            taken += len(rows)
            overdue, hung, worker = _overdue(rows, task_started, now - submitted, data.decode_timeout_s)
            if not overdue or not _attempt_running(ref, worker):
                continue
            ray.cancel(ref, force=True)
            del running[ref]
            clock.forget.remote([r.key for r in rows])  # a clip that runs again starts its clock again
            if hung is None:  # the clock is gone: one task per clip tells which one hangs
                todo.extendleft((name, [r]) for r in rows)
                continue
            finish_clip(name, hung.key, {"key": hung.key, "index_rows": [], "failure": failure_row(
                hung, "decode", "timeout", f"{hung.path}: decode took over {data.decode_timeout_s:.0f} s")})
            bar.update(1)
            if rest := [r for r in rows if r is not hung]:
                todo.appendleft((name, rest))
    bar.close()
    ray.kill(clock)
    if unbundled:
        bundles.append(_bundle_task.remote(job.out, unbundled))
    try:
        ray.get(bundles)
    except ray.exceptions.RayError as err:
        cause = str(err).strip().splitlines()[-1]
        raise StorageError(f"bundling part records in {job.out.shown} failed ({cause}); every shard is written: "
                           f"rerun the same command to finish") from None


def _part(name: str, statuses: list[dict]) -> dict:
    """A shard's part record; ``bytes`` is filled in when the shard is written."""
    return {"shard": name, "bytes": 0,
            "samples": [dict(r, shard=name) for s in statuses for r in s["index_rows"]],
            "failures": [s["failure"] for s in statuses if s["failure"]],
            # Where each clip was encoded (Ray node ids; clips recorded without a task have none).
            "nodes": dict(collections.Counter(s["node"] for s in statuses if s.get("node")))}


def _write_table(out: storage.Location, name: str, table: pa.Table, order: pa.Array | None = None) -> None:
    """``table`` (its rows in ``order``, if given) in row groups of ``ROW_GROUP`` rows, each taken as it is
    written: never a second copy of all rows."""
    with storage.atomic_output(out.fs, out.join(name)) as f, pq.ParquetWriter(f, table.schema) as writer:
        for start in range(0, max(table.num_rows, 1), ROW_GROUP):
            writer.write_table(table.slice(start, ROW_GROUP) if order is None
                               else table.take(order[start:start + ROW_GROUP]))


def _finalize(job: PreprocessJob, recipe: dict, started: float, finished: _Finished, phases: Phases) -> Summary:
    samples = finished.samples()
    clips = len(stored := _clips_of(samples))
    # A row retried into a later shard leaves its earlier failure behind: the sample wins.
    failures = sorted({f["key"]: f for f in finished.unresolved(stored)}.values(), key=lambda f: f["key"])
    failures += job.source_failures
    with phases("index"):
        _write_table(job.out, "index.parquet", samples, pc.sort_indices(samples, [("key", "ascending")]))
        _write_table(job.out, "failures.parquet", pa.Table.from_pylist(failures, schema=records.FAILURE_SCHEMA))
    by_reason = dict(collections.Counter(f["error"].split(":")[0] for f in failures))
    shard_names = sorted(finished.stored)
    kept = set(shard_names)
    for path in storage.list_files(job.out.fs, job.out.join("shards"), ".tar"):
        if path.rsplit("/", 1)[1] not in kept:  # written by a run killed before its part record
            storage.remove(job.out.fs, path)
    dataset = {
        "schema_version": shards.SCHEMA_VERSION,
        "decoder_version": DECODER_VERSION,
        "split": job.split,
        "recipe": recipe,
        "classes": [{"index": c.index, "mid": c.mid, "name": c.name} for c in job.classes],
        "counts": {"rows": clips + len(failures), "samples": samples.num_rows, "clips": clips,
                   "failures": len(failures),
                   "by_reason": by_reason, "shards": len(shard_names),
                   "bytes": int(pc.sum(samples["bytes"]).as_py() or 0)},
        "shards": [f"shards/{n}" for n in shard_names],
        "nodes": dict(sorted(finished.nodes.items())),  # Ray node id -> clips it encoded
        "config": dataclasses.asdict(job.options.data),
        "inputs": job.inputs,
    }
    storage.write_bytes(job.out.fs, job.out.join("dataset.json"), json.dumps(dataset, indent=2).encode())
    return Summary(samples.num_rows, clips, len(failures), by_reason, len(shard_names), time.time() - started, phases)


def run_preprocess(job: PreprocessJob) -> Summary:
    """Plan, skip finished shards, run the rest on Ray, and write index, failures and dataset.json."""
    started = time.time()
    phases = Phases()
    data = job.options.data
    recipe = recipe_record(data, job.options.modalities)
    tags = recipe["modalities"]
    with phases("plan"):
        storage.remove_stale_temporaries(job.out.fs, job.out.join("shards"))
        plan = plan_shards(job.rows, data.shard_size, job.split)
        plan_file = job.out.join("_plan.json")
        held = _check_same_dataset(job, plan_file, _plan_digest(plan), recipe, _read_plan(job.out.fs, plan_file))
        finished = _Finished(_index_schema(job.options.modalities))
        _load_parts(job.out, finished)
        if job.retry_failed:
            plan = _retry_plan(job, finished, list(held["shards"]))
            _check_same_dataset(job, plan_file, _plan_digest(plan), recipe, held)
        pending = [(name, rows) for name, rows in plan if name[: -len(".tar")] not in finished.names]
    done = len(plan) - len(pending)
    print(f"preprocess: {len(plan)} shards planned, {done} already complete, {len(pending)} to do "
          f"({sum(len(r) for _, r in pending)} clips) on {int(ray.cluster_resources().get('CPU', 0))} CPUs",
          flush=True)
    if pending:
        with phases("clips"):
            _execute(job, pending, tags, finished)
    with phases("finalize"):
        return _finalize(job, recipe, started, finished, phases)


def check_reachable(out: storage.Location) -> None:
    """Refuse a local path that some alive node cannot see (it would lose that node's shards)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not out.is_local or len(nodes) <= 1:
        return
    out.fs.create_dir(out.path, recursive=True)
    marker = out.join(f".reach-{os.getpid()}")
    storage.write_bytes(out.fs, marker, b"ok")
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(marker) for n in nodes])
    finally:
        storage.remove(out.fs, marker)
    if not all(seen):
        raise SystemExit(f"error: --out {out.shown} is a local path that {seen.count(False)} of {len(nodes)} nodes "
                         f"cannot see: use a shared mount or an object store URI (s3://, gs://)")
