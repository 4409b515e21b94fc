"""Write a synthetic AudioSet-like dataset: mp4 clips plus AudioSet-format CSVs.

    python jobs/make_synthetic.py --out demo/synthetic --train 256 --eval 64
    python jobs/make_synthetic.py --out bench/textured --train 16 --eval 0 --textured --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The project root, so `python jobs/make_synthetic.py` imports the packages also from the copy
# that `ray job submit --working-dir .` uploads.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synthetic import make_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (clips/ and the CSVs go here)")
    parser.add_argument("--train", type=int, default=256, help="clips in balanced_train_segments.csv")
    parser.add_argument("--eval", type=int, default=64, help="clips in eval_segments.csv")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of every clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--textured", action="store_true",
                        help="640x360 25 fps textured video with 48 kHz stereo audio, for benchmarks")
    parser.add_argument("--width", type=int, help="frame width (even); default 96, or 640 if --textured")
    parser.add_argument("--height", type=int, help="frame height (even); default 96, or 360 if --textured")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    dataset = make_dataset(args.out, num_train=args.train, num_eval=args.eval, seconds=args.seconds,
                           seed=args.seed, textured=args.textured, width=args.width, height=args.height)
    print(f"wrote {len(dataset.train)} train + {len(dataset.eval)} eval clips to {dataset.clips_dir} "
          f"in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
