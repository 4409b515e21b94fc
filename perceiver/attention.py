"""The Perceiver's attention layers (paper Sec. 2 and App. C).

Shapes: B batch, N latents, D latent width, M input tokens, C input channels,
H heads, E query/key width per head, V value width per head.

Every attention goes through ``torch.nn.functional.scaled_dot_product_attention``, which
never holds the N x M weights in memory. Only when the caller asks for the weights (to look
at the maps) are they computed explicitly with a softmax.

With one head whose keys are as wide as the inputs (the paper's cross-attention: width
min(C, D) = C when C <= D), the key and value projections are folded onto the N queries
instead of being applied to the M inputs (``Attention.fold_kv``): the same parameters and
the same function, but no M-long keys and values are computed or kept for the backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (q (B,H,N,E), k (B,H,M,E), v (B,H,M,V), mask (B,1,1,M) bool or None) -> (B,H,N,V)
AttentionKernel = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(E)) v without materialising the weights; mask True = attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """The explicit weights softmax(q k^T / sqrt(E)), (B,H,N,M); masked entries are 0."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention of ``N`` queries over ``M`` keys/values, projected to ``out_dim``.

    The key projection has no bias: it would add the same q . b_k to every logit of a query,
    which the softmax cancels, so it could never learn anything.

    ``kernel`` (the function from projected q, k, v to attended values) and ``fold_kv`` are
    ordinary attributes so a benchmark or test can swap the implementation of one model
    without touching the layer code; neither changes the parameters or the function.
    """

    def __init__(self, q_dim: int, kv_dim: int, qk_channels: int, v_channels: int, heads: int, out_dim: int):
        super().__init__()
        if qk_channels % heads or v_channels % heads:
            raise ValueError(
                f"{heads} heads must divide qk_channels={qk_channels} and v_channels={v_channels}"
            )
        self.heads = heads
        self.to_q = nn.Linear(q_dim, qk_channels)
        self.to_k = nn.Linear(kv_dim, qk_channels, bias=False)
        self.to_v = nn.Linear(kv_dim, v_channels)
        self.to_out = nn.Linear(v_channels, out_dim)
        self.kernel: AttentionKernel = fused_attention
        # Folding needs one head (so the folded query is one vector per query) and keys as wide
        # as x_kv (so attending over x_kv itself costs no more than over the keys).
        self.fold_kv: bool = heads == 1 and qk_channels == kv_dim

    def forward(
        self, x_q: Tensor, x_kv: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x_q: (B, N, q_dim) queries' source.
            x_kv: (B, M, kv_dim) keys' and values' source.
            mask: (B, M) bool, True = a real token; None = all real.
            return_weights: also return the weights, computed explicitly.

        Returns:
            (B, N, out_dim), and the weights (B, H, N, M) or None.
        """
        q, k, v = self._folded_qkv(x_q, x_kv) if self.fold_kv else self._projected_qkv(x_q, x_kv)
        has_tokens = None
        if mask is not None:
            has_tokens = mask.any(dim=-1)[:, None, None, None]  # (B,1,1,1)
            # A sample with no real token has nothing to attend to, and a softmax over an
            # empty set is NaN. Let it attend over its padding tokens to keep the arithmetic finite,
            # then zero its result below, so it reads as having attended to nothing.
            mask = mask[:, None, None, :] | ~has_tokens  # (B,1,1,M), broadcast over heads and queries
        weights = None
        if return_weights:
            weights = attention_weights(q, k, mask)
            out = weights @ v
        else:
            out = self.kernel(q, k, v, mask)
        if self.fold_kv:
            # The weights sum to 1, so sum_m a_m (W_v x_m + b_v) = W_v (sum_m a_m x_m) + b_v.
            out = self.to_v(out[..., : x_kv.shape[-1]])
        if has_tokens is not None:
            out = out * has_tokens
            weights = None if weights is None else weights * has_tokens
        b, h, n, dv = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * dv)), weights

    def _projected_qkv(self, x_q: Tensor, x_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B,H,N,E), k (B,H,M,E), v (B,H,M,V): the textbook projections."""
        return self._split(self.to_q(x_q)), self._split(self.to_k(x_kv)), self._split(self.to_v(x_kv))

    def _folded_qkv(self, x_q: Tensor, x_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B,1,N,P), k = v = x_kv (B,1,M,P), P = kv_dim rounded up to a multiple of 8.

        q . (W_k x) = (W_k^T q) . x, so folded queries attend straight over the inputs.
        """
        width = x_kv.shape[-1]
        q = self.to_q(x_q) @ self.to_k.weight  # (B,N,kv_dim)
        if pad := -width % 8:
            # CUDA's fused kernels need widths in multiples of 8 (the paper's inputs are 487
            # wide). Zero channels add nothing to q . x, and rescaling q keeps the softmax
            # temperature at 1/sqrt(kv_dim) although SDPA scales by 1/sqrt(kv_dim + pad).
            q = F.pad(q * ((width + pad) / width) ** 0.5, (0, pad))
            x_kv = F.pad(x_kv, (0, pad))
        return q[:, None], x_kv[:, None], x_kv[:, None]

    def _split(self, x: Tensor) -> Tensor:
        """(B, L, H*E) -> (B, H, L, E)."""
        b, length, width = x.shape
        return x.view(b, length, self.heads, width // self.heads).transpose(1, 2)


class MLP(nn.Sequential):
    """LayerNorm, Linear to ``widening * dim``, GELU, Linear back to ``dim`` (the residual is the caller's)."""

    def __init__(self, dim: int, widening: int):
        super().__init__(
            nn.LayerNorm(dim), nn.Linear(dim, widening * dim), nn.GELU(), nn.Linear(widening * dim, dim)
        )


class CrossAttention(nn.Module):
    """Latents (queries) attend to the input array (keys, values), then an MLP; both residual.

    Separate LayerNorms on latents and inputs (App. C). The MLP works at the latent width
    ``D``: it acts on the latents, and ``D`` is what reproduces the paper's parameter counts.
    """

    def __init__(self, latent_dim: int, input_channels: int, qk_channels: int, heads: int, widening: int):
        super().__init__()
        self.norm_latents = nn.LayerNorm(latent_dim)
        self.norm_inputs = nn.LayerNorm(input_channels)
        self.attention = Attention(latent_dim, input_channels, qk_channels, qk_channels, heads, latent_dim)
        self.mlp = MLP(latent_dim, widening)

    def forward(
        self, latents: Tensor, inputs: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """latents (B, N, D), inputs (B, M, C), mask (B, M) -> latents (B, N, D), weights (B, H, N, M) or None."""
        attended, weights = self.attention(
            self.norm_latents(latents), self.norm_inputs(inputs), mask, return_weights
        )
        latents = latents + attended
        return latents + self.mlp(latents), weights


class SelfAttention(nn.Module):
    """GPT-2 style pre-norm self-attention over the latents, then an MLP; both residual."""

    def __init__(self, latent_dim: int, heads: int, widening: int):
        super().__init__()
        self.norm = nn.LayerNorm(latent_dim)
        self.attention = Attention(latent_dim, latent_dim, latent_dim, latent_dim, heads, latent_dim)
        self.mlp = MLP(latent_dim, widening)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        normed = self.norm(latents)
        latents = latents + self.attention(normed, normed)[0]
        return latents + self.mlp(latents)


def attention_kernels(perceiver: nn.Module, num_tokens: int, dtype: torch.dtype,
                      device: str | torch.device = "cuda") -> str:
    """One line: each attention kind's shape and, on a CUDA ``device``, which fused SDPA kernels accept it
    (unmasked).

    The cross-attend's single head is as wide as the input array when folded (487 -> 488 in the
    paper's audioset config): past the flash kernel's head-size limit, so it gets another.
    """
    from torch.backends import cuda as sdpa

    c = perceiver.config
    cross = perceiver.cross_attends[0].attention
    qk = c.qk_channels if c.qk_channels is not None else min(c.input_channels, c.latent_dim)
    cross_dim = c.input_channels + (-c.input_channels % 8) if cross.fold_kv else qk // c.cross_heads
    kinds = {"cross-attend": (c.cross_heads, c.num_latents, num_tokens, cross_dim),
             "latent self-attend": (c.self_heads, c.num_latents, c.num_latents, c.latent_dim // c.self_heads)}
    checks = (("flash", sdpa.can_use_flash_attention), ("mem-efficient", sdpa.can_use_efficient_attention),
              ("cuDNN", sdpa.can_use_cudnn_attention))
    parts = []
    for name, (heads, queries, keys, width) in kinds.items():
        if torch.device(device).type == "cuda":
            q = torch.empty(1, heads, queries, width, device=device, dtype=dtype)
            kv = torch.empty(1, heads, keys, width, device=device, dtype=dtype)
            params = sdpa.SDPAParams(q, kv, kv, None, 0.0, False, False)
            kernels = ", ".join(kernel for kernel, accepts in checks if accepts(params, False)) or "math only"
        else:
            kernels = f"the {torch.device(device).type} scaled_dot_product_attention"
        parts.append(f"{name} (heads {heads}, head dim {width}): {kernels}")
    return "attention kernels: " + "; ".join(parts)
