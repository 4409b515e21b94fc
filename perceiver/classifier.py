"""The audio-visual classifier: a batch of windows -> one input array -> the Perceiver -> logits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from perceiver.config import Config
from perceiver.inputs import MultimodalInput, patchify_audio, patchify_spectrogram, patchify_video
from perceiver.loader import Batch
from perceiver.model import Perceiver
from perceiver.recipe import modality_specs

# Log-mel values are centred and scaled with AST's AudioSet statistics, so spectrogram tokens
# land on the same scale as the [-1, 1] pixel and waveform tokens beside them.
LOGMEL_MEAN, LOGMEL_STD = -4.27, 4.57


class AVClassifier(nn.Module):
    def __init__(self, cfg: Config, num_classes: int, position_features: Mapping[str, Tensor] | None = None):
        super().__init__()
        self.data = cfg.data
        self.inputs = MultimodalInput(modality_specs(cfg.data, cfg.inputs.modalities),
                                      cfg.inputs.min_modality_channels, cfg.inputs.video_dropout, position_features)
        model_cfg = dataclasses.replace(cfg.model, input_channels=self.inputs.out_channels, num_classes=num_classes)
        for field, derived in (("input_channels", self.inputs.out_channels), ("num_classes", num_classes)):
            given = getattr(cfg.model, field)
            if given is not None and given != derived:
                raise ValueError(f"model.{field}={given} in the config, but the data give {derived}: leave it unset")
        self.config = model_cfg
        self.perceiver = Perceiver(model_cfg)

    def tokens(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality (B, M_m, C_m) float patch tokens of a batch already on the device."""
        video = batch.video.float().div_(127.5).sub_(1.0)
        if self.data.audio.representation == "raw":
            audio = patchify_audio(batch.audio, self.data.audio.patch)
        else:
            audio = patchify_spectrogram((batch.audio - LOGMEL_MEAN) / LOGMEL_STD, self.data.audio.patch)
        content = {"video": patchify_video(video, tuple(self.data.video.patch)), "audio": audio}
        return {s.name: content[s.name] for s in self.inputs.specs}

    def forward(self, batch: Batch, generator: torch.Generator | None = None, return_attention: bool = False,
                present: Mapping[str, Tensor] | None = None):
        """logits (B, num_classes); ``present`` overrides the batch's own has_audio/has_video flags."""
        flags = {"audio": batch.has_audio, "video": batch.has_video}
        flags.update(present or {})
        x, mask = self.inputs(self.tokens(batch), flags, generator)
        return self.perceiver(x, mask, return_attention=return_attention)
