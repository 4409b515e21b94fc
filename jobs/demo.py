"""The README's first command: the whole user path on this machine, with a report at the end.

    python jobs/demo.py --out demo        (what `make demo` runs)
    python jobs/demo.py --out demo --pictures docs/images     (also refreshes the README's pictures)

Writes a synthetic AudioSet-style download, starts a local Ray head (`ray start --head`),
submits preprocessing (train and eval) and training with `ray job submit --working-dir .`,
showing each job's own lines as they come (progress bars, training progress, evaluations) and
hiding Ray's logging. Training evaluates along the way, so the report's mAP plot is a curve.
Then it draws cross-attention maps of one evaluation clip, writes ``<out>/report.md`` and stops
the head it started, also on failure or Ctrl-C. Rerunning resumes: finished shards and a
finished run are kept.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.local_ray import ROOT, Cluster, JobFailed, start_cluster  # noqa: E402

CONFIG = "configs/tiny.yaml"
# Evaluations in one training, the final one included: all modalities together in between (cheap),
# each set at the end, so the report's map.png is a curve rather than one point.
EVALUATIONS = 6
# The report pictures that --pictures copies (the README shows them).
PICTURES = ("map.png", "attention_block0_video.png")

# The lines the jobs print for their user start with a lower-case label and a colon ("train: ",
# "eval step 50: ", "preprocess:  40%|..."), or are training progress ("step 10/300 loss ..."); Ray's
# own logging starts with a timestamp, a capital letter or a path. Ray puts "(<actor> pid=<n>) " before
# the lines of its actors, such as Ray Train's workers, in colour even when the output is no terminal.
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
JOB_LINE = re.compile(r"^(?:\(\w+ pid=\d+[^)]*\) )?((?:[a-z][a-z0-9 ]*: |step \d+/\d+ |resuming from ).*)$")
BAR = re.compile(r"^preprocess: +\d+%\|")  # tqdm's bar, one line per redraw in the job's log


class StepFailed(RuntimeError):
    pass


def _step(number: int, total: int, title: str) -> None:
    print(f"demo [{number}/{total}] {title}", flush=True)


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise StepFailed(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


def show(lines: Iterable[str], out: TextIO | None = None) -> list[str]:
    """Print the jobs' own lines among ``lines``, indented, each as soon as it comes; return them.

    On a terminal a progress bar's redraws overwrite each other on one line; elsewhere (a log file)
    each is a line of its own.
    """
    out = out or sys.stdout
    tty, in_bar, shown = out.isatty(), False, []
    try:
        for line in lines:
            match = JOB_LINE.match(COLOUR.sub("", line))
            if match is None:
                continue
            text = match.group(1)
            shown.append(text)
            bar = tty and BAR.match(text) is not None
            if in_bar:
                out.write("\r\033[K" if bar else "\n")  # over the last redraw, or below the finished bar
            out.write(f"  {text}" + ("" if bar else "\n"))
            out.flush()
            in_bar = bar
    finally:
        if in_bar:
            out.write("\n")
            out.flush()
    return shown


def submit(cluster: Cluster, what: str, *entrypoint: str) -> list[str]:
    """``ray job submit`` of ``entrypoint``, its own lines shown as they come and returned; StepFailed
    with the end of its output if it fails."""
    try:
        return show(cluster.job_lines(*entrypoint))
    except JobFailed as err:
        tail = "\n".join(COLOUR.sub("", line) for line in err.lines[-15:])
        raise StepFailed(f"{what} failed (exit {err.returncode}):\n{tail}") from None


def train(cluster: Cluster, *, config: str, train_data: Path, eval_data: Path, run: Path,
          overrides: Sequence[str] = ()) -> list[str]:
    """The demo's training job: ``config`` with ``overrides`` (KEY=VALUE), evaluated ``EVALUATIONS``
    times along the way; its own lines, shown as they come."""
    from perceiver.config import load_config

    steps = load_config(ROOT / config, list(overrides)).train.steps
    # The user's overrides come last: an explicit train.eval_every wins.
    sets = [f"train.eval_every={max(1, steps // EVALUATIONS)}", *overrides]
    return submit(cluster, "training", "python", "jobs/train.py", "--config", config, "--train", str(train_data),
                  "--eval", str(eval_data), "--out", str(run), *(a for s in sets for a in ("--set", s)))


def _report(out: Path, metrics: dict, pictures: list[Path], clip: str, elapsed: float) -> Path:
    rows = "\n".join(f"| {name} | {metrics[name]['mAP']:.3f} | {metrics[name]['mean_auc']:.3f} | "
                     f"{metrics[name]['d_prime']:.2f} |" for name in ("audio+video", "audio", "video"))

    by_name = {p.name: p for p in pictures}

    def images(names: Iterable[str]) -> str:
        return "\n\n".join(f"![{by_name[n].stem}]({by_name[n].relative_to(out)})" for n in names if n in by_name)

    attention = [n for n in by_name if n.startswith("attention_")]
    text = f"""# perceiver-av demo

Synthetic AudioSet-style clips (4 visible-only and 4 audible-only classes, 1-3 labels each),
preprocessed and trained with `{CONFIG}` through `ray job submit` on a local Ray head,
{metrics['num_clips']} evaluation clips, {elapsed / 60:.1f} minutes in all.

| modalities | mAP | mean ROC-AUC | d-prime |
|---|---|---|---|
{rows}

Audio-only and video-only evaluation zero the other modality exactly as video dropout does in
training. Each scores well below A+V because half of the classes can only be seen and half can only be heard.

## Training

The evaluations along the way score audio and video together; the last one also scores each alone.

{images(("map.png", "loss.png"))}

## Cross-attention of `{clip}`

The first and the last cross-attend, averaged over heads and latents, over the frames and the
log-mel spectrogram of the clip's middle window.

{images(sorted(attention, key=lambda name: ("audio" in name, name)))}

## Per-class AP

{images(("per_class_ap.png",))}
"""
    path = out / "report.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", help="where data, shards, the run and the report go")
    p.add_argument("--train-clips", type=int, default=256)
    p.add_argument("--eval-clips", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE",
                   help="override a train.* field of the demo's training, e.g. train.steps=100 for a quicker look")
    p.add_argument("--pictures", type=Path, metavar="DIR",
                   help=f"also copy {', '.join(PICTURES)} of the report there (docs/images for the README)")
    args = p.parse_args(argv)
    if bad := [s for s in args.set if not s.startswith("train.")]:
        p.error(f"--set {bad[0]}: only train.* fields; the data recipe is the preprocessing's")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, run = out / "audioset", out / "run"
    started = time.time()
    # Ctrl-C and SIGTERM both unwind through `finally`, so the head is always stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ray_temp = Path(tempfile.mkdtemp(prefix="pav-demo-ray-"))  # short: Ray's socket paths have a length limit
    cluster = None
    total = 7
    try:
        _step(1, total, f"writing {args.train_clips}+{args.eval_clips} synthetic clips to {data}")
        if not (data / "eval_segments.csv").exists():
            _check(subprocess.run([sys.executable, "jobs/make_synthetic.py", "--out", str(data), "--train",
                                   str(args.train_clips), "--eval", str(args.eval_clips)], cwd=ROOT,
                                  capture_output=True, text=True), "writing the synthetic dataset")
        _step(2, total, "starting a local Ray head (ray start --head)")
        cluster = start_cluster(ray_temp)
        for number, (split, csv) in enumerate((("train", "balanced_train_segments.csv"),
                                               ("eval", "eval_segments.csv")), start=3):
            _step(number, total, f"ray job submit: preprocessing the {split} split")
            submit(cluster, f"preprocessing {split}", "python", "jobs/preprocess.py", "--config", CONFIG,
                   "--segments", str(data / csv), "--labels", str(data / "class_labels_indices.csv"),
                   "--media-dir", str(data / "clips"), "--out", str(out / split))
        _step(5, total, "ray job submit: training with 2 Ray Train workers")
        train(cluster, config=CONFIG, train_data=out / "train", eval_data=out / "eval", run=run, overrides=args.set)
        clip = picture_key(out / "eval")
        _step(6, total, f"drawing cross-attention maps of the evaluation clip {clip}")
        pictures_dir = out / "pictures"
        _check(subprocess.run([sys.executable, "jobs/visualize.py", "--checkpoint", str(run / "model.pt"),
                               "--data", str(out / "eval"), f"--key={clip}", "--out", str(pictures_dir)],
                              cwd=ROOT, capture_output=True, text=True), f"visualizing {clip}")
        _step(7, total, "writing the report")
        for png in sorted((run / "plots").glob("*.png")):
            shutil.copy(png, pictures_dir / png.name)
        metrics = json.loads((run / "eval.json").read_text())
        report = _report(out, metrics, sorted(pictures_dir.glob("*.png")), clip, time.time() - started)
        print(f"  {report}")
        if args.pictures is not None:
            args.pictures.mkdir(parents=True, exist_ok=True)
            for name in PICTURES:
                print(f"  {shutil.copy(pictures_dir / name, args.pictures / name)}")
    except StepFailed as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the Ray head is being stopped", file=sys.stderr)
        return 130
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)
    print(f"demo: A+V mAP={metrics['audio+video']['mAP']:.3f} audio-only mAP={metrics['audio']['mAP']:.3f} "
          f"video-only mAP={metrics['video']['mAP']:.3f}")
    return 0


def picture_key(dataset: Path) -> str:
    """The first clip with a visible and an audible class, so that both its video and its audio
    pictures have something to look at; the first clip when none has both."""
    from pipeline.dataset import open_dataset
    from pipeline.shards import iter_samples
    from pipeline.synthetic import CLASSES

    kinds = {c.index: c.modality for c in CLASSES}
    first = None
    for sample in iter_samples(open_dataset(str(dataset)).shards, decode_frames=False):
        first = first or sample.key
        if {kinds[i] for i in sample.meta["labels"]} == {"audio", "video"}:
            return sample.key
    return first


if __name__ == "__main__":
    sys.exit(main())
