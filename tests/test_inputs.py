"""The multimodal input array: patch order, paper sizes, modality vectors, video dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver import MultimodalInput
from pipeline.audio import patchify_audio, patchify_spectrogram
from pipeline.fourier import fourier_features
from pipeline.modality import ModalitySpec
from pipeline.video import patchify_video


def paper_specs() -> list[ModalitySpec]:
    """Sec. 4.2: 61,440 samples in 128-sample patches; 32x224x224x3 video in 2x8x8 patches."""
    return [
        ModalitySpec("audio", content_channels=128, grid=(480,), num_bands=16),
        ModalitySpec(
            "video",
            content_channels=2 * 8 * 8 * 3,
            grid=(16, 28, 28),
            num_bands=16,
            max_resolution=(16, 28, 28),
        ),
    ]


def small_specs() -> list[ModalitySpec]:
    return [
        ModalitySpec("audio", content_channels=6, grid=(5,), num_bands=2),
        ModalitySpec("video", content_channels=12, grid=(2, 2, 3), num_bands=1),
    ]


def small_content(batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "audio": torch.randn(batch, 5, 6, generator=g) + 3,
        "video": torch.randn(batch, 12, 12, generator=g) + 3,
    }


def test_paper_sizes():
    specs = paper_specs()
    module = MultimodalInput(specs, min_modality_channels=4)
    assert module.out_channels == 487 == 384 + 3 * 33 + 4
    assert module.num_tokens == 13_024
    audio = patchify_audio(torch.randn(1, 61_440), 128)
    video = patchify_video(torch.rand(1, 32, 224, 224, 3), (2, 8, 8))
    inputs, mask = module({"audio": audio, "video": video})
    assert inputs.shape == (1, 13_024, 487) and mask.shape == (1, 13_024) and mask.all()
    # audio first (the order of specs): [content | 33 Fourier | 487 - 128 - 33 learned]
    torch.testing.assert_close(inputs[0, :480, :128], audio[0])
    torch.testing.assert_close(inputs[0, :480, 128:161], fourier_features((480,), 16))
    torch.testing.assert_close(inputs[0, :480, 161:], module.modality_vectors["audio"].expand(480, -1))
    assert module.modality_vectors["audio"].shape == (487 - 128 - 33,)
    # video: [384 content | 99 Fourier | 4 learned]
    torch.testing.assert_close(inputs[0, 480:, :384], video[0])
    torch.testing.assert_close(inputs[0, 480:, 384:483], fourier_features((16, 28, 28), 16))
    assert module.modality_vectors["video"].shape == (4,)


def test_video_patch_order_matches_fourier_grid_order():
    t, h, w, c, patch = 4, 6, 10, 2, (2, 3, 5)
    video = torch.arange(2 * t * h * w * c, dtype=torch.float32).reshape(2, t, h, w, c)
    tokens = patchify_video(video, patch)
    grid = (t // patch[0], h // patch[1], w // patch[2])
    assert tokens.shape == (2, np.prod(grid), np.prod(patch) * c)
    positions = fourier_features(grid, 1)[:, :3]
    for i in range(tokens.shape[1]):
        gt, gh, gw = np.unravel_index(i, grid)
        block = video[:, gt * 2 : gt * 2 + 2, gh * 3 : gh * 3 + 3, gw * 5 : gw * 5 + 5]
        torch.testing.assert_close(tokens[:, i], block.reshape(2, -1))
        want = [np.linspace(-1, 1, n)[j] for j, n in zip((gt, gh, gw), grid, strict=True)]
        torch.testing.assert_close(positions[i], torch.tensor(want, dtype=torch.float32))
    # round trip: the inverse permutation restores the video
    restored = tokens.reshape(2, *grid, *patch, c).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(video.shape)
    torch.testing.assert_close(restored, video)


def test_audio_and_spectrogram_patches():
    wave = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)
    tokens = patchify_audio(wave, 4)
    assert tokens.shape == (2, 3, 4)
    torch.testing.assert_close(tokens[:, 1], wave[:, 4:8])
    torch.testing.assert_close(tokens.reshape(2, 12), wave)
    spec = torch.arange(2 * 6 * 5, dtype=torch.float32).reshape(2, 6, 5)
    tokens = patchify_spectrogram(spec, 3)
    assert tokens.shape == (2, 2, 15)
    torch.testing.assert_close(tokens[:, 1], spec[:, 3:6].reshape(2, 15))
    with pytest.raises(ValueError):
        patchify_audio(wave, 5)
    with pytest.raises(ValueError):
        patchify_video(torch.zeros(1, 3, 4, 4, 1), (2, 2, 2))


def video_zeroed(inputs: torch.Tensor) -> torch.Tensor:
    """(B,) True where the example's video content is all zero (video tokens are 5..16, content 12 wide)."""
    return (inputs[:, 5:, :12] == 0).all(dim=(1, 2))


def test_video_dropout_in_training_only():
    module = MultimodalInput(small_specs(), dropout={"video": 0.3})
    content = small_content(2000)
    inputs, _ = module(content, generator=torch.Generator().manual_seed(0))
    dropped = video_zeroed(inputs)
    assert 0.25 < dropped.float().mean() < 0.35
    assert (inputs[:, :5, :6] != 0).all()  # audio untouched
    # a dropped example keeps its position features and modality vector
    example = int(dropped.nonzero()[0])
    kept = inputs[example, 5:, 12:]
    torch.testing.assert_close(kept[:, :9], fourier_features((2, 2, 3), 1))
    torch.testing.assert_close(kept[:, 9:], module.modality_vectors["video"].expand(12, -1))
    # the generator makes it reproducible
    again, _ = module(content, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, inputs)
    module.eval()
    assert not video_zeroed(module(content)[0]).any()


@pytest.mark.parametrize("training", [False, True])
def test_absent_modality_is_zeroed_in_train_and_eval(training):
    module = MultimodalInput(small_specs(), dropout={"video": 0.0}).train(training)
    content = small_content(3)
    content["video"][1] = float("nan")  # a missing modality's content may be anything
    inputs, _ = module(content, present={"video": torch.tensor([True, False, True])})
    assert video_zeroed(inputs).tolist() == [False, True, False]
    assert torch.isfinite(inputs).all()
    torch.testing.assert_close(inputs[1, 5:, 21:], module.modality_vectors["video"].expand(12, -1))


def test_modality_vectors_pad_to_common_width_and_get_gradients():
    module = MultimodalInput(small_specs(), min_modality_channels=4)
    # audio 6 + 5 = 11, video 12 + 3 * 3 = 21 -> 25 wide
    assert module.out_channels == 25 and module.num_tokens == 17
    assert module.modality_vectors["audio"].shape == (14,)
    inputs, mask = module(small_content(2))
    assert inputs.shape == (2, 17, 25) and mask.dtype == torch.bool and mask.all()
    inputs.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert set(module.state_dict()) == {"modality_vectors.audio", "modality_vectors.video"}


def test_precomputed_position_features_are_checked():
    specs = small_specs()
    good = {s.name: fourier_features(s.grid, s.num_bands) for s in specs}
    MultimodalInput(specs, position_features=good)
    MultimodalInput(specs, position_features={"video": good["video"].numpy() + 1e-6})
    with pytest.raises(ValueError, match="video"):
        MultimodalInput(specs, position_features={"video": fourier_features((2, 2, 3), 2)})
    with pytest.raises(ValueError, match="audio"):
        MultimodalInput(specs, position_features={"audio": good["audio"] + 1e-3})
    with pytest.raises(ValueError, match="unknown"):
        MultimodalInput(specs, position_features={"text": good["audio"]})
