"""Fourier position features (Perceiver paper Sec. 3.2 and App. D).

The layout follows DeepMind's ``position_encoding.generate_fourier_features`` so that
features written by the preprocessing and features computed here agree channel for
channel. For an index grid with ``d`` axes of sizes ``(n_1, ..., n_d)`` and ``K`` bands:

* rows: one per grid point, ``prod(n_i)`` in all, in row-major (C) order of the grid,
  i.e. the last axis varies fastest, exactly as ``meshgrid(indexing="ij")`` flattened;
* positions: axis ``i`` takes ``x_i = linspace(-1, 1, n_i)`` with both ends included;
* frequencies: axis ``i`` has ``f_{i,k} = linspace(1, R_i / 2, K)[k]`` where ``R_i`` is the
  max resolution of that axis (the grid size by default; ``R_i / 2`` is its Nyquist
  frequency);
* channels, ``d * (2K + 1)`` in all::

      [0, d)                      x_i                      (concat_pos=True only)
      [d, d + dK)                 sin(pi * f_{i,k} * x_i)  at d + i*K + k
      [d + dK, d + 2dK)           cos(pi * f_{i,k} * x_i)  at d + dK + i*K + k  (not with sine_only)

  so positions come first, then all sines, then all cosines, each block axis-major then
  band. Without ``concat_pos`` every index above drops by ``d``; with ``sine_only`` the
  cosine block is absent, giving ``d * (K + 1)`` channels.

The modalities' grids are their patch grids (``pipeline.modality``), so R is at most a few
hundred per axis (480 audio patches of the paper's 1.28 s window); the phases are still
computed in float64, so that a per-sample grid (R = 61,440, phases up to about 96,500,
where float32's spacing is 0.008) stays exact too, and only the finished features are
rounded to float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def fourier_features(
    index_dims: Sequence[int],
    num_bands: int,
    max_resolution: Sequence[int] | None = None,
    concat_pos: bool = True,
    sine_only: bool = False,
) -> Tensor:
    """Fourier position features of every point of an index grid.

    Args:
        index_dims: grid size per axis, ``(n_1, ..., n_d)``.
        num_bands: ``K``, frequency bands per axis.
        max_resolution: ``R`` per axis, sets the highest frequency ``R/2``; None uses
            ``index_dims``.
        concat_pos: prepend the raw positions in [-1, 1].
        sine_only: leave out the cosine block.

    Returns:
        float32 tensor ``(prod(index_dims), d * (2K + 1))``; ``d * (K + 1)`` with
        ``sine_only``, ``d`` channels fewer without ``concat_pos`` (layout in the module
        docstring). A fresh tensor on every call: writing to it leaves the cache intact.
    """
    dims = tuple(int(n) for n in index_dims)
    res = dims if max_resolution is None else tuple(int(r) for r in max_resolution)
    if len(res) != len(dims):
        raise ValueError(f"max_resolution {res} needs one entry per axis of index_dims {dims}")
    if not dims or min(dims) < 1 or num_bands < 1:
        raise ValueError(
            f"need a non-empty grid of positive sizes and num_bands >= 1, got {dims}, {num_bands}"
        )
    return _cached_features(dims, int(num_bands), res, bool(concat_pos), bool(sine_only)).clone()


@lru_cache(maxsize=32)
def _cached_features(
    dims: tuple[int, ...], num_bands: int, res: tuple[int, ...], concat_pos: bool, sine_only: bool
) -> Tensor:
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float64) for n in dims]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(dims))  # (M, d)
    freqs = np.stack([np.linspace(1.0, r / 2.0, num_bands, dtype=np.float64) for r in res])  # (d, K)
    phase = math.pi * (pos[:, :, None] * freqs[None, :, :]).reshape(pos.shape[0], -1)  # (M, d*K), axis-major
    blocks = [pos] if concat_pos else []
    blocks.append(np.sin(phase))
    if not sine_only:
        blocks.append(np.cos(phase))
    return torch.from_numpy(np.concatenate(blocks, axis=-1).astype(np.float32))
