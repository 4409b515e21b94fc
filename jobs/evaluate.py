"""Evaluate a trained model on a preprocessed dataset and print the metrics as JSON.

    python jobs/evaluate.py --checkpoint RUN/model.pt --data DIR [--modalities audio,video] [--crops 16]

``--modalities audio`` evaluates with the video zeroed (as video dropout trains for), and so on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from perceiver.evaluation import evaluate, modality_sets  # noqa: E402
from perceiver.saved import load_model  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.dataset import DatasetMismatchError, check_compatible, open_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt (model.json beside it)")
    p.add_argument("--data", required=True, help="dataset directory or URI written by jobs/preprocess.py")
    p.add_argument("--modalities", help="comma-separated: all of the model's (default), or one of them alone")
    p.add_argument("--crops", type=int, help="windows averaged per clip (default: the run's train.eval_crops)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    storage.s3_compat_env()
    try:
        model, cfg, _ = load_model(args.checkpoint)
        info = open_dataset(args.data)
        check_compatible(info, cfg.data, model.modalities, "--data")
    except (FileNotFoundError, DatasetMismatchError, ValueError, storage.ObjectStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sets = modality_sets(cfg.inputs.modalities)
    names = {tuple(sorted(v)): k for k, v in sets.items()}
    wanted = tuple(sorted(m.strip() for m in (args.modalities or ",".join(cfg.inputs.modalities)).split(",")
                          if m.strip()))
    if wanted not in names:
        print(f"error: --modalities {args.modalities!r}: choose one of {', '.join(','.join(v) for v in sets.values())}",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    result = evaluate(model.to(device), info, batch_size=args.batch_size, crops=args.crops or cfg.train.eval_crops,
                      device=device, sets=(names[wanted],),
                      autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    metrics = result[names[wanted]]
    print(json.dumps({"modalities": names[wanted], "num_clips": result["num_clips"], "mAP": metrics["mAP"],
                      "mean_auc": metrics["mean_auc"], "d_prime": metrics["d_prime"],
                      "per_class_ap": metrics["per_class_ap"], "skipped": result["skipped"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
