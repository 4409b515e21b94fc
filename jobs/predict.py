"""Print a trained model's top classes for media files, or tag long files window by window.

    python jobs/predict.py --checkpoint RUN/model.pt clip.mp4 [more.mp4 ...] [--top-k 5] [--crops N] [--json]
    python jobs/predict.py --checkpoint RUN/model.pt --timeline --out DIR long.mp4 [...] [--hop S] [--top-k 5]

Each file is decoded exactly as preprocessing decodes a trimmed segment (its first
data.segment_seconds at the run's recipe); scores are sigmoids averaged over --crops evenly
spaced windows.

With --timeline a file of any length is scored one window every --hop seconds (default: one
window), each window alone. It is decoded as a stream of data.segment_seconds chunks, each from
its own start by the same decoder, so memory does not grow with the file; a bar on stderr counts
the windows. DIR/<name>.timeline.csv and .json get every window's start, end, which modalities it
held and every class's score; DIR/<name>.timeline.png draws the --top-k classes over time above
the sound's spectrogram.

A file without one of the model's modalities is scored with it zeroed, as evaluation does, with a
note. A file that cannot be used gets a one-line error on stderr and the others go on; the exit
status is 1 if any file failed, 2 if the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from perceiver import timeline  # noqa: E402
from perceiver.classifier import AVClassifier  # noqa: E402
from perceiver.clips import check_usable, clip_batch, clip_scores, read_clip  # noqa: E402
from perceiver.config import Config  # noqa: E402
from perceiver.plots import save, timeline_figure  # noqa: E402
from perceiver.saved import load_model  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.decode import DecodeError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="media files (mp4, mkv, webm, ...)")
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt (model.json beside it)")
    p.add_argument("--top-k", type=int, default=5, help="classes printed per file (--timeline: drawn)")
    p.add_argument("--crops", type=int, help="windows averaged per file (default: the run's train.eval_crops)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout (JSON Lines), failures included")
    p.add_argument("--timeline", action="store_true", help="score each file window by window, however long")
    p.add_argument("--hop", type=float, help="--timeline: seconds from one window's start to the next (default: a window)")
    p.add_argument("--out", help="--timeline: the folder for each file's .timeline.csv, .json and .png")
    p.add_argument("--batch-size", type=int, default=16, help="--timeline: windows scored at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.top_k < 1 or (args.crops is not None and args.crops < 1) or args.batch_size < 1:
        p.error("--top-k, --crops and --batch-size must be >= 1")
    if args.timeline:
        if args.out is None:
            p.error("--timeline needs --out, the folder for its files")
        if args.crops is not None:
            p.error("--crops does not go with --timeline, which scores every window alone")
        if args.hop is not None and args.hop <= 0:
            p.error("--hop must be > 0 seconds")
        stems = [timeline_stem(f) for f in args.files]
        if twice := sorted({s for s in stems if stems.count(s) > 1}):
            p.error(f"--timeline: more than one file named {twice[0]!r} would write the same outputs")
    elif args.hop is not None or args.out is not None:
        p.error("--hop and --out go with --timeline")
    return args


# glibc's mallopt parameter: requests of at least this many bytes get their own mapping.
_M_MMAP_THRESHOLD = -3


def release_freed_buffers() -> None:
    """Have the C allocator hand every freed block of 128 KiB or more straight back to the system.

    A timeline allocates and frees a chunk's and a batch's buffers (up to megabytes each) hundreds of
    times. glibc starts with that threshold but raises it to the largest block freed so far, so later
    blocks of that size come from its heap, which fragments: measured here, the peak resident size crept
    up by some 20 MB over the first 30 chunks before it levelled off. The threshold held at its start
    keeps it flat. A no-op where the C library has no ``mallopt``.
    """
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def failure(path: str, err: DecodeError) -> dict:
    """{file, error, message}: how a file the model cannot be given is reported."""
    verb = "cannot use it" if err.reason == "no_usable_stream" else "cannot decode"
    return {"file": path, "error": err.reason, "message": f"{verb}: {err.detail}"}


def absence_notes(absent: list[str], cfg: Config, what: str) -> list[str]:
    kept = "+".join(m for m in cfg.inputs.modalities if m not in absent)
    return [f"no {m} stream: {kept}-only {what}" for m in absent]


def predict_file(model: AVClassifier, cfg: Config, classes: list[dict], path: str, *, crops: int, top_k: int,
                 device: torch.device) -> dict:
    """{file, crops, notes, top: [{index, mid, name, score}]}, or {file, error, message} for an unusable file."""
    try:
        sample = read_clip(path, cfg.data, model.modalities)
        absent = check_usable(sample, model.modalities)
    except DecodeError as err:
        return failure(path, err)
    scores = clip_scores(model, clip_batch(sample, model.modalities, crops, len(classes)).to(device))[0]
    top = np.argsort(-scores, kind="stable")[:top_k]
    return {"file": path, "crops": crops, "notes": absence_notes(absent, cfg, "prediction"),
            "top": [{"index": int(i), "mid": classes[i]["mid"], "name": classes[i]["name"],
                     "score": float(scores[i])} for i in top]}


def timeline_stem(path: str) -> str:
    """The name of a file's timeline outputs, ``<stem>.timeline``."""
    return f"{Path(path).stem}.timeline"


def write_timeline(result: timeline.Timeline, classes: list[dict], prefix: Path, *, notes: list[str],
                   top_k: int) -> dict[str, str]:
    """``prefix``.csv (a row per window: start_s, end_s, present_<modality> 0/1, one column per class),
    ``prefix``.json (the same with the file's facts and notes) and ``prefix``.png; {kind: path}."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    plan, names = result.plan, [c["name"] for c in classes]
    ends = result.starts + plan.window_s
    out = {kind: str(prefix) + f".{kind}" for kind in ("csv", "json", "png")}
    with open(out["csv"], "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["start_s", "end_s", *(f"present_{m}" for m in result.present), *names])
        for w, (start, end) in enumerate(zip(result.starts, ends, strict=True)):
            rows.writerow([f"{start:.3f}", f"{end:.3f}", *(int(p[w]) for p in result.present.values()),
                           *(f"{s:.6f}" for s in result.scores[w])])
    windows = [{"start_s": round(float(start), 6), "end_s": round(float(end), 6),
                "present": {m: bool(p[w]) for m, p in result.present.items()},
                "scores": [round(float(s), 6) for s in result.scores[w]]}
               for w, (start, end) in enumerate(zip(result.starts, ends, strict=True))]
    record = {"file": plan.path, "duration_s": plan.duration_s, "window_s": plan.window_s, "hop_s": plan.hop_s,
              "notes": notes, "classes": [{k: c[k] for k in ("index", "mid", "name")} for c in classes],
              "windows": windows}
    Path(out["json"]).write_text(json.dumps(record, indent=1))
    title = (f"{Path(plan.path).name}: top {min(top_k, len(names))} classes, a window of {plan.window_s:g} s every "
             f"{plan.hop_s:g} s" + "".join(f"; {n}" for n in notes))
    save(timeline_figure(result.starts, result.scores, names, window_s=plan.window_s, hop_s=plan.hop_s,
                         spectrogram=result.spectrogram, spectrogram_hop_s=result.spectrogram_hop_s, top=top_k,
                         title=title), out["png"])
    return out


def timeline_file(model: AVClassifier, cfg: Config, classes: list[dict], path: str, *, out: Path,
                  hop_s: float | None, top_k: int, batch_size: int, device: torch.device) -> dict:
    """{file, windows, window_s, hop_s, notes, outputs: {csv, json, png}}, or {file, error, message}."""
    try:
        plan = timeline.plan(path, cfg.data, model.modalities, hop_s=hop_s)
        with tqdm(total=plan.windows, unit="window", desc=Path(path).name, file=sys.stderr, mininterval=1.0) as bar:
            result = timeline.score(model, plan, cfg.data, num_classes=len(classes), batch_size=batch_size,
                                    device=device, progress=bar.update)
    except DecodeError as err:
        return failure(path, err)
    notes = absence_notes(result.absent, cfg, "timeline")
    if result.end_s is not None:
        notes.append(f"nothing to decode from {result.end_s:.3f} s, before the {plan.duration_s:.3f} s the "
                     "container states: the timeline stops there")
    outputs = write_timeline(result, classes, out / timeline_stem(path), notes=notes, top_k=top_k)
    return {"file": path, "windows": len(result.starts), "window_s": plan.window_s, "hop_s": plan.hop_s,
            "notes": notes, "outputs": outputs}


def report(args: argparse.Namespace, result: dict, crops: int) -> None:
    """One file's result on stdout: JSON, or its lines of text."""
    if args.json:
        print(json.dumps(result), flush=True)
        return
    if "error" in result:
        return
    path = result["file"]
    if args.timeline:
        lines = [f"{path} ({result['windows']} windows of {result['window_s']:g} s every {result['hop_s']:g} s)"]
        lines += [f"  note: {note}" for note in result["notes"]]
        lines += [f"  {p}" for p in result["outputs"].values()]
    else:
        lines = [f"{path} ({crops} crop{'s' * (crops > 1)})"]
        lines += [f"  note: {note}" for note in result["notes"]]
        lines += [f"  {t['score']:.3f}  {t['name']}" for t in result["top"]]
    print("\n".join(lines), flush=True)


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
    if args.timeline:
        release_freed_buffers()
    crops = args.crops or cfg.train.eval_crops
    failed = 0
    for path in args.files:
        if args.timeline:
            result = timeline_file(model, cfg, classes, path, out=Path(args.out), hop_s=args.hop, top_k=args.top_k,
                                   batch_size=args.batch_size, device=device)
        else:
            result = predict_file(model, cfg, classes, path, crops=crops, top_k=args.top_k, device=device)
        if "error" in result:
            failed += 1
            print(f"error: {path}: {result['message']} [{result['error']}]", file=sys.stderr, flush=True)
        report(args, result, crops)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
