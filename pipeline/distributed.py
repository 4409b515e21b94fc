"""Preprocessing on Ray: clips fan out as tasks, shards are written as they complete.

Why Ray tasks rather than Ray Data ``map_batches``: a decode can hang (decord loops forever on
some files) and must be bounded per clip. A task can be cancelled with ``force=True``, which
kills its worker process; a Ray Data block cannot be cut per clip, and Ray Data drops whole
blocks on errors. Each clip is one task (``max_calls`` recycles workers, since decord leaks
across readers); the driver holds only small status records and object references. When all
clips of a shard are in, one writer task streams their members into the shard, so bytes go
worker -> object store -> writer -> storage, never through the driver.

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
import dataclasses
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
import pyarrow.parquet as pq
import ray
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


@dataclass
class Summary:
    written: int
    failed: int
    by_reason: dict[str, int]
    shards: int
    seconds: float

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items())) or "none"
        return (f"preprocess: {self.written} samples in {self.shards} shards, {self.failed} failed "
                f"({reasons}) in {self.seconds:.0f} s")


@ray.remote(num_returns="streaming", max_retries=3, max_calls=100)
def _encode_task(row: ClipRow, options: EncodeOptions, tags: dict) -> Iterator:
    """Yields ``None`` once running (the decode timeout starts there, not at submission, so a queued
    task or a worker still importing torch on a busy node is never mistaken for a hung decode),
    then the clip's status and its members."""
    yield None
    faults.clip_task_started(row.key)
    res = encode_clip(row, options, tags)
    node = ray.get_runtime_context().get_node_id()
    yield {"key": res.key, "index_row": res.index_row, "failure": res.failure, "node": node}
    yield res.members


@ray.remote(num_cpus=0, max_retries=3)
def _write_task(out: storage.Location, name: str, fourier: list, *samples: list) -> int:
    if not samples:  # every clip of the shard failed: its part record alone says so
        return 0
    return shards.write_shard(out.child("shards"), name, fourier, samples)


def _plan_digest(plan: Sequence[tuple[str, list[ClipRow]]]) -> dict[str, str]:
    return {name: hashlib.sha256("\n".join(r.key for r in rows).encode()).hexdigest()[:16] for name, rows in plan}


def _check_same_dataset(job: PreprocessJob, plan_file: str, digest: dict[str, str], recipe: dict) -> None:
    """Refuse to mix two datasets in one directory; a rerun of the same command passes."""
    fs = job.out.fs
    record = {"split": job.split, "recipe": recipe, "classes": [c.mid for c in job.classes], "shards": digest}
    if storage.exists(fs, plan_file):
        held = json.loads(storage.read_bytes(fs, plan_file))
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
    storage.write_bytes(fs, plan_file, json.dumps(record, sort_keys=True).encode())


def _read_json(fs, paths: Iterable[str]) -> list:
    with ThreadPoolExecutor(READERS) as pool:  # the requests wait on the network, not on the GIL
        return list(pool.map(lambda p: json.loads(storage.read_bytes(fs, p)), paths))


def _load_parts(out: storage.Location) -> dict[str, dict]:
    """Finished shards (without ``.tar``) -> part record, from the bundles and the singles left."""
    parts = {p["shard"][: -len(".tar")]: p
             for bundle in _read_json(out.fs, storage.list_files(out.fs, out.join(BUNDLES), ".json")) for p in bundle}
    singles = [p for p in storage.list_files(out.fs, out.join(PARTS), ".json")
               if p.rsplit("/", 1)[1][: -len(".json")] not in parts]
    parts.update((p["shard"][: -len(".tar")], p) for p in _read_json(out.fs, singles))
    return dict(sorted(parts.items()))


@ray.remote(num_cpus=0, max_retries=3)
def _bundle_task(out: storage.Location, parts: list[dict]) -> None:
    """One bundle file for ``parts`` (a retried task may write a second: ``_load_parts`` reads both as one)."""
    storage.write_bytes(out.fs, out.join(BUNDLES, f"{parts[0]['shard'][:-len('.tar')]}-{uuid.uuid4().hex[:8]}.json"),
                        json.dumps(parts).encode())


def _part_path(out: storage.Location, shard: str) -> str:
    return out.join(PARTS, shard[: -len(".tar")] + ".json")


def _retry_plan(job: PreprocessJob, parts: dict[str, dict], planned: list[str]) -> list[tuple[str, list[ClipRow]]]:
    """Rows that failed in a clip stage (or whose media was missing) become new shards, named by
    a round no earlier plan used (a killed retry may have planned names it never wrote)."""
    by_key = {r.key: r for r in job.rows}
    failed = {f["key"] for p in parts.values() for f in p["failures"]} - {
        row["key"] for p in parts.values() for row in p["samples"]}
    retried = [by_key[k] for k in sorted(failed) if k in by_key and k not in job.missing]
    used = [int(n.split("-retry")[1].split("-")[0]) for n in planned if f"{job.split}-retry" in n]
    round_ = 1 + max(used, default=0)
    return plan_shards(retried, job.options.data.shard_size, f"{job.split}-retry{round_}")


def _execute(job: PreprocessJob, plan: list[tuple[str, list[ClipRow]]], tags: dict, parts: dict[str, dict]) -> None:
    """Run the pending shards of ``plan`` on the cluster, writing each shard and its part record
    (also added to ``parts``) and a bundle of every ``BUNDLE`` of them."""
    data = job.options.data
    fourier_ref = ray.put(shards.fourier_members(tags, modality.position_features(job.options.modalities)))
    in_flight_cap = data.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    todo = collections.deque((name, row) for name, rows in plan for row in rows if row.key not in job.missing)
    results: dict[str, dict[str, tuple]] = {name: {} for name, _ in plan}
    expected = {name: [r.key for r in rows] for name, rows in plan}
    for name, rows in plan:  # media never found: recorded without a task
        for r in rows:
            if r.key in job.missing:
                results[name][r.key] = ({"key": r.key, "index_row": None, "failure": job.missing[r.key]}, None)
    running: dict[ray.ObjectRef, tuple] = {}
    writers: dict[ray.ObjectRef, str] = {}
    bundles: list[ray.ObjectRef] = []
    unbundled: list[dict] = []
    encode = _encode_task.options(num_cpus=job.task_cpus)
    written = 0
    bar = tqdm(total=len(todo), unit="clip", desc="preprocess", mininterval=2.0, smoothing=0.1)

    def finish_clip(name: str, key: str, status: dict, members_ref) -> None:
        results[name][key] = (status, members_ref)
        bar.update(1)
        if len(results[name]) == len(expected[name]):
            ordered = [results[name][k] for k in expected[name]]
            refs = [m for s, m in ordered if s["index_row"] is not None]
            writers[_write_task.remote(job.out, name, fourier_ref, *refs)] = name

    def submit_shards_without_tasks() -> None:
        for name in expected:
            if expected[name] and len(results[name]) == len(expected[name]) and not any(
                    s["index_row"] for s, _ in results[name].values()):
                writers[_write_task.remote(job.out, name, fourier_ref)] = name

    submit_shards_without_tasks()
    while todo or running or writers:
        # Writers hold whole shards: when storage falls behind, stop decoding until it catches up.
        while todo and len(running) < in_flight_cap and len(writers) < in_flight_cap:
            name, row = todo.popleft()
            running[encode.remote(row, job.options, tags)] = (name, row, None)
        ready, _ = ray.wait([*running, *writers], num_returns=1, timeout=1.0, fetch_local=True)
        for ref in ready:
            if ref in writers:
                name = writers.pop(ref)
                try:
                    size = ray.get(ref)
                except ray.exceptions.RayError as err:
                    cause = str(err).strip().splitlines()[-1]
                    raise StorageError(f"writing shard {name} to {job.out.shown} failed ({cause}); finished shards "
                                       f"are kept: fix the storage and rerun the same command") from None
                part = _write_part(job.out, name, results.pop(name), size)
                parts[name[: -len(".tar")]] = part
                unbundled.append(part)
                if len(unbundled) == BUNDLE:
                    bundles.append(_bundle_task.remote(job.out, unbundled))
                    unbundled = []
                written += 1
                faults.driver_shard_written(written)
                continue
            name, row, started = running[ref]
            try:
                if started is None:
                    ray.get(next(ref))  # it runs: the decode clock starts now
                    running[ref] = (name, row, time.monotonic())
                    continue
                del running[ref]
                status, members_ref = ray.get(next(ref)), next(ref)
            except ray.exceptions.RayError as err:  # task error, crashed worker, lost object, dead node
                running.pop(ref, None)
                members_ref = None
                message = str(err).strip().splitlines()[-1][:300]
                status = {"key": row.key, "index_row": None,
                          "failure": failure_row(row, "worker", "worker_error", f"{row.path}: {message}")}
            finish_clip(name, row.key, status, members_ref)
        now = time.monotonic()
        for ref, (name, row, started) in list(running.items()):
            if started is not None and now - started > data.decode_timeout_s:
                ray.cancel(ref, force=True)
                running.pop(ref)
                finish_clip(name, row.key, {"key": row.key, "index_row": None, "failure": failure_row(
                    row, "decode", "timeout", f"{row.path}: decode took over {data.decode_timeout_s:.0f} s")},
                    None)
    bar.close()
    if unbundled:
        bundles.append(_bundle_task.remote(job.out, unbundled))
    try:
        ray.get(bundles)
    except ray.exceptions.RayError as err:
        cause = str(err).strip().splitlines()[-1]
        raise StorageError(f"bundling part records in {job.out.shown} failed ({cause}); every shard is written: "
                           f"rerun the same command to finish") from None


def _write_part(out: storage.Location, name: str, results: dict[str, tuple], size: int) -> dict:
    statuses = [s for s, _ in results.values()]
    part = {"shard": name, "bytes": size,
            "samples": [dict(s["index_row"], shard=name) for s in statuses if s["index_row"]],
            "failures": [s["failure"] for s in statuses if s["failure"]],
            # Where each clip was encoded (Ray node ids; clips recorded without a task have none).
            "nodes": dict(collections.Counter(s["node"] for s in statuses if s.get("node")))}
    storage.write_bytes(out.fs, _part_path(out, name), json.dumps(part).encode())
    return part


def _write_table(out: storage.Location, name: str, rows: list[dict], schema: pa.Schema) -> None:
    """Row groups of ``ROW_GROUP`` rows, each made from its slice of dicts: never a second copy of all rows."""
    with storage.atomic_output(out.fs, out.join(name)) as f, pq.ParquetWriter(f, schema) as writer:
        for start in range(0, max(len(rows), 1), ROW_GROUP):
            writer.write_table(pa.Table.from_pylist(rows[start:start + ROW_GROUP], schema=schema))


def _finalize(job: PreprocessJob, recipe: dict, started: float, parts: dict[str, dict]) -> Summary:
    samples = sorted((s for p in parts.values() for s in p["samples"]), key=lambda s: s["key"])
    sampled = {s["key"] for s in samples}
    # A row retried into a later shard leaves its earlier failure behind: the sample wins.
    failures = [f for p in parts.values() for f in p["failures"] if f["key"] not in sampled]
    failures = sorted({f["key"]: f for f in failures}.values(), key=lambda f: f["key"]) + job.source_failures
    per_modality = [(c, t) for m in job.options.modalities
                    for c, t in ((f"has_{m.name}", pa.bool_()), (m.length_key, pa.int64()))]
    _write_table(job.out, "index.parquet", samples, records.schema(records.IndexRow, per_modality))
    _write_table(job.out, "failures.parquet", failures, records.FAILURE_SCHEMA)
    by_reason = dict(collections.Counter(f["error"].split(":")[0] for f in failures))
    shard_names = sorted(p["shard"] for p in parts.values() if p["samples"])
    kept = set(shard_names)
    for path in storage.list_files(job.out.fs, job.out.join("shards"), ".tar"):
        if path.rsplit("/", 1)[1] not in kept:  # written by a run killed before its part record
            storage.remove(job.out.fs, path)
    nodes = collections.Counter()
    for p in parts.values():
        nodes.update(p.get("nodes", {}))
    dataset = {
        "schema_version": shards.SCHEMA_VERSION,
        "decoder_version": DECODER_VERSION,
        "split": job.split,
        "recipe": recipe,
        "classes": [{"index": c.index, "mid": c.mid, "name": c.name} for c in job.classes],
        "counts": {"rows": len(samples) + len(failures), "samples": len(samples), "failures": len(failures),
                   "by_reason": by_reason, "shards": len(shard_names),
                   "bytes": int(sum(s["bytes"] for s in samples))},
        "shards": [f"shards/{n}" for n in shard_names],
        "nodes": dict(sorted(nodes.items())),  # Ray node id -> clips it encoded
        "config": dataclasses.asdict(job.options.data),
        "inputs": job.inputs,
    }
    storage.write_bytes(job.out.fs, job.out.join("dataset.json"), json.dumps(dataset, indent=2).encode())
    return Summary(len(samples), len(failures), by_reason, len(shard_names), time.time() - started)


def run_preprocess(job: PreprocessJob) -> Summary:
    """Plan, skip finished shards, run the rest on Ray, and write index, failures and dataset.json."""
    started = time.time()
    data = job.options.data
    recipe = recipe_record(data, job.options.modalities)
    tags = recipe["modalities"]
    storage.remove_stale_temporaries(job.out.fs, job.out.join("shards"))
    plan = plan_shards(job.rows, data.shard_size, job.split)
    _check_same_dataset(job, job.out.join("_plan.json"), _plan_digest(plan), recipe)
    parts = _load_parts(job.out)
    if job.retry_failed:
        planned = json.loads(storage.read_bytes(job.out.fs, job.out.join("_plan.json")))["shards"]
        plan = _retry_plan(job, parts, list(planned))
        _check_same_dataset(job, job.out.join("_plan.json"), _plan_digest(plan), recipe)
    pending = [(name, rows) for name, rows in plan if name[: -len(".tar")] not in parts]
    done = len(plan) - len(pending)
    print(f"preprocess: {len(plan)} shards planned, {done} already complete, {len(pending)} to do "
          f"({sum(len(r) for _, r in pending)} clips) on {int(ray.cluster_resources().get('CPU', 0))} CPUs",
          flush=True)
    if pending:
        _execute(job, pending, tags, parts)
    return _finalize(job, recipe, started, parts)


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
