"""Print a trained model's top classes for media files.

    python jobs/predict.py --checkpoint RUN/model.pt clip.mp4 [more.mp4 ...] [--top-k 5] [--crops N] [--json]

Each file is decoded exactly as preprocessing decodes a trimmed segment (its first
data.segment_seconds at the run's recipe); scores are sigmoids averaged over --crops evenly
spaced windows. A file that cannot be used gets a one-line error on stderr and the others go
on; the exit status is 1 if any file failed, 2 if the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from perceiver.classifier import AVClassifier  # noqa: E402
from perceiver.clips import absent_modalities, clip_batch, clip_scores, read_clip  # noqa: E402
from perceiver.config import Config  # noqa: E402
from perceiver.saved import load_model  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.decode import DecodeError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="media files (mp4, mkv, webm, ...)")
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt (model.json beside it)")
    p.add_argument("--top-k", type=int, default=5, help="classes printed per file")
    p.add_argument("--crops", type=int, help="windows averaged per file (default: the run's train.eval_crops)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout (JSON Lines), failures included")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.top_k < 1 or (args.crops is not None and args.crops < 1):
        p.error("--top-k and --crops must be >= 1")
    return args


def predict_file(model: AVClassifier, cfg: Config, classes: list[dict], path: str, *, crops: int, top_k: int,
                 device: torch.device) -> dict:
    """{file, crops, notes, top: [{index, mid, name, score}]}, or {file, error, message} for an unusable file."""
    try:
        sample = read_clip(path, cfg.data, model.modalities)
    except DecodeError as err:
        return {"file": path, "error": err.reason, "message": f"cannot decode: {err.detail}"}
    modalities = cfg.inputs.modalities
    absent = absent_modalities(sample, model.modalities)
    if len(absent) == len(modalities):
        return {"file": path, "error": "no_usable_stream",
                "message": f"no {' or '.join(absent)} stream, and the model uses no other"}
    kept = "+".join(m for m in modalities if m not in absent)
    scores = clip_scores(model, clip_batch(sample, model.modalities, crops, len(classes)).to(device))[0]
    top = np.argsort(-scores, kind="stable")[:top_k]
    return {"file": path, "crops": crops, "notes": [f"no {m} stream: {kept}-only prediction" for m in absent],
            "top": [{"index": int(i), "mid": classes[i]["mid"], "name": classes[i]["name"],
                     "score": float(scores[i])} for i in top]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage.s3_compat_env()
    try:
        model, cfg, classes = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError, storage.ObjectStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model.to(device)
    crops = args.crops or cfg.train.eval_crops
    failed = 0
    for path in args.files:
        result = predict_file(model, cfg, classes, path, crops=crops, top_k=args.top_k, device=device)
        if "error" in result:
            failed += 1
            print(f"error: {path}: {result['message']} [{result['error']}]", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" not in result:
            lines = [f"{path} ({crops} crop{'s' * (crops > 1)})"]
            lines += [f"  note: {note}" for note in result["notes"]]
            lines += [f"  {t['score']:.3f}  {t['name']}" for t in result["top"]]
            print("\n".join(lines), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
