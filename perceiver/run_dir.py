"""The run directory (``--out``, a path or URI) and its bookkeeping:

    run_config.json      the config and training set of the run; a resume with another model, data,
                         inputs, sampler or training set is refused
    metrics.jsonl        one JSON record per optimizer step (and per evaluation), each step once; a step's
                         record counts what the readers skipped for it (pipeline.shards.SKIPPED)
    events.jsonl         one record per start of the worker group: "started", or "resumed" at a step, with
                         the Ray node id of each rank
    tensorboard/         the same scalars for TensorBoard (on an object store: written locally, uploaded at each flush)
    ray/train/           Ray Train's run state and checkpoints (perceiver.training, perceiver.trainer)
    model.pt, model.json final weights (a plain state dict) and the config and classes to load them
    eval.json            final metrics: all modalities together, and each alone
    plots/               loss and mAP curves, per-class AP (drawn locally and uploaded to an object store)
"""

from __future__ import annotations

import json
import math
import reprlib
import tempfile
import time

from perceiver.classifier import AVClassifier
from perceiver.config import Config, to_dict
from perceiver.evaluation import modality_sets
from perceiver.loader import class_balance
from perceiver.progress import say
from perceiver.saved import save_model
from pipeline import shards, storage
from pipeline.dataset import DatasetInfo


def record_event(out: storage.Location, event: str, step: int, nodes: list[str]) -> None:
    """Append to ``events.jsonl``: each (re)start of the worker group, so restarts leave a trace, and
    where its workers ran (``nodes``: each rank's Ray node id)."""
    path = out.join("events.jsonl")
    old = storage.read_bytes(out.fs, path) if storage.exists(out.fs, path) else b""
    line = json.dumps({"event": event, "step": step, "workers": len(nodes), "nodes": nodes, "time": time.time()}) + "\n"
    storage.write_bytes(out.fs, path, old + line.encode())


class MetricsLog:
    """``metrics.jsonl`` with each step once: a resumed run first drops records past its checkpoint."""

    def __init__(self, out: storage.Location, resume_step: int):
        self.out, self.path = out, out.join("metrics.jsonl")
        self.records = [r for r in read_metrics(out) if r.get("step", 0) <= resume_step]
        self._rewrite()
        self._file = open(self.path, "a") if out.is_local else None  # noqa: SIM115 (kept open for appends)
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard writes a local folder: on an object store, a temporary one uploaded at each flush.
        self._staged = None if out.is_local else tempfile.TemporaryDirectory(prefix="pav-tensorboard-")
        self.tb = SummaryWriter(self._staged.name if self._staged else out.join("tensorboard"),
                                purge_step=resume_step + 1)

    def _rewrite(self) -> None:
        storage.write_bytes(self.out.fs, self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())

    def add(self, record: dict) -> None:
        if "eval_mAP" in record:  # a rerun of a finished run evaluates again: keep one record per step
            self.records = [r for r in self.records if not (r["step"] == record["step"] and "eval_mAP" in r)]
        self.records.append(record)
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, record["step"])

    def flush(self) -> None:
        if self._file:
            self._file.flush()
        else:
            self._rewrite()
        self.tb.flush()
        self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        if self._staged:
            storage.upload_folder(self._staged.name, self.out.child("tensorboard"))

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        self._rewrite()  # the appended file may hold a record that add() has since replaced
        self.tb.close()
        self._upload_tensorboard()
        if self._staged:
            self._staged.cleanup()


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None  # a line torn by a kill mid-write


def read_metrics(out: storage.Location) -> list[dict]:
    """The records of ``out``'s metrics.jsonl (none when it has none yet)."""
    if not storage.exists(out.fs, out.join("metrics.jsonl")):
        return []
    lines = storage.read_bytes(out.fs, out.join("metrics.jsonl")).decode().splitlines()
    return [r for r in map(_parse, lines) if r is not None]


def eval_record(result: dict, step: int, names: list[str]) -> dict:
    """Flatten an evaluation into one metrics.jsonl record: all modalities as ``eval_*``, one alone as
    ``eval_<name>_*``."""
    record = {"step": step}
    for i, name in enumerate(n for n in modality_sets(names) if n in result):
        prefix = "eval_" if i == 0 else f"eval_{name}_"
        record.update({f"{prefix}mAP": result[name]["mAP"], f"{prefix}auc": result[name]["mean_auc"],
                       f"{prefix}d_prime": result[name]["d_prime"]})
    return record


def skipped_line(records: list[dict]) -> str:
    """The run's total of each kind of skip, over the step records (so resumes count each step once)."""
    totals = {kind: sum(r.get(kind, 0) for r in records) for kind in shards.SKIPPED}
    return "skipped while reading: " + " ".join(f"{kind}={n}" for kind, n in totals.items())


def finish(model: AVClassifier, info: DatasetInfo, result: dict | None, *, cfg: Config, out: storage.Location,
           log: MetricsLog) -> None:
    """Rank 0 after the last step: final weights, the final evaluation's record, plots, and last the
    line that says what the readers skipped."""
    save_model(out, model, cfg, classes=list(info.classes), recipe=info.recipe, train_root=info.root)
    names = list(cfg.inputs.modalities)
    sets = list(modality_sets(names))
    if result is not None:
        log.add(eval_record(result, cfg.train.steps, names))
        storage.write_bytes(out.fs, out.join("eval.json"), json.dumps(result, indent=2).encode())
        say("final eval: " + " ".join(f"{n} mAP={result[n]['mAP']:.3f}" for n in sets))
    log.close()
    from perceiver import plots  # matplotlib: a second of import that only the run's end needs

    with storage.local_folder(out.child("plots")) as plot_dir:
        plots.save(plots.curves_figure(log.records, ys=("loss",), title="training loss"), f"{plot_dir}/loss.png")
        maps = ("eval_mAP", *(f"eval_{n}_mAP" for n in sets[1:]))
        plots.save(plots.curves_figure(log.records, ys=maps, title="eval mAP"), f"{plot_dir}/map.png")
        if result is not None:
            plots.save(plots.per_class_ap_figure(result[sets[0]]["per_class_ap"], info.class_names,
                                                 title=f"per-class AP ({sets[0]})"), f"{plot_dir}/per_class_ap.png")
    say(skipped_line(log.records))


def _with_defaults(held: dict, defaults: dict) -> dict:
    """``held`` with every field it lacks (recursively) taken from ``defaults``."""
    return {**{k: _with_defaults(held[k], v) if isinstance(v, dict) and isinstance(held.get(k), dict)
               else held.get(k, v) for k, v in defaults.items()},
            **{k: v for k, v in held.items() if k not in defaults}}


class RunMismatchError(ValueError):
    """``--out`` holds a run made with another model, recipe or input layout."""


# What a resumed run must share with its checkpoints, by section (None: every field). train.* may
# otherwise change, but the optimizer and schedule state come from the checkpoint, so a new train.lr
# or warm-up does not apply to a resume; the sampler sets which clips the resumed stream draws.
_RUN_DEFINING = {"model": None, "data": None, "inputs": None, "train": ("sampler",), "dataset": None}
_SHOWN = reprlib.Repr()  # a refusal stays one readable line, even for class counts
_SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring = 8, 50, 300


def check_same_run(out: storage.Location, cfg: Config, info: DatasetInfo) -> None:
    """Record the run's config and training set on first start; refuse to resume it with another
    model, recipe, sampler or training set (its shards and sample count fix the data order; with
    the balanced sampler its class counts, from ``index.parquet``, fix the weights; stored windows,
    their count and seed)."""
    path = out.join("run_config.json")
    current = {**to_dict(cfg), "dataset": {"root": info.root, "shards": len(info.shards),
                                           "samples": info.num_samples}}
    if cfg.train.sampler == "balanced":
        current["dataset"]["class_counts"] = list(class_balance(info).class_counts)
    if info.recipe.get("train_windows"):  # stored windows regenerated with another seed are other data
        current["dataset"]["windows"] = {k: info.recipe[k] for k in ("train_windows", "window_seed")}
    if storage.exists(out.fs, path):
        held = json.loads(storage.read_bytes(out.fs, path))
        defaults = to_dict(Config())  # a field newer than the run counts as its default, at any depth
        for section, keys in _RUN_DEFINING.items():
            recorded = _with_defaults(held.get(section, {}), defaults.get(section, {}))
            for key, value in current[section].items():
                was = recorded.get(key)
                if (keys is None or key in keys) and was != value:
                    raise RunMismatchError(
                        f"{out.shown} holds a run with {section}.{key}={_SHOWN.repr(was)}, this run "
                        f"has {_SHOWN.repr(value)}: resume with the run's config and --train, or choose a new --out")
    storage.write_bytes(out.fs, path, json.dumps(current, indent=2).encode())
