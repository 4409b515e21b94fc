"""Draw a trained model's cross-attention over one clip window, per modality, as PNGs.

    python jobs/visualize.py --checkpoint RUN/model.pt (--clip clip.mp4 | --data DIR --key KEY) --out DIR \\
        [--blocks 0,-1] [--latent mean|peaked]

The clip's middle window goes through the model; for each chosen block, its cross-attend's
weights (averaged over heads, and over latents or from the most peaked latent) are split into
each modality's tokens and drawn on the patch grid: for video, the frames the model saw, each
titled with its time in the clip, alone and with the map painted over them as in the paper's
Fig. 4 (DIR/attention_block<i>_video.png); for audio, under its waveform or spectrogram
(DIR/attention_block<i>_audio.png). Each map is min-max scaled to [0, 1] on its own, so the
first cross-attend's input-like maps and the later ones' tartan-like patterns both stay
visible; titles give the raw range and the share of all attention that went to the modality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from perceiver.clips import (  # noqa: E402
    LATENT_CHOICES,
    absent_modalities,
    attention_grids,
    clip_batch,
    read_clip,
    read_stored_sample,
)
from perceiver.loader import window_starts  # noqa: E402
from perceiver.plots import audio_attention_figure, save, video_attention_figure  # noqa: E402
from perceiver.saved import load_model  # noqa: E402
from pipeline.dataset import DatasetMismatchError, check_compatible, open_dataset  # noqa: E402
from pipeline.decode import DecodeError  # noqa: E402
from pipeline.video import Video  # noqa: E402

LATENT_TITLES = {"mean": "mean over latents", "peaked": "most peaked latent"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt (model.json beside it)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--clip", help="a media file, decoded at the run's recipe")
    source.add_argument("--data", help="a dataset directory written by jobs/preprocess.py (with --key)")
    p.add_argument("--key", help="the sample key within --data")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--blocks", default="0,-1", help="comma-separated block indices; negative counts from the end")
    p.add_argument("--latent", choices=LATENT_CHOICES, default="mean",
                   help="average the latents, or show the single latent of lowest entropy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if (args.data is None) != (args.key is None):
        p.error("--key goes with --data, and --data needs --key")
    try:
        args.blocks = [int(b) for b in args.blocks.split(",") if b.strip()]
    except ValueError:
        p.error(f"--blocks {args.blocks!r}: expected integers like 0,-1")
    return args


def resolve_blocks(blocks: list[int], num_blocks: int) -> list[int]:
    """Block indices made non-negative and deduplicated in order; ValueError for one out of range."""
    out: list[int] = []
    for b in blocks:
        if not -num_blocks <= b < num_blocks:
            raise ValueError(f"--blocks: block {b} does not exist, the model has {num_blocks} (0..{num_blocks - 1})")
        if b % num_blocks not in out:
            out.append(b % num_blocks)
    return out


def min_max(grid: np.ndarray) -> np.ndarray:
    """``grid`` scaled to [0, 1]; all zeros where it is flat."""
    span = float(grid.max() - grid.min())
    return (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)


def video_view(kind: Video, window: np.ndarray, start_s: float) -> tuple[np.ndarray, list[float]]:
    """One window's stored frames (F, S, S, 3) as the model sees them in evaluation, and each frame's time
    in the clip (seconds): the centre ``size`` square, where the stored frames are larger for training's
    random crops; the patch grid covers that square only."""
    size, top = kind.recipe.size, (window.shape[1] - kind.recipe.size) // 2
    frames = window[:, top:top + size, top:top + size]
    return frames, [start_s + i / kind.recipe.fps for i in range(frames.shape[0])]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, cfg, classes = load_model(args.checkpoint)
        blocks = resolve_blocks(args.blocks, cfg.model.num_blocks)
        if args.data is not None:
            info = open_dataset(args.data)
            check_compatible(info, cfg.data, model.modalities, "--data")
            sample = read_stored_sample(info.shards, args.key)
        else:
            sample = read_clip(args.clip, cfg.data, model.modalities)
    except DecodeError as err:
        print(f"error: {args.clip}: cannot decode: {err.detail} [{err.reason}]", file=sys.stderr)
        return 1
    except (FileNotFoundError, DatasetMismatchError, KeyError, ValueError) as err:
        # KeyError's str() is the repr of its message: print the message itself.
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    for m in absent_modalities(sample, model.modalities):
        print(f"note: no {m} stream: its tokens carry no content, only position and modality features")
    batch = clip_batch(sample, model.modalities, 1, len(classes)).to(torch.device(args.device))
    grids = attention_grids(model.to(args.device), batch, args.latent)
    (start_s,) = window_starts(sample.meta, model.modalities, 1, None)  # the window clip_batch took
    name = sample.key
    kinds = {m.name: m for m in model.modalities}
    for b in blocks:
        for modality, grid in grids[b].items():
            # From the batch on the device: JPEG frames are decoded there, stored audio becomes its values.
            kind, window = kinds[modality], batch.content[modality][:1]
            window = (window if isinstance(kind, Video) else kind.prepare(window))[0].cpu().numpy()
            # Scaled per map: a map's pattern lives in small differences between near-uniform weights
            # (the audio plot's axis starts at 0 and would flatten them); the raw range goes in the title.
            title = (f"{name}: block {b} cross-attention on {modality} ({LATENT_TITLES[args.latent]})\n"
                     f"{grid.sum():.0%} of all attention; scaled to [0, 1] from [{grid.min():.2g}, {grid.max():.2g}]")
            out = Path(args.out) / f"attention_block{b}_{modality}.png"
            if isinstance(kind, Video):  # the map over the frames; a signal's trace or spectrogram otherwise
                frames, times = video_view(kind, window, start_s)
                print(save(video_attention_figure(min_max(grid), frames, times=times, title=title), out))
            else:
                print(save(audio_attention_figure(min_max(grid), window, title=title), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
