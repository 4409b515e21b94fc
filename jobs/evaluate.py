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

from perceiver.evaluation import MODALITY_SETS, evaluate  # noqa: E402
from perceiver.loader import DatasetMismatchError, check_compatible, open_dataset  # noqa: E402
from perceiver.saved import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt (model.json beside it)")
    p.add_argument("--data", required=True, help="dataset directory or URI written by jobs/preprocess.py")
    p.add_argument("--modalities", default="audio,video", help="audio,video | audio | video")
    p.add_argument("--crops", type=int, help="windows averaged per clip (default: the run's train.eval_crops)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    wanted = tuple(sorted(m.strip() for m in args.modalities.split(",") if m.strip()))
    names = {tuple(sorted(v)): k for k, v in MODALITY_SETS.items()}
    if wanted not in names:
        print(f"error: --modalities {args.modalities!r}: choose audio,video or audio or video", file=sys.stderr)
        return 2
    try:
        model, cfg, _ = load_model(args.checkpoint)
        info = open_dataset(args.data)
        check_compatible(info, cfg, "--data")
    except (FileNotFoundError, DatasetMismatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    result = evaluate(model.to(device), info, args.batch_size, args.crops or cfg.train.eval_crops, device,
                      (names[wanted],), torch.bfloat16 if device.type == "cuda" else None)
    metrics = result[names[wanted]]
    print(json.dumps({"modalities": names[wanted], "num_clips": result["num_clips"], "mAP": metrics["mAP"],
                      "mean_auc": metrics["mean_auc"], "d_prime": metrics["d_prime"],
                      "per_class_ap": metrics["per_class_ap"], "skipped": result["skipped"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
