"""One input array from several modalities (Perceiver paper Sec. 4.2).

Each modality is cut into patches (tokens) on an index grid. Every token becomes
``[content | Fourier features of its grid position | learned modality vector]``: the
modality vector is one learned vector per modality, broadcast to all of its tokens, whose
length pads that modality to the common width ``max_m(C_m + F_m) + min_modality_channels``.
The modalities are then concatenated along the token axis in the order of ``specs``.
With the paper's audio + video sizes that is 480 + 12,544 = 13,024 tokens of
384 + 3 x 33 + 4 = 487 channels.

In training, after video dropout, ``Mix`` (mixup, ``train.mixup``) may blend examples of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.modality import ModalitySpec


@dataclass(frozen=True)
class Mix:
    """Mixup of one batch: example ``i`` becomes ``lam[i] * own + (1 - lam[i]) * partner[i]'s``, its content
    (each modality, after video dropout) and its multi-hot targets with the same coefficient.

    An example left unmixed is its own partner with ``lam`` 1, so it stays exactly as it was.
    """

    partner: Tensor  # long (B,)
    lam: Tensor  # float32 (B,)

    @classmethod
    def draw(cls, generator: torch.Generator, batch: int, *, prob: float, alpha: float) -> Mix:
        """Each example mixed with probability ``prob``, with a partner from a random permutation of the batch
        and ``lam ~ Beta(alpha, alpha)``; every draw comes from ``generator`` (torch samples Beta without one)."""
        seed = int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device).item())
        rng = np.random.default_rng(seed)
        mixed = rng.random(batch) < prob
        partner = np.where(mixed, rng.permutation(batch), np.arange(batch))
        lam = np.where(mixed, rng.beta(alpha, alpha, batch), 1.0)
        return cls(torch.as_tensor(partner, device=generator.device),
                   torch.as_tensor(lam, dtype=torch.float32, device=generator.device))

    def targets(self, labels: Tensor) -> Tensor:
        """(B, classes) mixed targets of (B, classes) multi-hot ``labels``."""
        lam = self.lam.to(labels.dtype)[:, None]
        return lam * labels + (1 - lam) * labels[self.partner]

    def modality(self, content: Tensor, present: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """One modality mixed: (B, M, C) content (zero where absent or dropped), given (B,) ``present`` and
        (B, M) ``mask`` -> (content, mask).

        The mixed modality is present where either source's is (its content is then that source's,
        scaled); its mask is the union of the present sources' real tokens. Where neither source has
        the modality, the example keeps its own mask, as without mixup.
        """
        lam = self.lam.to(content.dtype)[:, None, None]
        mixed = lam * content + (1 - lam) * content[self.partner]
        real = mask & present[:, None]
        either = present | present[self.partner]
        return mixed, torch.where(either[:, None], real | real[self.partner], mask)


class MultimodalInput(nn.Module):
    """Builds the single (B, M, out_channels) input array from per-modality patch tokens."""

    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        min_modality_channels: int = 4,
        dropout: Mapping[str, float] | None = None,
        position_features: Mapping[str, Tensor] | None = None,
    ):
        """Set up one learned vector and one position-feature buffer per modality.

        Args:
            specs: the modalities, in the order their tokens are concatenated.
            min_modality_channels: learned channels of the widest modality.
            dropout: per modality name, the training-time probability of zeroing one example's
                whole content of that modality (the paper's video dropout).
            position_features: optional precomputed (M_m, F_m) features per modality name
                (e.g. read from a shard); each must equal the spec's Fourier features.
        """
        super().__init__()
        names = [s.name for s in specs]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one modality and unique names, got {names}")
        self.dropout = {name: p for name, p in (dropout or {}).items() if p > 0}
        if not all(0.0 <= p <= 1.0 for p in self.dropout.values()):
            raise ValueError(f"dropout probabilities must lie in [0, 1], got {self.dropout}")
        given = dict(position_features or {})
        if unknown := set(given) - set(names):
            raise ValueError(f"position_features for unknown modalities {sorted(unknown)}")
        self.specs = tuple(specs)
        self.out_channels = (
            max(s.content_channels + s.fourier_channels for s in specs) + min_modality_channels
        )
        self.num_tokens = sum(s.num_tokens for s in specs)
        self.modality_vectors = nn.ParameterDict()
        for spec in specs:
            features = spec.position_features()
            if spec.name in given and not _matches(given[spec.name], features):
                raise ValueError(
                    f"position_features[{spec.name!r}] do not match fourier_features of its spec "
                    f"(grid {spec.grid}, {spec.num_bands} bands, max_resolution {spec.max_resolution}): "
                    "the data were prepared with another recipe"
                )
            if spec.name in given:  # the data's own copy (e.g. a shard's), proven equal above
                features = torch.as_tensor(given[spec.name], dtype=torch.float32).clone()
            # Non-persistent: recomputable from the spec, so kept out of checkpoints but moved by .to().
            self.register_buffer(f"position_{spec.name}", features, persistent=False)
            vector = torch.empty(self.out_channels - spec.content_channels - spec.fourier_channels)
            self.modality_vectors[spec.name] = nn.Parameter(
                nn.init.trunc_normal_(vector, std=0.02, a=-0.04, b=0.04)
            )

    def forward(
        self,
        content: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        masks: Mapping[str, Tensor] | None = None,
        mix: Mix | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Assemble the input array.

        Args:
            content: per modality name, (B, M_m, C_m) float patch tokens.
            present: per modality name, (B,) bool, False where a clip lacks that modality; its
                content is zeroed in training and evaluation alike. Missing = all present.
            generator: random source for modality dropout, on the content's device.
            masks: per modality name, (B, M_m) bool, False for padding tokens (past a stream's real
                content). Missing = all real.
            mix: mixup of the batch (training only, like dropout), applied after dropout.

        Returns:
            inputs (B, M, out_channels) and mask (B, M) bool, the modalities' masks concatenated.
        """
        present = present or {}
        parts, real = [], []
        for spec in self.specs:
            x = content[spec.name]
            b = x.shape[0]
            if x.shape[1:] != (spec.num_tokens, spec.content_channels):
                raise ValueError(
                    f"{spec.name} content has shape {tuple(x.shape)}, expected (B, {spec.num_tokens}, {spec.content_channels})"
                )
            vector = self.modality_vectors[spec.name]
            keep = torch.ones(b, dtype=torch.bool, device=x.device)
            if spec.name in present:
                keep = keep & present[spec.name].to(device=x.device, dtype=torch.bool)
            if spec.name in self.dropout and self.training:
                keep = keep & (torch.rand(b, generator=generator, device=x.device) >= self.dropout[spec.name])
            # where, not multiply: content of a missing modality may be garbage, even NaN.
            x = torch.where(keep[:, None, None], x.to(vector.dtype), 0.0)
            mask = (masks[spec.name].to(x.device, torch.bool) if spec.name in (masks or {})
                    else torch.ones(b, spec.num_tokens, dtype=torch.bool, device=x.device))
            if mix is not None and self.training:
                x, mask = mix.modality(x, keep, mask)
            position = getattr(self, f"position_{spec.name}").to(vector.dtype)
            parts.append(
                torch.cat(
                    [x, position.expand(b, -1, -1), vector.expand(b, spec.num_tokens, -1)],
                    dim=-1,
                )
            )
            real.append(mask)
        return torch.cat(parts, dim=1), torch.cat(real, dim=1)


def _matches(given: Tensor, expected: Tensor) -> bool:
    given = torch.as_tensor(given, dtype=torch.float32).cpu()
    return given.shape == expected.shape and torch.allclose(given, expected, rtol=0.0, atol=1e-5)
