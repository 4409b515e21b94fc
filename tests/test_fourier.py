"""Fourier features against an independent float64 transcription of DeepMind's definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.fourier import fourier_features


def reference(index_dims, num_bands, max_resolution=None, concat_pos=True, sine_only=False) -> np.ndarray:
    """App. D written out point by point: [positions | sines | cosines], axis-major then band."""
    res = index_dims if max_resolution is None else max_resolution
    rows = []
    for idx in np.ndindex(*index_dims):  # row-major, last axis fastest
        pos = [-1.0 + 2.0 * i / (n - 1) if n > 1 else -1.0 for i, n in zip(idx, index_dims, strict=True)]
        sines, cosines = [], []
        for x, r in zip(pos, res, strict=True):
            for k in range(num_bands):
                f = 1.0 + k * (r / 2.0 - 1.0) / (num_bands - 1) if num_bands > 1 else 1.0
                sines.append(np.sin(np.pi * f * x))
                cosines.append(np.cos(np.pi * f * x))
        rows.append((pos if concat_pos else []) + sines + ([] if sine_only else cosines))
    return np.asarray(rows, dtype=np.float64)


GRIDS = [
    ((7,), 4, None),
    ((480,), 16, (61440,)),  # the raw-audio window: 480 patches, frequencies up to 30,720
    ((5, 6), 8, (224, 224)),
    ((4, 3, 5), 3, None),
]


@pytest.mark.parametrize("index_dims,num_bands,max_resolution", GRIDS)
@pytest.mark.parametrize("concat_pos,sine_only", list(itertools.product([True, False], repeat=2)))
def test_matches_reference(index_dims, num_bands, max_resolution, concat_pos, sine_only):
    got = fourier_features(index_dims, num_bands, max_resolution, concat_pos=concat_pos, sine_only=sine_only)
    want = reference(index_dims, num_bands, max_resolution, concat_pos, sine_only)
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_shapes():
    d, k = 3, 16
    assert fourier_features((16, 28, 28), k).shape == (16 * 28 * 28, d * (2 * k + 1))
    assert fourier_features((16, 28, 28), k, sine_only=True).shape == (12544, d * (k + 1))
    assert fourier_features((16, 28, 28), k, concat_pos=False).shape == (12544, d * 2 * k)
    assert fourier_features((16, 28, 28), k, concat_pos=False, sine_only=True).shape == (12544, d * k)


def test_layout_positions_first_then_sines_then_cosines():
    feats = fourier_features((3, 5), 4)
    x0 = torch.linspace(-1, 1, 3).repeat_interleave(5)
    x1 = torch.linspace(-1, 1, 5).repeat(3)
    torch.testing.assert_close(feats[:, 0], x0)
    torch.testing.assert_close(feats[:, 1], x1)
    # lowest band is f = 1 on both axes: axis 0's sine at 2, axis 1's at 2 + K, cosines after all sines
    torch.testing.assert_close(feats[:, 2], torch.sin(torch.pi * x0))
    torch.testing.assert_close(feats[:, 2 + 4], torch.sin(torch.pi * x1))
    torch.testing.assert_close(feats[:, 2 + 8], torch.cos(torch.pi * x0))


def test_cache_cannot_be_corrupted_by_callers():
    first = fourier_features((6,), 2)
    first.zero_()
    assert fourier_features((6,), 2).abs().sum() > 0
    # list and tuple arguments name the same features
    torch.testing.assert_close(fourier_features([4, 4], 2, [8, 8]), fourier_features((4, 4), 2, (8, 8)))


def test_float32_phases_would_be_wrong_at_audio_resolution():
    """Why the phases are float64: at pi * 30,720 * x float32 rounding moves sin by ~1e-2."""
    x = torch.linspace(-1, 1, 480, dtype=torch.float32)
    f = torch.linspace(1, 30720, 16, dtype=torch.float32)
    sines32 = torch.sin(torch.pi * x[:, None] * f[None, :]).flatten()
    exact = fourier_features((480,), 16, (61440,), concat_pos=False, sine_only=True).flatten()
    assert (sines32 - exact).abs().max() > 1e-3


def test_rejects_mismatched_resolution():
    with pytest.raises(ValueError, match="one entry per axis"):
        fourier_features((4, 4), 2, (8,))
