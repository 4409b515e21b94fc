"""Feature stage: what each modality becomes in a shard, and the modality tags and grids.

A decoded clip (``pipeline.decode.DecodedClip``) becomes stored arrays:

- audio ``raw``: int16 waveform of the whole segment (the window is cropped at training time);
- audio ``logmel``: float16 log-mel spectrogram of the whole segment, frames x mels (torchaudio);
- video: uint8 frames, stored raw (``.npy``) or as one JPEG per frame (``pipeline.shards``).

Every modality carries a tag: its name, a fixed integer id, the index grid of its patches for
one model window and its Fourier spec. The Fourier features themselves come from the model's
``perceiver.fourier.fourier_features`` on that grid, so the pipeline never defines them twice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
import torchaudio

from perceiver.config import AudioRecipe, DataConfig
from perceiver.fourier import fourier_features
from perceiver.inputs import ModalitySpec
from perceiver.recipe import modality_specs

# Stable ids: a shard written today must mean the same thing to a model trained next year.
MODALITY_IDS = {"audio": 0, "video": 1}


def modality_tag(spec: ModalitySpec) -> dict:
    """The JSON tag that names a modality's tokens in shards and dataset.json."""
    return {
        "name": spec.name,
        "id": MODALITY_IDS[spec.name],
        "grid": list(spec.grid),
        "content_channels": spec.content_channels,
        "fourier": {
            "num_bands": spec.num_bands,
            "max_resolution": list(spec.max_resolution or spec.grid),
            "concat_pos": True,
            "sine_only": False,
            "channels": spec.fourier_channels,
        },
    }


def position_features(spec: ModalitySpec) -> np.ndarray:
    """float32 (num_tokens, fourier_channels): the model's own Fourier features of the grid."""
    return fourier_features(spec.grid, spec.num_bands, spec.max_resolution).numpy()


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> torchaudio.transforms.MelSpectrogram:
    # center=False: frame i covers samples [i*hop, i*hop + n_fft), so a window of
    # num_samples starting at sample s maps to frames starting at s // hop without overlap fuzz.
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


def audio_array(wave: np.ndarray, audio: AudioRecipe) -> np.ndarray:
    """What a shard stores for a whole segment of mono float audio in [-1, 1]."""
    if audio.representation == "raw":
        return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
    return log_mel(wave, audio).astype(np.float16)


def audio_values(stored: np.ndarray) -> np.ndarray:
    """float32 model values from a stored audio array: waveform in [-1, 1] or log-mel."""
    if stored.dtype == np.int16:
        return stored.astype(np.float32) / 32767.0
    return stored.astype(np.float32)


def recipe_record(data: DataConfig, modalities: Sequence[str]) -> dict:
    """The recipe as dataset.json records it and training compares it."""
    return {
        "segment_seconds": data.segment_seconds,
        "video": asdict(data.video),
        "audio": asdict(data.audio),
        "fourier_source": data.fourier_source,
        "modalities": {s.name: modality_tag(s) for s in modality_specs(data, modalities)},
    }
