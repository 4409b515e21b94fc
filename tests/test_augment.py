"""The paper's augmentation on the device: per clip, reproducible from the step's generator, training only;
frames decoded where the step runs; and the GPU benchmark's smoke mode, so the script cannot rot."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import torch

from perceiver.classifier import AVClassifier
from perceiver.config import AugmentConfig, load_config
from perceiver.loader import Batch
from pipeline.recipe import modalities_of
from pipeline.shards import decode_jpeg_frames, encode_jpeg_frames
from pipeline.video import Video

CFG = load_config("configs/micro.yaml", ["data.video.stored_size=40"])
VIDEO, AUDIO = modalities_of(CFG.data, CFG.inputs.modalities)[::-1]


def _clips(b: int = 6) -> torch.Tensor:
    """uint8 (B, 8, 40, 40, 3): every frame of a clip the same picture, a gradient unlike its mirror."""
    ramp = np.linspace(0, 255, 40, dtype=np.float32)[None, :, None] * np.ones((40, 1, 3), np.float32)
    clip = np.broadcast_to(ramp, (8, 40, 40, 3))
    return torch.from_numpy(np.stack([clip * (0.5 + 0.1 * i) for i in range(b)]).astype(np.uint8))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_evaluation_takes_the_centre_crop_exactly():
    x = _clips()
    out = VIDEO.prepare(x)
    assert out.shape == (6, 8, 32, 32, 3)
    torch.testing.assert_close(out, x[:, :, 4:36, 4:36].float() / 127.5 - 1.0)


def test_training_augmentation_is_one_draw_per_clip_and_reproducible():
    aug = AugmentConfig(crop_min_scale=0.3, flip=True, colour=0.4)
    x = _clips()
    a, b = VIDEO.prepare(x, generator=_gen(1), augment=aug), VIDEO.prepare(x, generator=_gen(1), augment=aug)
    torch.testing.assert_close(a, b)  # the same generator state gives the same augmentation (exact resume)
    assert (a == a[:, :1]).all()  # every frame of a clip gets the same crop, flip and colour
    assert not torch.equal(a, VIDEO.prepare(x, generator=_gen(2), augment=aug))
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_a_flip_mirrors_the_clip_and_nothing_else():
    flips = VIDEO.prepare(_clips(16), generator=_gen(3), augment=AugmentConfig(flip=True))
    plain = VIDEO.prepare(_clips(16))
    mirrored = [torch.allclose(f, p.flip(dims=(2,)), atol=1e-5) for f, p in zip(flips, plain, strict=True)]
    kept = [torch.allclose(f, p, atol=1e-5) for f, p in zip(flips, plain, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def test_specaugment_masks_time_and_frequency_with_the_mean_level():
    windows = torch.randn(4, 100, 32)
    aug = SimpleNamespace(spec_time_masks=2, spec_time_width=10, spec_freq_masks=1, spec_freq_width=8)
    out = AUDIO.prepare(windows, generator=_gen(0), augment=aug)
    changed = out != windows
    assert changed.any() and (out[changed] == -4.27).all()
    frames_hit, bins_hit = changed.all(dim=2).sum(dim=1), changed.all(dim=1).sum(dim=1)
    assert (frames_hit <= 20).all() and (bins_hit <= 8).all()
    assert torch.equal(AUDIO.prepare(windows), windows)  # evaluation: untouched


def test_jpeg_frames_are_decoded_on_the_step_device_as_pillow_decodes_them():
    jpeg = load_config("configs/micro.yaml", ["data.video.encoding=jpeg"])
    video = next(m for m in modalities_of(jpeg.data, jpeg.inputs.modalities) if isinstance(m, Video))
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    encoded = encode_jpeg_frames(frames, 75)
    # The first window as Video.window cuts it (writable buffers); the second is absent.
    batch = video.collate([[bytearray(f) for f in encoded], video.blank()])
    decoded, ok = batch.decode(torch.device("cpu"))
    assert ok.tolist() == [True, False] and decoded.shape == (2, 8, 32, 32, 3) and not decoded[1].any()
    pillow = decode_jpeg_frames(encoded)
    assert np.abs(decoded[0].numpy().astype(int) - pillow).max() <= 2


def test_augmentation_leaves_the_fourier_features_untouched():
    model = AVClassifier(CFG, num_classes=8).train()
    batch = Batch({"audio": torch.randn(2, 100, 32), "video": _clips(2)},
                  {"audio": torch.ones(2, dtype=torch.bool), "video": torch.ones(2, dtype=torch.bool)}, {},
                  torch.zeros(2, 8))
    tokens = model.tokens(batch, _gen(0), AugmentConfig(crop_min_scale=0.3, flip=True, colour=0.4,
                                                        spec_time_masks=2, spec_time_width=10))
    inputs, _ = model.inputs(tokens)
    at = 0
    for spec in model.inputs.specs:
        rows = inputs[0, at:at + spec.num_tokens]
        torch.testing.assert_close(rows[:, spec.content_channels:spec.content_channels + spec.fourier_channels],
                                   spec.position_features())
        at += spec.num_tokens


def test_the_gpu_benchmark_runs_in_its_smoke_mode():
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    for line in ("1. step", "qk min(C, D), compiled", "qk 512, eager", "2. JPEG decoding", "3. 1-CPU loop"):
        assert line in result.stdout
