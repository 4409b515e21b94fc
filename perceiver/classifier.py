"""The classifier: a batch of windows -> each modality's tokens -> one input array -> the Perceiver -> logits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from perceiver.config import Config
from perceiver.inputs import Mix, MultimodalInput
from perceiver.loader import Batch
from perceiver.model import Perceiver
from pipeline.recipe import modalities_of


class AVClassifier(nn.Module):
    def __init__(self, cfg: Config, num_classes: int, position_features: Mapping[str, Tensor] | None = None):
        """``position_features``: the shards' Fourier features by modality (others are ignored)."""
        super().__init__()
        self.modalities = modalities_of(cfg.data, cfg.inputs.modalities)
        names = [m.name for m in self.modalities]
        given = {k: torch.tensor(v) for k, v in (position_features or {}).items() if k in names}
        self.inputs = MultimodalInput([m.spec for m in self.modalities], cfg.inputs.min_modality_channels,
                                      dropout={m.name: cfg.inputs.video_dropout for m in self.modalities if m.dropout},
                                      position_features=given)
        model_cfg = dataclasses.replace(cfg.model, input_channels=self.inputs.out_channels, num_classes=num_classes)
        for field, derived in (("input_channels", self.inputs.out_channels), ("num_classes", num_classes)):
            held = getattr(cfg.model, field)
            if held is not None and held != derived:
                raise ValueError(f"model.{field}={held} in the config, but the data give {derived}: leave it unset")
        self.config = model_cfg
        self.perceiver = Perceiver(model_cfg)

    def tokens(self, batch: Batch, generator: torch.Generator | None = None, augment=None) -> dict[str, Tensor]:
        """Per modality (B, M_m, C_m) float patch tokens of a batch already on the device; with ``augment``
        (``TrainConfig.augment``) each kind's training augmentation, drawn from ``generator``."""
        return {m.name: m.tokens(m.prepare(batch.content[m.name], generator=generator, augment=augment))
                for m in self.modalities}

    def forward(self, batch: Batch, generator: torch.Generator | None = None, return_attention: bool = False,
                present: Mapping[str, Tensor] | None = None, augment=None, mix: Mix | None = None):
        """logits (B, num_classes); ``present`` overrides the batch's own presence flags; ``mix``: mixup (training)."""
        tokens = self.tokens(batch, generator, augment if self.training else None)
        x, mask = self.inputs(tokens, {**batch.present, **(present or {})}, generator, batch.masks, mix)
        return self.perceiver(x, mask if batch.masks else None, return_attention=return_attention)
