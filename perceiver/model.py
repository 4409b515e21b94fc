"""The Perceiver classifier (Jaegle et al. 2021, Sec. 2, App. C).

A learned latent array (N x D) cross-attends to the input array (M x C), then a stack of
latent self-attention layers refines it; this block repeats ``num_blocks`` times. The
classifier averages the latents and applies one linear layer. No dropout (App. C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.attention import CrossAttention, SelfAttention
from perceiver.config import PerceiverConfig


class Perceiver(nn.Module):
    """Perceiver classifier: inputs (B, M, C) -> logits (B, num_classes)."""

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        if config.input_channels is None or config.num_classes is None:
            raise ValueError(
                "PerceiverConfig.input_channels and num_classes must be set "
                f"(got {config.input_channels} and {config.num_classes}); they follow from the data"
            )
        self.config = config
        c, d = config.input_channels, config.latent_dim
        qk_channels = config.qk_channels if config.qk_channels is not None else min(c, d)

        def cross_attend() -> CrossAttention:
            return CrossAttention(d, c, qk_channels, config.cross_heads, config.cross_widening)

        def latent_transformer() -> nn.Sequential:
            return nn.Sequential(*(SelfAttention(d, config.self_heads, config.self_widening)
                                   for _ in range(config.self_attends_per_block)))

        # Block i uses cross_attends[i] then latent_transformers[i]. With share_weights (the
        # paper's ImageNet scheme) an entry repeated below is the same module object, so its
        # parameters are counted, trained and saved once: the first cross-attend has its own
        # weights (sharing it was unstable), cross-attends 2..n share one set, and all blocks
        # share one latent transformer.
        n = config.num_blocks
        if config.share_weights:
            first_cross, shared_cross, shared_latent = cross_attend(), cross_attend(), latent_transformer()
            crosses = [first_cross] + [shared_cross] * (n - 1)
            latents = [shared_latent] * n
        else:
            crosses = [cross_attend() for _ in range(n)]
            latents = [latent_transformer() for _ in range(n)]
        self.cross_attends = nn.ModuleList(crosses)
        self.latent_transformers = nn.ModuleList(latents)

        # Truncated normal, std 0.02, cut at 2 std; trunc_normal_'s bounds are absolute values.
        self.latents = nn.Parameter(torch.empty(config.num_latents, d))
        nn.init.trunc_normal_(self.latents, mean=0.0, std=0.02, a=-0.04, b=0.04)
        self.head = nn.Linear(d, config.num_classes)

    def forward(
        self, inputs: Tensor, mask: Tensor | None = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Classify an input array.

        Args:
            inputs: (B, M, C) float.
            mask: (B, M) bool, True = a real token, False = padding that gets no attention
                (its values are ignored but must be finite: they meet zero weights, and 0 x inf
                is NaN); None = every token is real. A sample with no real token attends to
                nothing: its cross-attention adds only the output projection's bias.
            return_attention: also return each cross-attend's weights, computed explicitly.

        Returns:
            logits (B, num_classes); with ``return_attention`` also a list of ``num_blocks``
            cross-attention maps, each (B, cross_heads, N, M).
        """
        x = self.latents.expand(inputs.shape[0], -1, -1)  # (B, N, D)
        maps = []
        for cross_attend, latent_transformer in zip(
            self.cross_attends, self.latent_transformers, strict=True
        ):
            x, weights = cross_attend(x, inputs, mask, return_attention)
            x = latent_transformer(x)
            maps.append(weights)
        logits = self.head(x.mean(dim=1))
        return (logits, maps) if return_attention else logits
