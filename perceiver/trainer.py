"""Ray wiring: a TorchTrainer for the worker loop, whose run state lives in the run directory.

Resume: rerunning with the same ``--out`` attaches to the same Ray Train run
(``RunConfig(storage_path=<out>/ray, name="train")``); ``ray.train.get_checkpoint()`` then
returns the latest checkpoint and the loop continues at its step, replaying the data stream
to the same position, so the result equals an uninterrupted run.
"""

from __future__ import annotations

from perceiver.config import Config, to_dict
from perceiver.training import train_loop_per_worker
from pipeline import storage


def fit(cfg: Config, *, train: str, eval_: str | None, out: storage.Location, num_workers: int, use_gpu: bool,
        resources_per_worker: dict | None = None):
    """Run (or resume) training on the attached Ray cluster; raises ray.train.TrainingFailedError
    once ``train.max_failures`` restarts are spent."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # On an object store Ray Train gets the store without folder markers (storage.without_folders) and
    # a path in it; elsewhere the URI.
    state = out.child("ray")
    on_store = out.fs.type_name in storage.OBJECT_STORES
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "train": train, "eval": eval_, "out": out.uri},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name="train",
            storage_path=state.path if on_store else state.uri,
            storage_filesystem=storage.without_folders(out) if on_store else None,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )
    return trainer.fit()
