"""The video modality: fixed-rate square frames, stored as JPEGs (or raw uint8), cut into space-time patches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from pipeline.modality import TRAINING_MAY_DIFFER, Content, Modality, ModalitySpec, register
from pipeline.shards import decode_jpeg_frames, encode_jpeg_frames


@dataclass
class VideoRecipe:
    """How video is decoded, stored and cut into tokens."""

    fps: float = 25.0
    num_frames: int = field(default=32, metadata=TRAINING_MAY_DIFFER)  # frames in one model window (1.28 s)
    size: int = 224  # shorter side resized to this, then centre-cropped to size x size
    patch: list[int] = field(default_factory=lambda: [2, 8, 8])  # (t, h, w) patch
    num_bands: int = 16  # Fourier bands per axis; max resolution is the patch grid
    # "raw" (one uint8 .npy member) or "jpeg" (the frames' JPEGs in one .mjpeg member, shard schema 2)
    encoding: str = field(default="jpeg", metadata=TRAINING_MAY_DIFFER)
    jpeg_quality: int = field(default=75, metadata=TRAINING_MAY_DIFFER)


def patchify_video(video: Tensor, patch: Sequence[int]) -> Tensor:
    """Cut video into space-time patches.

    Args:
        video: (B, T, H, W, C).
        patch: (pt, ph, pw), each dividing the matching video size.

    Returns:
        (B, T/pt * H/ph * W/pw, pt*ph*pw*C): tokens in row-major (t, h, w) patch order, as
        ``fourier_features`` flattens the grid; values within a token in (pt, ph, pw, C) order.
    """
    b, t, h, w, c = video.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"patch {tuple(patch)} does not divide video of size {(t, h, w)}")
    x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T', H', W', pt, ph, pw, C)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


@register
class Video(Modality):
    """Frames at ``fps``, ``size`` x ``size`` RGB; tokens are (pt, ph, pw) patches scaled to [-1, 1]."""

    kind, tag_id, streams, unit, Recipe, dropout = "video", 1, ("video",), "frames", VideoRecipe, True

    @property
    def step_s(self) -> float:
        return 1.0 / self.recipe.fps

    @property
    def window_units(self) -> int:
        return self.recipe.num_frames

    @property
    def spec(self) -> ModalitySpec:
        v = self.recipe
        pt, ph, pw = v.patch
        return ModalitySpec(self.name, pt * ph * pw * 3, (v.num_frames // pt, v.size // ph, v.size // pw), v.num_bands)

    def checks(self) -> list[tuple[bool, str]]:
        v, at = self.recipe, f"data.{self.name}"
        return [(v.encoding in ("raw", "jpeg"), f"{at}.encoding must be 'raw' or 'jpeg'"),
                (len(v.patch) == 3, f"{at}.patch must be [t, h, w]"),
                (len(v.patch) == 3 and v.num_frames % v.patch[0] == 0, f"{at}.num_frames must divide by {at}.patch[0]"),
                (len(v.patch) == 3 and v.size % v.patch[1] == 0 and v.size % v.patch[2] == 0,
                 f"{at}.size must divide by the patch height and width")]

    def real_units(self, clip) -> tuple[bool, int, int]:
        return clip.has_video, clip.video_first, clip.video_frames

    def encode(self, clip) -> tuple[Content, dict]:
        v = self.recipe
        record = {"encoding": v.encoding, "fps": v.fps, "size": v.size, "frames": int(clip.video.shape[0])}
        return (clip.video if v.encoding == "raw" else encode_jpeg_frames(clip.video, v.jpeg_quality)), record

    @property
    def window_shape(self) -> tuple[int, ...]:
        return (self.recipe.num_frames, self.recipe.size, self.recipe.size, 3)

    def blank(self) -> np.ndarray:
        return np.zeros(self.window_shape, np.uint8)

    def window(self, content: Content, meta: dict, start_s: float) -> np.ndarray:
        """uint8 frames (pixels are scaled on the device, in ``tokens``); Pillow's errors on a damaged JPEG."""
        first = round(start_s * self.recipe.fps)
        frames = content[first:first + self.recipe.num_frames]
        video = decode_jpeg_frames(frames) if isinstance(content, list) else np.asarray(frames)
        if video.shape != self.window_shape or video.dtype != np.uint8:
            raise ValueError(f"video window of shape {video.shape} {video.dtype}")
        return video

    def tokens(self, windows: Tensor) -> Tensor:
        return patchify_video(windows.float().div_(127.5).sub_(1.0), self.recipe.patch)
