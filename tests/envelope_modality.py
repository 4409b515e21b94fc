"""A modality kind defined outside the package: the audio's loudness envelope (RMS per hop).

Named in a config by import path (``data.custom.<name>.kind: tests.envelope_modality:Envelope``),
it goes through preprocessing, the shards, the loader, the input array and evaluation without a
line of ``pipeline/`` or ``perceiver/`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from pipeline.modality import Content, Modality, ModalitySpec


@dataclass
class EnvelopeRecipe:
    hop_length: int = 160  # samples of the decoded audio (at data.audio.sample_rate) per envelope frame
    window_frames: int = 100  # frames in one model window
    patch: int = 10  # frames per token
    num_bands: int = 4


class Envelope(Modality):
    kind, tag_id, streams, unit, Recipe = "envelope", 100, ("audio",), "samples", EnvelopeRecipe

    @property
    def rate(self) -> int:
        return self.data.audio.sample_rate

    @property
    def step_s(self) -> float:
        return self.recipe.hop_length / self.rate

    @property
    def unit_s(self) -> float:
        return 1.0 / self.rate

    @property
    def window_units(self) -> int:
        return self.recipe.window_frames

    @property
    def window_shape(self) -> tuple[int, ...]:
        return (self.recipe.window_frames,)

    @property
    def spec(self) -> ModalitySpec:
        r = self.recipe
        return ModalitySpec(self.name, r.patch, (r.window_frames // r.patch,), r.num_bands)

    def checks(self) -> list[tuple[bool, str]]:
        return [(self.recipe.window_frames % self.recipe.patch == 0, "envelope window must divide by its patch")]

    def real_units(self, clip) -> tuple[bool, int, int]:
        return clip.has_audio, clip.audio_first, clip.audio_samples

    def encode(self, clip) -> tuple[Content, dict]:
        hop = self.recipe.hop_length
        frames = len(clip.audio) // hop
        rms = np.sqrt(np.mean(clip.audio[:frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
        return rms.astype(np.float32), {"samples": int(len(clip.audio)), "hop_length": hop}

    def window(self, content: Content, meta: dict, start_s: float) -> np.ndarray:
        first = round(start_s * self.rate) // self.recipe.hop_length
        window = np.asarray(content[first:first + self.recipe.window_frames], np.float32)
        window = np.pad(window, (0, self.recipe.window_frames - len(window)))
        if window.shape != self.window_shape:
            raise ValueError(f"envelope window of shape {window.shape}")
        return window

    def tokens(self, windows: Tensor) -> Tensor:
        b, frames = windows.shape
        return windows.reshape(b, frames // self.recipe.patch, self.recipe.patch)
