"""The video-dropout effect: the tiny recipe trained with inputs.video_dropout 0 and 0.3, paired by seed.

The paper (Sec. 4.2) trains with each example's whole video zeroed with probability 0.3 and reports
A+V mAP +3.8 (raw audio) and +3.3 (log-mel) on AudioSet. This script measures the same switch on the
project's synthetic dataset (``pipeline.synthetic``: 4 visible-only and 4 audible-only classes):

1. it writes the synthetic clips once (``make_dataset``, cached under ``--work``), starts one local
   Ray head (``jobs.local_ray.start_cluster``) and preprocesses the train and eval splits with
   ``jobs/preprocess.py`` at ``configs/tiny.yaml`` (a rerun reuses the finished shards);
2. for every seed it runs ``jobs/train.py`` (2 Ray Train workers, as the recipe says) twice, with
   ``inputs.video_dropout`` 0 and then 0.3, each into a fresh run directory. ``train.seed`` fixes the
   model's initialisation, the shard order and the windows, so the two runs of a seed differ only in
   the dropout, and alternating them spreads any change in machine load over both;
3. it reads each run's final evaluation (``eval.json``: the eval split scored with audio and video,
   with the audio alone and with the video alone, the other modality zeroed as dropout zeroes it) and
   prints the mAPs per run, the paired differences (0.3 minus 0) per seed, their mean, standard
   deviation and a paired-t 95% interval, and whether each mean difference is larger than its spread.

Besides mAP over all 8 classes, it reports each single-modality evaluation over the classes that
modality carries ("audio on audible": audio-only mAP over the 4 audible classes; likewise video):
with one modality zeroed, the other 4 classes are scored from nothing and only add noise.

In a one-seed check at the recipe's 300 steps both runs scored A+V mAP 1.000 and each modality 1.000
on its own classes (saturated: no difference can show); docs/experiments.md uses ``--steps 60``, where
A+V and video on visible stay below 1.

    python benchmarks/video_dropout.py                 # 5 seeds x 2, the recipe's 300 steps each
    python benchmarks/video_dropout.py --steps 60      # a smaller budget (warm-up scaled alike)
    python benchmarks/video_dropout.py --quick         # 2 seeds x 2 at 30 steps: a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The project root, so `python benchmarks/video_dropout.py` imports the project's packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import t as student_t  # noqa: E402

from benchmarks.common import CONFIGS, ROOT, machine_summary, print_table, recipe, timed  # noqa: E402
from jobs.local_ray import Cluster, start_cluster  # noqa: E402
from pipeline.synthetic import CLASSES, make_dataset  # noqa: E402

RECIPE = "tiny"
DROPOUTS = (0.0, 0.3)  # the baseline first: every difference is the second minus the first
SETS = ("audio+video", "audio", "video")  # the final evaluation's modality sets (eval.json keys)
# The single-modality evaluations restricted to the classes that modality carries.
OWN_CLASSES = {"audio on audible": "audio", "video on visible": "video"}
MEASURES = (*SETS, *OWN_CLASSES)
QUICK_SEEDS, QUICK_STEPS = 2, 30
TRAIN_TIMEOUT_S = 3 * 3600  # one training on a busy 2-core machine; cluster.run's default is 10 minutes


@dataclass(frozen=True)
class Splits:
    """The preprocessed datasets (``jobs/preprocess.py --out``) of the synthetic train and eval clips."""

    train: Path
    eval: Path


def synthetic_clips(root: Path, train: int, eval_: int, seed: int) -> Path:
    """``make_dataset`` into ``root`` on first use; its folder. The labels CSV is written last, so its
    presence means the folder is complete."""
    if not (root / "class_labels_indices.csv").exists():
        print(f"writing {train}+{eval_} synthetic clips to {root} ...", flush=True)
        with timed() as t:
            make_dataset(root, num_train=train, num_eval=eval_, seed=seed)
        print(f"  done in {t.wall:.0f} s", flush=True)
    return root


def preprocess(cluster: Cluster, clips: Path, out: Path) -> Splits:
    """Both splits through ``jobs/preprocess.py`` on ``cluster`` at the tiny recipe."""
    splits = Splits(out / "train", out / "eval")
    for csv, dest in (("balanced_train_segments.csv", splits.train), ("eval_segments.csv", splits.eval)):
        with timed() as t:
            result = cluster.run(sys.executable, "jobs/preprocess.py", "--config", str(CONFIGS / f"{RECIPE}.yaml"),
                                 "--segments", str(clips / csv), "--labels", str(clips / "class_labels_indices.csv"),
                                 "--media-dir", str(clips / "clips"), "--out", str(dest), timeout=TRAIN_TIMEOUT_S)
        print(f"  {result.stdout.strip().splitlines()[-1]} (wall {t.wall:.0f} s)", flush=True)
    return splits


def train(cluster: Cluster, splits: Splits, run: Path, *, seed: int, dropout: float, steps: int,
          warmup: int) -> dict:
    """One fresh ``jobs/train.py`` run; its final evaluation (``eval.json``)."""
    shutil.rmtree(run, ignore_errors=True)  # a leftover run directory would be resumed, not retrained
    overrides = [f"train.seed={seed}", f"inputs.video_dropout={dropout}", f"train.steps={steps}",
                 f"train.warmup_steps={warmup}"]
    cluster.run(sys.executable, "jobs/train.py", "--config", str(CONFIGS / f"{RECIPE}.yaml"), "--train",
                str(splits.train), "--eval", str(splits.eval), "--out", str(run),
                *(a for o in overrides for a in ("--set", o)), timeout=TRAIN_TIMEOUT_S)
    return json.loads((run / "eval.json").read_text())


def measures(result: dict) -> dict[str, float]:
    """mAP of each modality set, and of each single modality over its own classes."""
    out = {name: result[name]["mAP"] for name in SETS}
    for label, kind in OWN_CLASSES.items():
        aps = [ap for ap, c in zip(result[kind]["per_class_ap"], CLASSES, strict=True)
               if c.modality == kind and ap is not None]
        out[label] = statistics.fmean(aps)
    return out


@dataclass(frozen=True)
class Paired:
    """Mean, sample standard deviation and paired-t 95% half-width of per-seed differences."""

    mean: float
    sd: float
    half_width: float

    @classmethod
    def of(cls, diffs: list[float]) -> Paired:
        n = len(diffs)
        sd = statistics.stdev(diffs) if n > 1 else math.nan
        return cls(statistics.fmean(diffs), sd, float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
                   if n > 1 else math.nan)

    def reading(self) -> str:
        """Whether the mean is larger than the spread, in words."""
        if math.isnan(self.sd):
            return "one seed: no spread to compare with"
        if self.sd == 0.0:
            return "identical in every seed" if self.mean == 0.0 else "the same nonzero difference in every seed"
        bigger = "larger" if abs(self.mean) > self.sd else "not larger"
        excludes = abs(self.mean) > self.half_width
        return (f"mean {bigger} than its standard deviation; the 95% interval "
                f"{'excludes' if excludes else 'includes'} 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench",
                        help="cache and scratch folder (git-ignored; default: .bench/ in the repo)")
    parser.add_argument("--seeds", type=int, default=5, help="train.seed 0..N-1, each with both dropouts")
    parser.add_argument("--steps", type=int, help="train.steps of every run (default: the recipe's)")
    parser.add_argument("--train-clips", type=int, default=256, help="synthetic training clips (the demo's 256)")
    parser.add_argument("--eval-clips", type=int, default=64, help="synthetic evaluation clips (the demo's 64)")
    parser.add_argument("--data-seed", type=int, default=0, help="make_dataset's seed (the clips themselves)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SEEDS} seeds at {QUICK_STEPS} steps (a smoke run of the whole path)")
    args = parser.parse_args(argv)
    cfg = recipe(RECIPE).train
    seeds = range(QUICK_SEEDS if args.quick else args.seeds)
    steps = QUICK_STEPS if args.quick else args.steps or cfg.steps
    # The same warm-up fraction as the recipe's (30 of 300), so a shorter budget keeps its schedule's shape.
    warmup = min(steps - 1, round(cfg.warmup_steps * steps / cfg.steps))
    work = args.work / "video-dropout"
    data = f"syn-{args.train_clips}-{args.eval_clips}-seed{args.data_seed}"
    print(machine_summary())
    print(f"video dropout {' vs '.join(map(str, DROPOUTS))}: configs/{RECIPE}.yaml, {len(seeds)} seeds, {steps} steps "
          f"(warm-up {warmup}), {cfg.num_workers} workers x batch {cfg.batch_size}, "
          f"{args.train_clips} train / {args.eval_clips} eval synthetic clips (data seed {args.data_seed})", flush=True)

    began = time.perf_counter()
    clips = synthetic_clips(work / data, args.train_clips, args.eval_clips, args.data_seed)
    # Ctrl-C and SIGTERM both unwind through `finally`, so the head is always stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ray_temp = Path(tempfile.mkdtemp(prefix="pav-vd-ray-"))  # short: Ray's socket paths have a length limit
    results: dict[tuple[int, float], dict[str, float]] = {}
    cluster = None
    try:
        cluster = start_cluster(ray_temp)
        splits = preprocess(cluster, clips, work / f"shards-{data}")
        for seed in seeds:
            for dropout in DROPOUTS:
                with timed() as t:
                    result = train(cluster, splits, work / "runs" / f"{data}-{steps}steps" / f"p{dropout}-s{seed}",
                                   seed=seed, dropout=dropout, steps=steps, warmup=warmup)
                results[seed, dropout] = measures(result)
                print(f"  seed {seed} dropout {dropout}: " + " ".join(
                    f"{k} {v:.3f}" for k, v in results[seed, dropout].items())
                    + f" ({result['num_clips']} clips; wall {t.wall:.0f} s, load {t.load_after:.1f})", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)

    print_table(f"mAP per run (eval split, {args.eval_clips} clips, {recipe(RECIPE).train.eval_crops} crops each)",
                [{"seed": s, "dropout": p, **{k: f"{v:.3f}" for k, v in results[s, p].items()}}
                 for s in seeds for p in DROPOUTS],
                notes=["audio / video: the other modality zeroed; '... on audible / visible': that evaluation "
                       "over the 4 classes its modality carries"])
    low, high = DROPOUTS
    diffs = {m: [results[s, high][m] - results[s, low][m] for s in seeds] for m in MEASURES}
    paired = {m: Paired.of(d) for m, d in diffs.items()}
    rows = [{"seed": str(s), **{m: f"{diffs[m][i]:+.3f}" for m in MEASURES}} for i, s in enumerate(seeds)]
    rows += [{"seed": "mean", **{m: f"{paired[m].mean:+.3f}" for m in MEASURES}},
             {"seed": "sd", **{m: f"{paired[m].sd:.3f}" for m in MEASURES}},
             {"seed": "95% t", **{m: f"+-{paired[m].half_width:.3f}" for m in MEASURES}}]
    saturated = all(results[k]["audio+video"] == 1.0 for k in results)
    print_table(f"Paired differences by seed, dropout {high} minus {low}", rows,
                notes=["sd: sample standard deviation over seeds; 95% t: the paired-t half-width, "
                       f"t(0.975, {len(seeds) - 1}) x sd / sqrt({len(seeds)})"]
                + (["audio+video is 1.000 in every run: saturated, so its difference says nothing"]
                   if saturated else []))
    print("\n== Reading")
    for m in MEASURES:
        p = paired[m]
        print(f"   {m:>17}: {p.mean:+.3f} +- {p.half_width:.3f} (sd {p.sd:.3f}): {p.reading()}")
    print(f"\ntotal wall time {(time.perf_counter() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
