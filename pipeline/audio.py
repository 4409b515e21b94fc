"""The audio modalities: mono audio stored as an int16 waveform (raw) or a log-mel spectrogram (logmel).

Both store the whole segment; a training window is cut from it. Raw tokens are runs of
``patch`` consecutive samples in [-1, 1]; log-mel tokens are ``patch`` spectrogram frames,
centred and scaled with AST's AudioSet statistics so they land on the scale of the pixel and
waveform tokens beside them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from pipeline.modality import TRAINING_MAY_DIFFER, Content, Modality, ModalitySpec, register

LOGMEL_MEAN, LOGMEL_STD = -4.27, 4.57


@dataclass
class AudioRecipe:
    """How audio is decoded, stored and cut into tokens."""

    sample_rate: int = 48000
    num_samples: int = field(default=61440, metadata=TRAINING_MAY_DIFFER)  # one model window (1.28 s at 48 kHz)
    representation: str = "raw"  # "raw" waveform patches or "logmel" spectrogram patches
    patch: int = 128  # samples per patch (raw) or spectrogram frames per patch (logmel)
    num_bands: int = 16  # Fourier bands on the patch axis
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 480  # 10 ms at 48 kHz

    @property
    def kind(self) -> str:
        return f"{self.representation}_audio"


def patchify_audio(wave: Tensor, patch: int) -> Tensor:
    """(B, S) waveform -> (B, S/patch, patch) runs of consecutive samples."""
    b, s = wave.shape
    if s % patch:
        raise ValueError(f"patch {patch} does not divide {s} samples")
    return wave.reshape(b, s // patch, patch)


def patchify_spectrogram(spec: Tensor, patch: int) -> Tensor:
    """(B, F, n_mels) spectrogram -> (B, F/patch, patch*n_mels): ``patch`` frames per token, frame-major."""
    b, frames, n_mels = spec.shape
    if frames % patch:
        raise ValueError(f"patch {patch} does not divide {frames} frames")
    return spec.reshape(b, frames // patch, patch * n_mels)


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    # Imported here: only preprocessing computes spectrograms, and a training-only machine need not
    # have torchaudio. center=False: frame i covers samples [i*hop, i*hop + n_fft), so a window of
    # num_samples starting at sample s maps to frames starting at s // hop without overlap fuzz.
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=False, power=2.0
    )


def log_mel(wave: np.ndarray, audio: AudioRecipe) -> np.ndarray:
    """float32 (frames, n_mels) natural-log mel power of a mono float waveform.

    The waveform is padded by ``n_fft - hop_length`` so that ``len(wave) // hop`` frames come out.
    """
    pad = audio.n_fft - audio.hop_length
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    x = torch.nn.functional.pad(x, (0, pad))
    mel = _mel_transform(audio.sample_rate, audio.n_fft, audio.hop_length, audio.n_mels)(x)
    return torch.log(mel + 1e-6).T.contiguous().numpy()


class _Audio(Modality):
    """What both representations share: the decoded mono stream, its true length, the checks.

    Each sets ``dtype`` (what a shard stores), ``store`` (a whole segment of mono float audio in [-1, 1] ->
    what a shard stores) and ``values`` (stored audio -> float32 model values, on the device).
    """

    tag_id, streams, unit, Recipe = 0, ("audio",), "samples", AudioRecipe

    @property
    def unit_s(self) -> float:
        return 1.0 / self.recipe.sample_rate

    def checks(self) -> list[tuple[bool, str]]:
        a, at = self.recipe, f"data.{self.name}"
        return [(a.representation in ("raw", "logmel"), f"{at}.representation must be 'raw' or 'logmel'"),
                (self.window_units % a.patch == 0,
                 f"one audio window (samples, or log-mel frames) must divide by {at}.patch")]

    def real_units(self, clip) -> tuple[bool, int, int]:
        return clip.has_audio, clip.audio_first, clip.audio_samples

    def encode(self, clip) -> tuple[Content, dict]:
        stored = self.store(clip.audio)
        return stored, {"representation": self.recipe.representation, "sample_rate": self.recipe.sample_rate,
                        "samples": int(clip.audio.shape[0]), "shape": list(stored.shape), "dtype": str(stored.dtype)}

    def window(self, content: Content, meta: dict, start_s: float) -> np.ndarray:
        """The window as stored (int16 samples, float16 log-mel frames), copied out of the clip: a shuffle
        buffer holds half the bytes of model values, and not the clip; ``prepare`` converts a batch."""
        first = round(start_s * self.recipe.sample_rate) // round(self.step_s * self.recipe.sample_rate)
        audio = np.array(content[first:first + self.window_units], self.dtype)
        if audio.shape[0] < self.window_units:  # a window at the very end of a padded clip
            pad = np.zeros((self.window_units - audio.shape[0], *audio.shape[1:]), audio.dtype)
            audio = np.concatenate([audio, pad])
        if audio.shape != self.window_shape:
            raise ValueError(f"audio window of shape {audio.shape}")
        return audio

    def prepare(self, windows: Tensor, *, generator: torch.Generator | None = None, augment=None) -> Tensor:
        return self.values(windows)


@register
class RawAudio(_Audio):
    """The waveform: int16 stored, float in [-1, 1] in the model, ``patch`` samples per token."""

    kind, dtype = "raw_audio", np.int16

    @property
    def step_s(self) -> float:
        return 1.0 / self.recipe.sample_rate

    @property
    def window_units(self) -> int:
        return self.recipe.num_samples

    @property
    def window_shape(self) -> tuple[int, ...]:
        return (self.recipe.num_samples,)

    @property
    def spec(self) -> ModalitySpec:
        a = self.recipe
        return ModalitySpec(self.name, a.patch, (a.num_samples // a.patch,), a.num_bands)

    def store(self, wave: np.ndarray) -> np.ndarray:
        return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(self.dtype)

    def values(self, stored: Tensor) -> Tensor:
        return stored.float() / 32767.0

    def tokens(self, windows: Tensor) -> Tensor:
        return patchify_audio(windows, self.recipe.patch)


@register
class LogMelAudio(_Audio):
    """The log-mel spectrogram: float16 (frames, n_mels) stored, ``patch`` frames per token."""

    kind, dtype = "logmel_audio", np.float16

    @property
    def step_s(self) -> float:
        return self.recipe.hop_length / self.recipe.sample_rate

    @property
    def window_units(self) -> int:
        return self.recipe.num_samples // self.recipe.hop_length

    @property
    def window_shape(self) -> tuple[int, ...]:
        return (self.window_units, self.recipe.n_mels)

    @property
    def spec(self) -> ModalitySpec:
        a = self.recipe
        if self.window_units % a.patch:
            raise ValueError(f"audio window of {self.window_units} does not divide into patches of {a.patch}")
        return ModalitySpec(self.name, a.patch * a.n_mels, (self.window_units // a.patch,), a.num_bands)

    def store(self, wave: np.ndarray) -> np.ndarray:
        return log_mel(wave, self.recipe).astype(self.dtype)

    def values(self, stored: Tensor) -> Tensor:
        return stored.float()

    def prepare(self, windows: Tensor, *, generator: torch.Generator | None = None, augment=None) -> Tensor:
        """SpecAugment in training: ``spec_time_masks`` masks of up to ``spec_time_width`` frames and
        ``spec_freq_masks`` of up to ``spec_freq_width`` mel bins per example, set to the mean level (0 once
        normalised in ``tokens``)."""
        x = self.values(windows)
        if augment is None or not (augment.spec_time_masks or augment.spec_freq_masks):
            return x
        b, frames, mels = x.shape
        for dim, count, width, size in ((1, augment.spec_time_masks, augment.spec_time_width, frames),
                                        (2, augment.spec_freq_masks, augment.spec_freq_width, mels)):
            for _ in range(count):
                span = (torch.rand(b, generator=generator, device=x.device) * (width + 1)).long().clamp(max=size)
                first = (torch.rand(b, generator=generator, device=x.device) * (size - span + 1)).long()
                at = torch.arange(size, device=x.device)[None]
                hit = (at >= first[:, None]) & (at < (first + span)[:, None])  # (B, size)
                x = x.masked_fill(hit[:, :, None] if dim == 1 else hit[:, None, :], LOGMEL_MEAN)
        return x

    def tokens(self, windows: Tensor) -> Tensor:
        return patchify_spectrogram((windows - LOGMEL_MEAN) / LOGMEL_STD, self.recipe.patch)
