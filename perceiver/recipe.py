"""From a data recipe to the token layout of one model window per modality.

Shared by the pipeline (which tags shards with it) and the trainer (which builds its input
module from it), so the two cannot disagree about grids or widths.
"""

from __future__ import annotations

from collections.abc import Sequence

from perceiver.config import AudioRecipe, DataConfig
from perceiver.inputs import ModalitySpec


def audio_window_length(audio: AudioRecipe) -> int:
    """Length of one audio window in stored units: samples (raw) or spectrogram frames (logmel)."""
    if audio.representation == "raw":
        return audio.num_samples
    return audio.num_samples // audio.hop_length


def modality_specs(data: DataConfig, modalities: Sequence[str]) -> list[ModalitySpec]:
    """The token layout of one model window per modality, in the order given."""
    specs = []
    for name in modalities:
        if name == "video":
            v = data.video
            pt, ph, pw = v.patch
            grid = (v.num_frames // pt, v.size // ph, v.size // pw)
            specs.append(ModalitySpec("video", pt * ph * pw * 3, grid, v.num_bands))
        elif name == "audio":
            a = data.audio
            length = audio_window_length(a)
            if length % a.patch:
                raise ValueError(f"audio window of {length} does not divide into patches of {a.patch}")
            width = a.patch if a.representation == "raw" else a.patch * a.n_mels
            specs.append(ModalitySpec("audio", width, (length // a.patch,), a.num_bands))
        else:
            raise ValueError(f"unknown modality {name!r}: expected 'audio' or 'video'")
    return specs
