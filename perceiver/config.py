"""The one typed configuration schema: data recipe, model, inputs and training.

YAML files in ``configs/`` are merged onto these dataclasses with OmegaConf's
structured configs, so an unknown key or a value of the wrong type fails with a
message naming the key. Every other module receives these plain dataclass objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class VideoRecipe:
    """How video is decoded, stored and cut into tokens."""

    fps: float = 25.0
    num_frames: int = 32  # frames in one model window (32 at 25 fps = 1.28 s in the paper)
    size: int = 224  # shorter side resized to this, then centre-cropped to size x size
    patch: list[int] = field(default_factory=lambda: [2, 8, 8])  # (t, h, w) patch
    num_bands: int = 16  # Fourier bands per axis; max resolution is the patch grid
    encoding: str = "jpeg"  # "raw" (uint8 .npy) or "jpeg" (one JPEG member per frame)
    jpeg_quality: int = 75


@dataclass
class AudioRecipe:
    """How audio is decoded, stored and cut into tokens."""

    sample_rate: int = 48000
    num_samples: int = 61440  # samples in one model window (1.28 s at 48 kHz)
    representation: str = "raw"  # "raw" waveform patches or "logmel" spectrogram patches
    patch: int = 128  # samples per patch (raw) or spectrogram frames per patch (logmel)
    num_bands: int = 16  # Fourier bands on the patch axis
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 480  # 10 ms at 48 kHz


@dataclass
class DataConfig:
    """The preprocessing recipe; dataset.json records it and training checks against it."""

    segment_seconds: float = 10.0  # stored length of every sample (AudioSet segments are 10 s)
    video: VideoRecipe = field(default_factory=VideoRecipe)
    audio: AudioRecipe = field(default_factory=AudioRecipe)
    shard_size: int = 64  # clips per shard
    # "shard": the trainer reads the features the shards carry, checks them against the model's own
    # fourier_features and feeds them to the model; "device": the model computes them (identical values).
    fourier_source: str = "shard"
    decode_timeout_s: float = 120.0  # a clip whose decode takes longer is recorded as a failure
    max_in_flight: int = 0  # clip tasks in flight; 0 = the cluster's CPUs (the decode timeout runs from submission)


@dataclass
class PerceiverConfig:
    """The Perceiver's hyper-parameters (paper Sec. 2, App. C).

    ``input_channels`` and ``num_classes`` follow from the data (input module width,
    class list); the trainer fills them in when they are left as None.
    """

    num_latents: int = 512
    latent_dim: int = 512
    num_blocks: int = 2
    self_attends_per_block: int = 8
    cross_heads: int = 1
    self_heads: int = 8
    cross_widening: int = 1
    self_widening: int = 1
    share_weights: bool = False
    qk_channels: int | None = None  # None: min(input_channels, latent_dim) (paper App. C)
    input_channels: int | None = None
    num_classes: int | None = None


@dataclass
class InputsConfig:
    """How modalities become one input array (paper Sec. 4.2)."""

    modalities: list[str] = field(default_factory=lambda: ["audio", "video"])  # concatenation order
    min_modality_channels: int = 4  # the widest modality still gets this many learned channels
    video_dropout: float = 0.3


@dataclass
class TrainConfig:
    batch_size: int = 8  # per worker
    steps: int = 1000  # total optimizer steps
    steps_per_epoch: int = 0  # 0: samples in the training set // (batch_size x workers)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    checkpoint_every: int = 100  # steps
    keep_checkpoints: int = 2
    eval_every: int = 0  # steps; 0 = only at the end
    eval_crops: int = 1  # windows averaged per evaluation clip (the paper uses 16)
    log_every_s: float = 10.0
    loader_workers: int = 0  # DataLoader processes per Ray Train worker
    shuffle_buffer: int = 64
    max_failures: int = 2  # Ray Train FailureConfig
    num_workers: int = 2
    use_gpu: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: PerceiverConfig = field(default_factory=PerceiverConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _one_line(err: OmegaConfBaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    key = getattr(err, "full_key", None)
    head = lines[0] if lines else type(err).__name__
    return f"{head} (key: {key})" if key and key not in head else head


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (YAML) onto the schema, then apply ``key.sub=value`` overrides.

    Raises ConfigError with one line naming the file or key on any mismatch.
    """
    merged = OmegaConf.structured(Config)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} not found")
            # OmegaConf.load parses with a yaml SafeLoader subclass: no object construction.
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} must look like key.sub=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{_one_line(err)}") from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks the schema's types cannot express."""
    d = cfg.data
    checks = [
        (d.video.encoding in ("raw", "jpeg"), "data.video.encoding must be 'raw' or 'jpeg'"),
        (d.audio.representation in ("raw", "logmel"), "data.audio.representation must be 'raw' or 'logmel'"),
        (len(d.video.patch) == 3, "data.video.patch must be [t, h, w]"),
        (d.video.num_frames % d.video.patch[0] == 0, "data.video.num_frames must divide by data.video.patch[0]"),
        (d.video.size % d.video.patch[1] == 0 and d.video.size % d.video.patch[2] == 0,
         "data.video.size must divide by the patch height and width"),
        (d.fourier_source in ("shard", "device"), "data.fourier_source must be 'shard' or 'device'"),
        (0.0 <= cfg.inputs.video_dropout <= 1.0, "inputs.video_dropout must lie in [0, 1]"),
        (set(cfg.inputs.modalities) <= {"audio", "video"} and cfg.inputs.modalities,
         "inputs.modalities must be a non-empty subset of [audio, video]"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (0 <= cfg.train.warmup_steps < cfg.train.steps, "train.warmup_steps must lie in [0, train.steps)"),
        (cfg.model.latent_dim % cfg.model.self_heads == 0, "model.latent_dim must divide by model.self_heads"),
        ((d.audio.num_samples if d.audio.representation == "raw" else d.audio.num_samples // d.audio.hop_length)
         % d.audio.patch == 0, "one audio window (samples, or log-mel frames) must divide by data.audio.patch"),
        (abs(d.video.num_frames / d.video.fps - d.audio.num_samples / d.audio.sample_rate) < 1e-6,
         "one window must last as long in both modalities: data.video.num_frames / data.video.fps "
         "must equal data.audio.num_samples / data.audio.sample_rate"),
        (d.segment_seconds * d.video.fps >= d.video.num_frames,
         "data.segment_seconds is shorter than one video window"),
        (d.segment_seconds * d.audio.sample_rate >= d.audio.num_samples,
         "data.segment_seconds is shorter than one audio window"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def config_from_dict(d: dict) -> Config:
    """A Config from a plain dict (as ``to_dict`` wrote it), checked against the schema."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))


def to_dict(cfg) -> dict:
    """A plain, JSON-able dict of any config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
