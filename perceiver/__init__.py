"""Audio-visual Perceiver: model core, Fourier position features and the multimodal input array."""

from perceiver.config import PerceiverConfig
from perceiver.fourier import fourier_features
from perceiver.inputs import (
    ModalitySpec,
    MultimodalInput,
    patchify_audio,
    patchify_spectrogram,
    patchify_video,
)
from perceiver.model import Perceiver

__all__ = [
    "ModalitySpec",
    "MultimodalInput",
    "Perceiver",
    "PerceiverConfig",
    "fourier_features",
    "patchify_audio",
    "patchify_spectrogram",
    "patchify_video",
]
