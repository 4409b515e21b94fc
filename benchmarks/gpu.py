"""One-shot GPU benchmark: can one GPU be fed at the audioset config, and what does it do with it?

    python benchmarks/gpu.py            # on a CUDA machine: the figures below, in under 5 minutes
    python benchmarks/gpu.py --smoke    # anywhere: micro shapes through the same code (the tests run it)

Prints, side by side:
1. the audioset model's fwd+bwd+optimizer step in bf16 and its model FLOP utilisation, with and
   without torch.compile, with qk_channels 487 (the paper's, min(C, D)) against 512;
2. JPEG decoding of stored frames on the device (``shards.EncodedFrames.decode``, the training
   path's own call) in frames/s, against the 66,000 frames/s one H100 at 2,078 samples/s needs,
   and against Pillow on one CPU core (the shortfall in CPU cores' worth);
3. a 1-GPU training loop without Ray on shards it writes itself (``TrainStream`` batches,
   ``Batch.to`` decoding on the device), in samples/s, and whether it is loader- or compute-bound.

It imports no Ray, decord, PyAV or torchaudio. The project's GPU machine has none of them and
reaches no package index: its pure-Python needs travel as wheels, made here with
    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpuwheels \\
        webdataset braceexpand omegaconf antlr4-python3-runtime==4.9.3
and installed there with ``pip install --no-index --no-deps --target /tmp/site .gpuwheels/*.whl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver.classifier import AVClassifier  # noqa: E402
from perceiver.config import load_config  # noqa: E402
from perceiver.loader import TrainStream, assemble, train_batches  # noqa: E402
from perceiver.optim import build_optimizer  # noqa: E402
from pipeline import modality, shards, storage  # noqa: E402
from pipeline.dataset import DatasetInfo  # noqa: E402
from pipeline.recipe import modalities_of  # noqa: E402
from pipeline.video import Video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s of the SXM parts
NEEDED_FPS = 66_000  # frames/s: 2,078 samples/s (one H100 at 40% of bf16 peak) x 32 frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clip(mods, seconds: float, rng: np.random.Generator) -> SimpleNamespace:
    """A decoded clip of textured frames and noise at the recipe, as the decoder would hand it over."""
    v, a = mods[0].data.video, mods[0].data.audio
    frames, samples, side = round(seconds * v.fps), round(seconds * a.sample_rate), v.stored_size or v.size
    base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    video = np.stack([np.roll(base, i, axis=1) for i in range(frames)])
    return SimpleNamespace(video=video, video_frames=frames, video_first=0, has_video=True,
                           audio=rng.uniform(-0.5, 0.5, samples).astype(np.float32), audio_samples=samples,
                           audio_first=0, has_audio=True)


def _step(model: AVClassifier, optimizer, batch, device: torch.device, augment=None) -> None:
    """One training step as perceiver.training takes it: bf16 autocast on CUDA, sigmoid BCE, LAMB."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(batch, augment=augment)
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch.labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def write_dataset(cfg, root: Path, clips: int) -> DatasetInfo:
    """``clips`` clips at the recipe in one shard, written by the shard writer."""
    mods = modalities_of(cfg.data, cfg.inputs.modalities)
    rng = np.random.default_rng(0)
    samples = [shards.sample_members(modality.clip_sample(f"c{i}", _clip(mods, cfg.data.segment_seconds, rng),
                                                          mods, {"labels": [i % 8]})) for i in range(clips)]
    loc = storage.locate(root)
    fourier = shards.fourier_members(modality.tags(mods), modality.position_features(mods))
    shards.write_shard(loc, "train-000000.tar", fourier, samples)
    return DatasetInfo(loc.uri, (loc.join("train-000000.tar"),), clips,
                       tuple({"index": i, "mid": f"/m/{i}", "name": str(i)} for i in range(8)), {})


def step_figures(cfg, batch, device: torch.device, iters: int, compile_backend: str) -> dict[str, tuple[float, float]]:
    """{variant: (ms per step, model FLOP utilisation)} for the fwd+bwd+LAMB step in bf16."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    peak = next((p for name, p in PEAK_BF16.items() if device.type == "cuda"
                 and name in torch.cuda.get_device_name(device)), None)
    for qk in (None, 512):
        flops = None  # counted on the eager model: the compiled one runs the same arithmetic
        for compiled in (False, True):
            model = AVClassifier(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, qk_channels=qk)),
                                 8).to(device)
            if compiled:
                model.perceiver.compile(backend=compile_backend)
            optimizer = build_optimizer(model, 1e-3, 0.01)
            if flops is None:
                with FlopCounterMode(display=False) as counter:
                    _step(model, optimizer, batch, device)
                flops = counter.get_total_flops()
            for _ in range(2):  # warm-up (and compilation)
                _step(model, optimizer, batch, device)
            _sync(device)
            started = time.perf_counter()
            for _ in range(iters):
                _step(model, optimizer, batch, device)
            _sync(device)
            seconds = (time.perf_counter() - started) / iters
            mfu = flops / seconds / peak if peak else float("nan")
            out[f"qk {qk or 'min(C, D)'}, {'compiled' if compiled else 'eager'}"] = (seconds * 1e3, mfu)
    return out


def jpeg_figures(cfg, info: DatasetInfo, device: torch.device, rounds: int) -> dict[str, float]:
    """Frames/s of the training path's batched device decode, and of Pillow on one CPU core."""
    frames = [f for s in shards.iter_samples(info.shards, decode_frames=False) for f in s.content["video"]]
    video = next(m for m in modalities_of(cfg.data, cfg.inputs.modalities) if isinstance(m, Video))
    per = video.recipe.num_frames
    batch = video.collate([[bytes(f) for f in frames[i:i + per]] for i in range(0, len(frames) - per + 1, per)])
    batch.decode(device)
    _sync(device)
    started = time.perf_counter()
    for _ in range(rounds):
        batch.decode(device)
    _sync(device)
    device_fps = rounds * len(batch.frames) / (time.perf_counter() - started)
    started = time.process_time()
    shards.decode_jpeg_frames(frames[:per * 4])
    cpu_fps = per * 4 / (time.process_time() - started)
    return {"device": device_fps, "Pillow, one core": cpu_fps}


def loop_figures(cfg, info: DatasetInfo, device: torch.device, steps: int, workers: int) -> dict[str, float]:
    """samples/s of a 1-GPU training loop, and the share of its time spent waiting for batches."""
    model = AVClassifier(cfg, 8).to(device)
    optimizer = build_optimizer(model, 1e-3, 0.01)
    stream = TrainStream(info, model.modalities, batch_size=cfg.train.batch_size, seed=0, epoch=0, rank=0, world=1,
                         steps=steps + 2, shuffle_buffer=4, loader_workers=workers)
    batches, waited = train_batches(stream), 0.0
    for i in range(steps + 2):
        if i == 2:  # after the loader's start and warm-up
            _sync(device)
            started, waited = time.perf_counter(), 0.0
        before = time.perf_counter()
        batch = next(batches).to(device)
        waited += time.perf_counter() - before
        _step(model, optimizer, batch, device, cfg.train.augment)
    _sync(device)
    total = time.perf_counter() - started
    return {"samples/s": steps * cfg.train.batch_size / total, "waiting for batches": waited / total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="micro shapes, a few iterations (CPU or GPU)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the training loop")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke or device.type != "cuda"
    config = "configs/micro.yaml" if smoke else "configs/audioset.yaml"
    cfg = load_config(ROOT / config, ["data.video.encoding=jpeg", "data.segment_seconds=2.0"] if smoke else [])
    iters, rounds, steps, workers, clips = (2, 1, 2, 0, 8) if smoke else (10, 5, 30, args.workers, 96)
    print(f"gpu benchmark: {config} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
          f"{' (smoke mode)' if smoke else ''}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        info = write_dataset(cfg, Path(tmp), clips)
        mods = modalities_of(cfg.data, cfg.inputs.modalities)
        samples = list(shards.iter_samples(info.shards, decode_frames=False))[:cfg.train.batch_size]
        batch = assemble(samples, [[0.0]] * len(samples), mods, 8).to(device)
        print("\n1. step (fwd+bwd+LAMB, bf16 on CUDA), batch", len(batch))
        figures = step_figures(cfg, batch, device, iters, "aot_eager" if smoke else "inductor")
        base = next(iter(figures.values()))[0]
        for variant, (ms, mfu) in figures.items():
            print(f"   {variant:26s} {ms:9.1f} ms/step  {base / ms:5.2f}x  MFU {mfu:6.1%}")
        jpeg = jpeg_figures(cfg, info, device, rounds)
        side = next(m.stored for m in mods if isinstance(m, Video))
        print(f"\n2. JPEG decoding, {side} x {side} frames")
        print(f"   on the {device.type:4s} {jpeg['device']:10.0f} frames/s  {jpeg['device'] / NEEDED_FPS:5.2f}x the "
              f"{NEEDED_FPS} one H100 needs")
        print(f"   Pillow, one core {jpeg['Pillow, one core']:8.0f} frames/s: "
              f"{NEEDED_FPS / jpeg['Pillow, one core']:.0f} cores for one H100")
        loop = loop_figures(cfg, info, device, steps, workers)
        bound = "loader-bound" if loop["waiting for batches"] > 0.2 else "compute-bound"
        print(f"\n3. 1-{device.type.upper()} loop, {workers} loader workers: {loop['samples/s']:.1f} samples/s, "
              f"{loop['waiting for batches']:.0%} of the time waiting for batches: {bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
