"""The README's first command: the whole user path on this machine, with a report at the end.

    python jobs/demo.py --out demo        (what `make demo` runs)

Writes a synthetic AudioSet-style download, starts a local Ray head (`ray start --head`),
submits preprocessing (train and eval) and training with `ray job submit --working-dir .`,
draws cross-attention maps, writes ``<out>/report.md`` and stops the head it started, also on
failure or Ctrl-C. Rerunning resumes: finished shards and a finished run are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.local_ray import ROOT, start_cluster  # noqa: E402

CONFIG = "configs/tiny.yaml"


class StepFailed(RuntimeError):
    pass


def _step(number: int, total: int, title: str) -> None:
    print(f"demo [{number}/{total}] {title}", flush=True)


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise StepFailed(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


def _report(out: Path, metrics: dict, pictures: list[Path], elapsed: float) -> Path:
    rows = "\n".join(f"| {name} | {metrics[name]['mAP']:.3f} | {metrics[name]['mean_auc']:.3f} | "
                     f"{metrics[name]['d_prime']:.2f} |" for name in ("audio+video", "audio", "video"))
    images = "\n\n".join(f"![{p.stem}]({p.relative_to(out)})" for p in pictures)
    text = f"""# perceiver-av demo

Synthetic AudioSet-style clips (4 visible-only and 4 audible-only classes, 1-3 labels each),
preprocessed and trained with `{CONFIG}` through `ray job submit` on a local Ray head,
{metrics['num_clips']} evaluation clips, {elapsed / 60:.1f} minutes in all.

| modalities | mAP | mean ROC-AUC | d-prime |
|---|---|---|---|
{rows}

Audio-only and video-only evaluation zero the other modality exactly as video dropout does in
training. Each scores well below A+V because half of the classes can only be seen and half can only be heard.

{images}
"""
    path = out / "report.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", help="where data, shards, the run and the report go")
    p.add_argument("--train-clips", type=int, default=256)
    p.add_argument("--eval-clips", type=int, default=64)
    args = p.parse_args(argv)
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
            result = _check(cluster.job("python", "jobs/preprocess.py", "--config", CONFIG, "--segments",
                                        str(data / csv), "--labels", str(data / "class_labels_indices.csv"),
                                        "--media-dir", str(data / "clips"), "--out", str(out / split),
                                        check=False), f"preprocessing {split}")
            print("  " + next(ln for ln in result.stdout.splitlines()[::-1] if ln.startswith("preprocess:")))
        _step(5, total, "ray job submit: training with 2 Ray Train workers")
        result = _check(cluster.job("python", "jobs/train.py", "--config", CONFIG, "--train", str(out / "train"),
                                    "--eval", str(out / "eval"), "--out", str(run), check=False), "training")
        print("  " + next(ln for ln in result.stdout.splitlines()[::-1] if ln.startswith("train: eval")))
        _step(6, total, "drawing cross-attention maps of one evaluation clip")
        first_key = _first_key(out / "eval")
        pictures_dir = out / "pictures"
        _check(subprocess.run([sys.executable, "jobs/visualize.py", "--checkpoint", str(run / "model.pt"),
                               "--data", str(out / "eval"), f"--key={first_key}", "--out", str(pictures_dir)],
                              cwd=ROOT, capture_output=True, text=True), f"visualizing {first_key}")
        _step(7, total, "writing the report")
        for png in sorted((run / "plots").glob("*.png")):
            shutil.copy(png, pictures_dir / png.name)
        metrics = json.loads((run / "eval.json").read_text())
        report = _report(out, metrics, sorted(pictures_dir.glob("*.png")), time.time() - started)
        print(f"  {report}")
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


def _first_key(dataset: Path) -> str:
    from pipeline.dataset import open_dataset
    from pipeline.shards import iter_samples

    return next(iter_samples(open_dataset(str(dataset)).shards[:1], decode_frames=False)).key


if __name__ == "__main__":
    sys.exit(main())
