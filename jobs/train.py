"""Train the audio-visual Perceiver on shards written by jobs/preprocess.py, on Ray Train.

    ray job submit --working-dir . -- python jobs/train.py --config configs/audioset.yaml \\
        --train /data/audioset/unbalanced --eval /data/audioset/eval --out /runs/as-av \\
        --num-workers 16 --use-gpu

Rerun the same command with the same --out to resume from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The project root, so the packages import also from `ray job submit --working-dir .`'s copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import ray.train  # noqa: E402

from perceiver.config import ConfigError, load_config  # noqa: E402
from perceiver.run_dir import RunMismatchError, check_same_run, read_metrics, skipped_line  # noqa: E402
from perceiver.trainer import fit  # noqa: E402
from pipeline import faults, storage  # noqa: E402
from pipeline.dataset import DatasetMismatchError, check_compatible, decoder_note, open_dataset  # noqa: E402
from pipeline.distributed import check_reachable  # noqa: E402
from pipeline.lock import RunLock, RunLockedError  # noqa: E402
from pipeline.recipe import modalities_of  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/tiny.yaml, configs/audioset.yaml)")
    p.add_argument("--train", required=True, help="training dataset directory or URI (with dataset.json)")
    p.add_argument("--eval", help="evaluation dataset directory or URI")
    p.add_argument("--out", required=True, help="run directory or URI; rerun with the same --out to resume")
    p.add_argument("--num-workers", type=int,
                   help="Ray Train workers (default: train.num_workers); 0 trains in this process (Ray Train's local mode)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker, bf16 autocast")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (data loading)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, a running local cluster, or embedded)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s3_env = storage.s3_compat_env()
    overrides = list(args.set)
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("train.use_gpu=true")
    try:
        cfg = load_config(args.config, overrides)
        modalities = modalities_of(cfg.data, cfg.inputs.modalities)
        # The workers open the datasets again: they get the URIs with their query options.
        train_uri, eval_uri = (storage.locate(a).uri if a else None for a in (args.train, args.eval))
        info = open_dataset(train_uri)
        check_compatible(info, cfg.data, modalities, "--train")
        notes = [decoder_note(info, "--train")]
        if args.eval:
            eval_info = open_dataset(eval_uri)
            check_compatible(eval_info, cfg.data, modalities, "--eval")
            notes.append(decoder_note(eval_info, "--eval"))
            if [c["mid"] for c in eval_info.classes] != [c["mid"] for c in info.classes]:
                raise DatasetMismatchError(f"--eval {eval_info.root} has another class list than --train {info.root}")
        out = storage.locate(args.out)
    except (ConfigError, DatasetMismatchError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except storage.ObjectStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for note in filter(None, notes):
        print(note, file=sys.stderr)
    # Credentials are not forwarded: every node reads them from its own environment.
    ray.init(address=args.address, log_to_driver=True,
             runtime_env={"env_vars": {**faults.forwarded_env(), **s3_env}})
    resources = {"CPU": args.cpus_per_worker} if args.cpus_per_worker else None
    try:
        check_reachable(out)
        with RunLock(out, "train"):
            print(f"train: {info.num_samples} clips in {len(info.shards)} shards, {cfg.train.num_workers} workers "
                  f"({'GPU' if cfg.train.use_gpu else 'CPU'}), {cfg.train.steps} steps -> {out.shown}", flush=True)
            check_same_run(out, cfg, info)
            fit(cfg, train=train_uri, eval_=eval_uri, out=out,
                num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu, resources_per_worker=resources)
    except (RunLockedError, RunMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except storage.ObjectStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ray.train.TrainingFailedError as err:
        cause = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        print(f"error: training failed after {cfg.train.max_failures} restarts ({cause}); the run directory keeps "
              f"its checkpoints: rerun the same command to resume", file=sys.stderr)
        return 1
    try:
        metrics = json.loads(storage.read_bytes(out.fs, out.join("eval.json"))) if args.eval else None
    except FileNotFoundError:
        metrics = None
    except storage.ObjectStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if metrics is not None:
        print("train: eval " + " ".join(f"{k} mAP={v['mAP']:.3f}" for k, v in metrics.items()
                                        if isinstance(v, dict) and "mAP" in v))
    # The last line also says what the readers skipped over the whole run (resumes included).
    print(f"train: model at {out.child('model.pt').shown}; {skipped_line(read_metrics(out))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
