"""Audio-visual Perceiver: the model core and the multimodal input array, on top of ``pipeline``'s modalities."""

from perceiver.config import PerceiverConfig
from perceiver.inputs import MultimodalInput
from perceiver.model import Perceiver

__all__ = ["MultimodalInput", "Perceiver", "PerceiverConfig"]
