"""Where the loader's batches are allocated: in a DataLoader worker process, in shared memory.

A batch leaves a worker process through shared memory, and a tensor built in ordinary memory is
copied there as it is sent, so each batch would briefly exist twice in every worker. Built in
shared memory from the start (as torch's ``default_collate`` does in workers), it is sent as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info


def empty(shape: Sequence[int], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor for a batch: in shared memory inside a DataLoader worker."""
    out = torch.from_numpy(np.empty(0, dtype)).new_empty(tuple(shape))
    return out.share_memory_() if get_worker_info() is not None else out


def stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """``np.stack(arrays)`` as a batch tensor."""
    out = empty((len(arrays), *np.shape(arrays[0])), np.result_type(*arrays))
    np.stack(arrays, out=out.numpy())
    return out


def concatenate(arrays: Sequence[np.ndarray], dtype: np.dtype) -> torch.Tensor:
    """``np.concatenate`` of 1-D arrays as one flat batch tensor."""
    out = empty((sum(len(a) for a in arrays),), dtype)
    if arrays:
        np.concatenate(arrays, out=out.numpy())
    return out
