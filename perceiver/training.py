"""Training on Ray Train: the per-worker loop, checkpoints, resume and the run directory.

Run directory (``--out``, a path or URI):

    run_config.json      the config of the run; a resume with another model/data/inputs is refused
    metrics.jsonl        one JSON record per optimizer step (and per evaluation), each step once
    events.jsonl         one record per start of the worker group: "started", or "resumed" at a step
    tensorboard/         the same scalars for TensorBoard (local outputs)
    ray/train/           Ray Train's run state and checkpoints (model, optimizer, scheduler,
                         step, torch RNG state, data position), loaded with weights_only=True
    model.pt, model.json final weights (a plain state dict) and the config and classes to load them
    eval.json            final metrics: A+V, audio only, video only
    plots/               loss and mAP curves, per-class AP

Resume: rerunning with the same ``--out`` attaches to the same Ray Train run
(``RunConfig(storage_path=<out>/ray, name="train")``); ``ray.train.get_checkpoint()`` then
returns the latest checkpoint and the loop continues at its step, replaying the data stream
to the same position, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from perceiver import evaluation, plots
from perceiver.classifier import AVClassifier
from perceiver.config import Config, config_from_dict, to_dict
from perceiver.loader import DatasetInfo, TrainStream, open_dataset, train_batches
from perceiver.optim import build_optimizer, build_schedule
from perceiver.recipe import modality_specs
from perceiver.saved import save_model
from pipeline import faults, features, shards, storage

STATE_FILE = "state.pt"


def shard_position_features(info: DatasetInfo, cfg: Config) -> dict[str, torch.Tensor] | None:
    """The shard's Fourier features when the dataset says to use them, checked against the model's."""
    if cfg.data.fourier_source != "shard":
        return None
    tags, feats = shards.read_fourier(info.shards[0])
    for spec in modality_specs(cfg.data, cfg.inputs.modalities):
        expected = features.position_features(spec)
        got = feats.get(spec.name)
        if got is None or got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-5):
            raise ValueError(f"{info.shards[0]}: the {spec.name} Fourier features in the shard differ from "
                             f"perceiver.fourier_features for grid {spec.grid}: the shards were written by another "
                             f"version or recipe; preprocess again")
    return {name: torch.from_numpy(np.array(f)) for name, f in feats.items() if name in cfg.inputs.modalities}


def _say(message: str) -> None:
    # Ray Train patches print() on its workers to log through Ray *and* print, which shows every
    # line twice on the driver; writing to stdout directly shows it once.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _record_event(out: storage.Location, event: str, step: int, world: int) -> None:
    """Append to ``events.jsonl``: each (re)start of the worker group, so restarts leave a trace."""
    path = out.join("events.jsonl")
    old = storage.read_bytes(out.fs, path) if storage.exists(out.fs, path) else b""
    line = json.dumps({"event": event, "step": step, "workers": world, "time": time.time()}) + "\n"
    storage.write_bytes(out.fs, path, old + line.encode())


class MetricsLog:
    """``metrics.jsonl`` with each step once: a resumed run first drops records past its checkpoint."""

    def __init__(self, out: storage.Location, resume_step: int):
        self.out, self.path = out, out.join("metrics.jsonl")
        self.records: list[dict] = []
        if storage.exists(out.fs, self.path):
            lines = storage.read_bytes(out.fs, self.path).decode().splitlines()
            self.records = [r for r in map(_parse, lines) if r is not None and r.get("step", 0) <= resume_step]
        self._rewrite()
        self._file = open(self.path, "a") if out.is_local else None  # noqa: SIM115 (kept open for appends)
        self.tb = None
        if out.is_local:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(out.join("tensorboard"), purge_step=resume_step + 1)

    def _rewrite(self) -> None:
        storage.write_bytes(self.out.fs, self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())

    def add(self, record: dict) -> None:
        if "eval_mAP" in record:  # a rerun of a finished run evaluates again: keep one record per step
            self.records = [r for r in self.records if not (r["step"] == record["step"] and "eval_mAP" in r)]
        self.records.append(record)
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        if self.tb:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def flush(self) -> None:
        if self._file:
            self._file.flush()
        else:
            self._rewrite()
        if self.tb:
            self.tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        self._rewrite()  # the appended file may hold a record that add() has since replaced
        if self.tb:
            self.tb.close()


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None  # a line torn by a kill mid-write


@dataclass
class Progress:
    """A progress line at a steady interval: step, loss, samples/s, learning rate, ETA."""

    total: int
    every_s: float
    start_step: int
    samples_per_step: int
    started: float = 0.0
    last: float = 0.0
    last_step: int = 0

    def __post_init__(self):
        self.started = self.last = time.monotonic()
        self.last_step = self.start_step

    def maybe_print(self, step: int, loss: float, lr: float) -> None:
        """samples/s is over the interval since the last line (checkpoints and evaluations included)."""
        now = time.monotonic()
        if now - self.last < self.every_s and step != self.total:
            return
        samples_per_s = (step - self.last_step) * self.samples_per_step / max(now - self.last, 1e-9)
        steps_per_s = (step - self.start_step) / max(now - self.started, 1e-9)
        self.last, self.last_step = now, step
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        _say(f"step {step}/{self.total} loss {loss:.4f} samples/s {samples_per_s:.1f} lr {lr:.2e} eta {eta_text}")


def _seeded_generator(device: torch.device, *seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))
    return g


def train_loop_per_worker(loop_config: dict) -> None:
    """The Ray Train worker loop. ``loop_config``: config (dict), train, eval and out (paths/URIs)."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    out = storage.locate(loop_config["out"])
    info = open_dataset(loop_config["train"])
    eval_info = open_dataset(loop_config["eval"]) if loop_config.get("eval") else None

    torch.manual_seed(t.seed)
    model = AVClassifier(cfg, len(info.classes), shard_position_features(info, cfg)).to(device)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    optimizer = build_optimizer(model, t.lr, t.weight_decay)
    schedule = build_schedule(optimizer, t.warmup_steps, t.steps)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step = int(state["step"])
    if rank == 0:
        _record_event(out, "resumed" if step else "started", step, world)
        if step:
            _say(f"resuming from the checkpoint at step {step}")

    batches_per_step = t.grad_accum
    steps_per_epoch = t.steps_per_epoch or max(1, info.num_samples // (t.batch_size * world * batches_per_step))
    autocast = torch.bfloat16 if device.type == "cuda" else None
    log = MetricsLog(out, step) if rank == 0 else None
    progress = Progress(t.steps, t.log_every_s, step, t.batch_size * batches_per_step * world)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    batches, epoch_of_batches = None, -1
    tick = time.monotonic()

    while step < t.steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != epoch_of_batches:  # a new epoch, or the resumed one replayed to its position
            stream = TrainStream(info, cfg.data, t.batch_size, t.seed, epoch, rank, world,
                                 steps_per_epoch * batches_per_step, in_epoch * batches_per_step, t.shuffle_buffer,
                                 t.loader_workers)
            batches, epoch_of_batches = train_batches(stream), epoch
        generator = _seeded_generator(device, t.seed, step, rank)
        total_loss = 0.0
        for micro in range(batches_per_step):
            batch = next(batches).to(device)
            sync = micro == batches_per_step - 1
            with ddp_model.no_sync() if (not sync and world > 1) else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    logits = ddp_model(batch, generator)
                loss = loss_fn(logits.float(), batch.labels) / batches_per_step
                loss.backward()
            total_loss += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = schedule.get_last_lr()[0]
        schedule.step()
        step += 1
        now = time.monotonic()
        samples_per_s = t.batch_size * batches_per_step * world / max(now - tick, 1e-9)
        tick = now
        metrics = {"step": step, "epoch": epoch, "loss": total_loss, "lr": lr, "grad_norm": float(grad_norm),
                   "samples_per_s": samples_per_s}
        if log:
            log.add(metrics)
            progress.maybe_print(step, total_loss, lr)
        faults.train_step_done(step)
        if t.eval_every and step % t.eval_every == 0 and step < t.steps and eval_info is not None:
            result = _evaluate(model, eval_info, cfg, device, autocast, rank, world, ("audio+video",))
            if log:
                log.add(_eval_record(result, step))
                _say(f"eval step {step}: audio+video mAP={result['audio+video']['mAP']:.3f}")
        if step % t.checkpoint_every == 0 or step == t.steps:
            _report(model, optimizer, schedule, step, steps_per_epoch, metrics, rank, log)

    result = _evaluate(model, eval_info, cfg, device, autocast, rank, world, tuple(evaluation.MODALITY_SETS)) \
        if eval_info is not None else None
    if rank == 0:
        _finish(model, info, result, cfg, out, log)
    _barrier(world)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _report(model, optimizer, schedule, step: int, steps_per_epoch: int, metrics: dict, rank: int,
            log: MetricsLog | None) -> None:
    import ray.train
    from ray.train import Checkpoint

    if log:
        log.flush()
    if rank != 0:
        ray.train.report(metrics)
        return
    epoch, in_epoch = divmod(step, steps_per_epoch)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "step": step, "epoch": epoch, "batch_in_epoch": in_epoch, "torch_rng": torch.get_rng_state()}
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, STATE_FILE))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def _eval_record(result: dict, step: int) -> dict:
    """Flatten an evaluation into one metrics.jsonl record (A+V as ``eval_*``)."""
    record = {"step": step}
    for name in (n for n in ("audio+video", "audio", "video") if n in result):
        prefix = "eval_" if name == "audio+video" else f"eval_{name}_"
        record.update({f"{prefix}mAP": result[name]["mAP"], f"{prefix}auc": result[name]["mean_auc"],
                       f"{prefix}d_prime": result[name]["d_prime"]})
    return record


def _evaluate(model: AVClassifier, eval_info: DatasetInfo, cfg: Config, device: torch.device, autocast, rank: int,
              world: int, modality_sets: tuple[str, ...]) -> dict | None:
    """Every rank scores its share of the evaluation shards; rank 0 gathers them and gets the metrics."""
    part = dataclasses.replace(eval_info, shards=eval_info.shards[rank::world])
    scored = evaluation.score(model, part, cfg.train.batch_size, cfg.train.eval_crops, device, modality_sets, autocast)
    gathered = [scored]
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, scored)
    if rank != 0:
        return None
    scores = {name: np.concatenate([g[0][name] for g in gathered]) for name in modality_sets}
    return evaluation.metrics(scores, np.concatenate([g[1] for g in gathered]), [g[2] for g in gathered], eval_info.root)


def _finish(model: AVClassifier, info: DatasetInfo, result: dict | None, cfg: Config, out: storage.Location,
            log: MetricsLog) -> None:
    """Rank 0 after the last step: final weights, the final evaluation's record, plots."""
    save_model(out, model, cfg, list(info.classes), info.recipe, info.root)
    if result is not None:
        log.add(_eval_record(result, cfg.train.steps))
        storage.write_bytes(out.fs, out.join("eval.json"), json.dumps(result, indent=2).encode())
        _say("final eval: " + " ".join(f"{n} mAP={result[n]['mAP']:.3f}" for n in ("audio+video", "audio", "video")))
    log.close()
    if out.is_local:
        plot_dir = out.join("plots")
        plots.plot_curves(log.records, f"{plot_dir}/loss.png", ys=("loss",), title="training loss")
        plots.plot_curves(log.records, f"{plot_dir}/map.png", ys=("eval_mAP", "eval_audio_mAP", "eval_video_mAP"),
                          title="eval mAP")
        if result is not None:
            plots.plot_per_class_ap(result["audio+video"]["per_class_ap"], info.class_names,
                                    f"{plot_dir}/per_class_ap.png", title="per-class AP (A+V)")


class RunMismatchError(ValueError):
    """``--out`` holds a run made with another model, recipe or input layout."""


# Sections a resumed run must share with its checkpoints. train.* may change, but the optimizer and
# schedule state come from the checkpoint, so a new train.lr or warm-up does not apply to a resume.
_RUN_DEFINING = ("model", "data", "inputs")


def check_same_run(out: storage.Location, cfg: Config, info: DatasetInfo) -> None:
    """Record the run's config and training set on first start; refuse to resume it with another
    model, recipe or training set (its shards and sample count fix the data order)."""
    path = out.join("run_config.json")
    current = {**to_dict(cfg), "dataset": {"root": info.root, "shards": len(info.shards),
                                           "samples": info.num_samples}}
    if storage.exists(out.fs, path):
        held = json.loads(storage.read_bytes(out.fs, path))
        for section in (*_RUN_DEFINING, "dataset"):
            for key, value in current[section].items():
                if held.get(section, {}).get(key) != value:
                    raise RunMismatchError(
                        f"{out.uri} holds a run with {section}.{key}={held.get(section, {}).get(key)!r}, this run "
                        f"has {value!r}: resume with the run's config and --train, or choose a new --out")
    storage.write_bytes(out.fs, path, json.dumps(current, indent=2).encode())


def fit(cfg: Config, train: str, eval_: str | None, out: storage.Location, num_workers: int, use_gpu: bool,
        resources_per_worker: dict | None = None):
    """Run (or resume) training on the attached Ray cluster; raises ray.train.TrainingFailedError
    once ``train.max_failures`` restarts are spent."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "train": train, "eval": eval_, "out": out.uri},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name="train",
            storage_path=out.child("ray").uri,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    return trainer.fit()
