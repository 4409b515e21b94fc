"""The video modality: fixed-rate square frames, stored as JPEGs (or raw uint8), cut into space-time patches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline import batch_memory
from pipeline.modality import TRAINING_MAY_DIFFER, Content, Modality, ModalitySpec, register
from pipeline.shards import EncodedFrames, encode_jpeg_frames


@dataclass
class VideoRecipe:
    """How video is decoded, stored and cut into tokens."""

    fps: float = 25.0
    num_frames: int = field(default=32, metadata=TRAINING_MAY_DIFFER)  # frames in one model window (1.28 s)
    size: int = 224  # the model's frame: size x size
    # Stored frames: the shorter side resized to this, centre-cropped square; 0 = size. Larger than size,
    # so training can take a random resized crop (the paper's Inception-style augmentation).
    stored_size: int = 0
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
    dtype = np.uint8

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

    @property
    def stored(self) -> int:
        """The stored frames' side."""
        return self.recipe.stored_size or self.recipe.size

    def checks(self) -> list[tuple[bool, str]]:
        v, at = self.recipe, f"data.{self.name}"
        return [(v.encoding in ("raw", "jpeg"), f"{at}.encoding must be 'raw' or 'jpeg'"),
                (self.stored >= v.size, f"{at}.stored_size must be 0 or at least {at}.size"),
                (len(v.patch) == 3, f"{at}.patch must be [t, h, w]"),
                (len(v.patch) == 3 and v.num_frames % v.patch[0] == 0, f"{at}.num_frames must divide by {at}.patch[0]"),
                (len(v.patch) == 3 and v.size % v.patch[1] == 0 and v.size % v.patch[2] == 0,
                 f"{at}.size must divide by the patch height and width")]

    def real_units(self, clip) -> tuple[bool, int, int]:
        return clip.has_video, clip.video_first, clip.video_frames

    def encode(self, clip) -> tuple[Content, dict]:
        v = self.recipe
        record = {"encoding": v.encoding, "fps": v.fps, "size": self.stored, "frames": int(clip.video.shape[0])}
        return (clip.video if v.encoding == "raw" else encode_jpeg_frames(clip.video, v.jpeg_quality)), record

    @property
    def window_shape(self) -> tuple[int, ...]:
        return (self.recipe.num_frames, self.stored, self.stored, 3)

    def window(self, content: Content, meta: dict, start_s: float) -> np.ndarray | list[bytes]:
        """The window's stored frames: uint8 (raw), or still JPEG (copied out of the clip's member, so a
        buffer that holds the window does not hold the clip); decoded on the device (``collate``)."""
        first = round(start_s * self.recipe.fps)
        frames = content[first:first + self.recipe.num_frames]
        if isinstance(content, list):
            if len(frames) != self.recipe.num_frames:
                raise ValueError(f"video window of {len(frames)} frames")
            return [bytes(f) for f in frames]
        video = np.asarray(frames)
        if video.shape != self.window_shape or video.dtype != self.dtype:
            raise ValueError(f"video window of shape {video.shape} {video.dtype}")
        return video

    def collate(self, windows: list) -> Tensor | EncodedFrames:
        if not any(isinstance(w, list) for w in windows):
            return batch_memory.stack(windows)
        # An absent window (an array of zeros) travels as frames that do not decode: absent on the device too.
        return EncodedFrames.join([w if isinstance(w, list) else [b""] * len(w) for w in windows], self.window_shape)

    def prepare(self, windows: Tensor, *, generator: torch.Generator | None = None, augment=None) -> Tensor:
        """uint8 (B, F, stored, stored, 3) -> float (B, F, size, size, 3) in [-1, 1].

        Training with ``augment`` (``crop_min_scale``, ``flip``, ``colour``) takes the paper's augmentation,
        the same for every frame of a clip: an Inception-style random resized crop (area scale in
        [crop_min_scale, 1], aspect ratio in [3/4, 4/3]; 0 = no crop), a horizontal flip with probability
        1/2, and brightness, contrast and saturation scaled by factors in [1 - colour, 1 + colour].
        Otherwise the centre crop.
        """
        size, x = self.recipe.size, windows.float().div_(255.0)
        if augment is not None and (augment.crop_min_scale or augment.flip or augment.colour):
            x = _augment(x, size, augment, generator)
        else:
            top = (x.shape[2] - size) // 2
            x = x[:, :, top:top + size, top:top + size]
        return x.mul_(2.0).sub_(1.0)

    def tokens(self, windows: Tensor) -> Tensor:
        return patchify_video(windows, self.recipe.patch)


def _augment(x: Tensor, size: int, aug, generator: torch.Generator | None) -> Tensor:
    """One random resized crop, flip and colour change per clip of (B, F, H, W, 3) floats in [0, 1]."""
    b, f, h, w, _ = x.shape

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, generator=generator, device=x.device)

    if aug.crop_min_scale:  # a random area and aspect ratio anywhere in the frame
        area, ratio = uniform(aug.crop_min_scale, 1.0), torch.exp(uniform(-math.log(4 / 3), math.log(4 / 3)))
        cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        dx, dy = uniform(-1, 1) * (1 - cw), uniform(-1, 1) * (1 - ch)
    else:  # the centre crop evaluation takes (exactly: the samples fall on pixel centres)
        cw = ch = torch.full((b,), size / w, device=x.device)
        dx = dy = torch.zeros(b, device=x.device)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(b, device=x.device)
    theta = torch.zeros(b, 2, 3, device=x.device)  # the crop in affine_grid's [-1, 1] coordinates
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, dx, ch, dy
    frames = x.reshape(b * f, h, w, 3).permute(0, 3, 1, 2)
    grid = F.affine_grid(theta.repeat_interleave(f, dim=0), [b * f, 3, size, size], align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(b, f, size, size, 3)
    if aug.colour:
        shape = (b, 1, 1, 1, 1)
        out = out * uniform(1 - aug.colour, 1 + aug.colour).view(shape)  # brightness
        mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
        out = mean + (out - mean) * uniform(1 - aug.colour, 1 + aug.colour).view(shape)  # contrast
        grey = out.mean(dim=-1, keepdim=True)
        out = grey + (out - grey) * uniform(1 - aug.colour, 1 + aug.colour).view(shape)  # saturation
    return out.clamp_(0.0, 1.0)
