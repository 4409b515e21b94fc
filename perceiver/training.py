"""The Ray Train worker loop: model, optimizer, the rank's batches, checkpoints and evaluation.

Checkpoints (``ray/train/`` of the run directory) hold model, optimizer, scheduler, step, torch RNG
state and the data position, and are loaded with weights_only=True.

Each step's record also counts what the readers skipped (``pipeline.shards.SKIPPED``), summed over
the step's batches and over the ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time

import numpy as np
import torch

from perceiver import evaluation
from perceiver.attention import attention_kernels
from perceiver.classifier import AVClassifier
from perceiver.config import Config, config_from_dict
from perceiver.inputs import Mix
from perceiver.loader import TrainStream, class_balance, train_batches
from perceiver.optim import build_optimizer, build_schedule
from perceiver.progress import Progress, say
from perceiver.run_dir import MetricsLog, eval_record, finish, record_event
from pipeline import faults, shards, storage
from pipeline.dataset import DatasetInfo, open_dataset

STATE_FILE = "state.pt"


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
    # The shards' Fourier features, read once by open_dataset; the input module checks them.
    given = info.position_features if cfg.data.fourier_source == "shard" else None
    model = AVClassifier(cfg, len(info.classes), given).to(device)
    if t.compile:
        model.perceiver.compile()  # in place: the state dict keeps its keys
    # No buffers need syncing (the position features are constants); gradients share DDP's buckets.
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy_kwargs={
        "broadcast_buffers": False, "gradient_as_bucket_view": True})
    optimizer = build_optimizer(model, t.lr, t.weight_decay)
    schedule = build_schedule(optimizer, t.warmup_steps, t.steps)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # Each rank its own copy, not checkpoint.as_directory(): the download directory it shares between
        # ranks on one host is deleted by the first rank done with it, under a rank still reading it.
        with tempfile.TemporaryDirectory() as d:
            state = torch.load(os.path.join(checkpoint.to_directory(d), STATE_FILE), map_location=device,
                               weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step = int(state["step"])
    nodes = _gathered(ray.get_runtime_context().get_node_id(), world)  # where each rank runs, for events.jsonl
    if rank == 0:
        # Built on every device, so that CPU runs check this call too; said where it names GPU kernels.
        kernels = attention_kernels(model.perceiver, model.inputs.num_tokens, torch.bfloat16, device)
        if device.type == "cuda":
            say(kernels)
        record_event(out, "resumed" if step else "started", step, nodes)
        if step:
            say(f"resuming from the checkpoint at step {step}")

    batches_per_step = t.grad_accum
    steps_per_epoch = t.steps_per_epoch or max(1, info.num_samples // (t.batch_size * world * batches_per_step))
    autocast = torch.bfloat16 if device.type == "cuda" else None
    log = MetricsLog(out, step) if rank == 0 else None
    progress = Progress(t.steps, t.log_every_s, step, t.batch_size * batches_per_step * world)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    balance = class_balance(info) if t.sampler == "balanced" else None  # index.parquet, read once per start
    model.train()
    batches, epoch_of_batches = None, -1
    tick = time.monotonic()

    while step < t.steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != epoch_of_batches:  # a new epoch, or the resumed one replayed to its position
            stream = TrainStream(info, model.modalities, batch_size=t.batch_size, seed=t.seed, epoch=epoch, rank=rank,
                                 world=world, steps=steps_per_epoch * batches_per_step,
                                 skip=in_epoch * batches_per_step, shuffle_buffer=t.shuffle_buffer,
                                 loader_workers=t.loader_workers, balance=balance)
            batches, epoch_of_batches = train_batches(stream), epoch
        generator = _seeded_generator(device, t.seed, step, rank)
        total_loss, skipped = 0.0, torch.zeros(len(shards.SKIPPED), dtype=torch.int64)
        for micro in range(batches_per_step):
            batch = next(batches)
            skipped += torch.tensor([batch.read.skipped()[kind] for kind in shards.SKIPPED])
            batch = batch.to(device)
            # Off, mixup draws nothing: the step's generator then gives augmentation and dropout what it did before.
            mix = Mix.draw(generator, len(batch), prob=t.mixup.prob, alpha=t.mixup.alpha) if t.mixup.prob else None
            sync = micro == batches_per_step - 1
            with ddp_model.no_sync() if (not sync and world > 1) else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    logits = ddp_model(batch, generator, augment=t.augment, mix=mix)
                targets = batch.labels if mix is None else mix.targets(batch.labels)
                loss = loss_fn(logits.float(), targets) / batches_per_step
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
        skips = dict(zip(shards.SKIPPED, _sum_over_ranks(skipped, device, world), strict=True))
        metrics = {"step": step, "epoch": epoch, "loss": total_loss, "lr": lr, "grad_norm": float(grad_norm),
                   "samples_per_s": samples_per_s, **skips}
        if log:
            log.add(metrics)
            progress.maybe_print(step, total_loss, lr)
        faults.train_step_done(step)
        if t.eval_every and step % t.eval_every == 0 and step < t.steps and eval_info is not None:
            every = next(iter(evaluation.modality_sets(cfg.inputs.modalities)))  # all modalities together
            result = _evaluate(model, eval_info, cfg, device=device, autocast=autocast, rank=rank, world=world,
                               sets=(every,))
            if log:
                log.add(eval_record(result, step, cfg.inputs.modalities))
                say(f"eval step {step}: {every} mAP={result[every]['mAP']:.3f}")
        if step % t.checkpoint_every == 0 or step == t.steps:
            _report(model, optimizer, schedule, step=step, steps_per_epoch=steps_per_epoch, metrics=metrics, rank=rank,
                    log=log)

    sets = tuple(evaluation.modality_sets(cfg.inputs.modalities))
    result = None if eval_info is None else _evaluate(model, eval_info, cfg, device=device, autocast=autocast,
                                                      rank=rank, world=world, sets=sets)
    if rank == 0:
        finish(model, info, result, cfg=cfg, out=out, log=log)
    _barrier(world)


def _sum_over_ranks(counts: torch.Tensor, device: torch.device, world: int) -> list[int]:
    """Every rank's int64 counts added up (each rank calls this at the same step)."""
    if world > 1:
        counts = counts.to(device)  # NCCL reduces device tensors only
        torch.distributed.all_reduce(counts)
    return counts.tolist()


def _gathered(obj, world: int) -> list:
    """Every rank's ``obj`` (picklable), in rank order; each rank calls this at the same point."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _report(model, optimizer, schedule, *, step: int, steps_per_epoch: int, metrics: dict, rank: int,
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


def _evaluate(model: AVClassifier, eval_info: DatasetInfo, cfg: Config, *, device: torch.device, autocast, rank: int,
              world: int, sets: tuple[str, ...]) -> dict | None:
    """Every rank scores its share of the evaluation shards; rank 0 gathers them and gets the metrics."""
    part = dataclasses.replace(eval_info, shards=eval_info.shards[rank::world])
    scored = evaluation.score(model, part, batch_size=cfg.train.batch_size, crops=cfg.train.eval_crops, device=device,
                              sets=sets, autocast_dtype=autocast)
    gathered = _gathered(scored, world)
    if rank != 0:
        return None
    scores = {name: np.concatenate([g[0][name] for g in gathered]) for name in sets}
    return evaluation.metrics(scores, np.concatenate([g[1] for g in gathered]), [g[2] for g in gathered], eval_info.root)
