"""Preprocess AudioSet-style clips into WebDataset shards on Ray.

    ray job submit --working-dir . -- python jobs/preprocess.py \\
        --segments balanced_train_segments.csv --labels class_labels_indices.csv \\
        --media-dir /data/audioset/clips --out /data/audioset/balanced

Without ``ray job submit`` the same command attaches to a running local cluster or starts an
embedded one. Rerun the same command to resume; ``--retry-failed`` retries failed clips.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The project root, so `python jobs/preprocess.py` imports the packages also from the copy
# that `ray job submit --working-dir .` uploads.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from perceiver.config import ConfigError, load_config  # noqa: E402
from pipeline import faults, storage  # noqa: E402
from pipeline.audioset import read_segments  # noqa: E402
from pipeline.dataset import DatasetMismatchError  # noqa: E402
from pipeline.distributed import (  # noqa: E402
    PreprocessJob,
    StorageError,
    Summary,
    check_reachable,
    run_preprocess,
)
from pipeline.encode import EncodeOptions  # noqa: E402
from pipeline.labels import load_labels  # noqa: E402
from pipeline.listfiles import SourceError  # noqa: E402
from pipeline.lock import RunLock, RunLockedError  # noqa: E402
from pipeline.manifests import read_manifest  # noqa: E402
from pipeline.media import resolve_media  # noqa: E402
from pipeline.recipe import modalities_of  # noqa: E402
from pipeline.records import as_dict  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "audioset.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--segments", action="append", help="AudioSet segment CSV (repeatable)")
    src.add_argument("--manifest", help="generic manifest (CSV or Parquet: path, labels[, start, end, key])")
    p.add_argument("--labels", required=True, help="class_labels_indices.csv (index,mid,display_name)")
    p.add_argument("--media-dir", help="folder of clips: {ytid}.<ext> or Y{ytid}.<ext> by default")
    p.add_argument("--media-pattern", help="file name pattern with {ytid}, {start}, {end}, {start_ms}, {end_ms}")
    p.add_argument("--full-videos", action="store_true", help="media files are whole videos: seek to each segment")
    p.add_argument("--out", required=True, help="output directory or URI (s3://, gs://, shared mount)")
    p.add_argument("--split", help="shard name prefix; one starting with eval, val or test is an evaluation split, "
                                   "which keeps clips shorter than data.min_seconds (default: eval if a segments "
                                   "file name says so, else train)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (default: configs/audioset.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--retry-failed", action="store_true", help="retry only the clips in failures.parquet")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, a running local cluster, or embedded)")
    return p.parse_args(argv)


def build_job(args: argparse.Namespace) -> PreprocessJob:
    """The run ``args`` describe: the recipe, the parsed rows and where their media lie.
    Raises ``ConfigError``/``SourceError`` for bad input, ``ObjectStoreError`` for an unreachable ``--out``."""
    storage.s3_compat_env()
    cfg = load_config(args.config, args.set)
    classes = load_labels(args.labels)
    if args.segments:
        rows, failures = read_segments(args.segments, classes)
        split = args.split or ("eval" if any("eval" in Path(s).name for s in args.segments) else "train")
    else:
        rows, failures = read_manifest(args.manifest, classes)
        split = args.split or "train"
    if args.media_dir is None and args.segments:
        raise SourceError("--media-dir is required with --segments: the folder holding the clips")
    resolved, missing = resolve_media(rows, args.media_dir, args.media_pattern) if args.media_dir \
        else resolve_media(rows, str(Path(args.manifest).parent))
    # Rows without media stay in the shard plan (so adding the files later and rerunning with
    # --retry-failed fills them in without changing any finished shard).
    by_key = {r.key: r for r in resolved}
    rows = [by_key.get(r.key, r) for r in rows]
    del resolved, by_key  # at AudioSet's 2 million rows each copy of the rows is some 200 MB of the driver's memory
    return PreprocessJob(
        out=storage.locate(args.out), rows=rows, missing={f.key: as_dict(f) for f in missing},
        source_failures=[as_dict(f) for f in failures],
        classes=classes,
        options=EncodeOptions(cfg.data, tuple(modalities_of(cfg.data, cfg.inputs.modalities)), args.full_videos,
                              keep_short=split.startswith(("eval", "val", "test"))),
        split=split, retry_failed=args.retry_failed,
        inputs={"segments": args.segments, "manifest": args.manifest, "labels": args.labels,
                "media_dir": args.media_dir, "media_pattern": args.media_pattern, "full_videos": args.full_videos,
                "config": args.config, "overrides": args.set},
    )


def run(job: PreprocessJob, address: str | None) -> Summary:
    """Connect to Ray at ``address`` and run ``job`` under the output's run lock. Raises
    ``RunLockedError``/``DatasetMismatchError``, or ``StorageError``/``ObjectStoreError`` from storage."""
    # Credentials are not forwarded: every node reads them from its own environment.
    ray.init(address=address, log_to_driver=True,
             runtime_env={"env_vars": {**faults.forwarded_env(), **storage.s3_compat_env()}})
    check_reachable(job.out)
    with RunLock(job.out, "preprocess"):
        return run_preprocess(job)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(build_job(args), args.address)
    except (ConfigError, SourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RunLockedError, DatasetMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (StorageError, storage.ObjectStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
