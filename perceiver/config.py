"""The one typed configuration schema: data recipe (``pipeline.recipe``), model, inputs and training.

YAML files in ``configs/`` are merged onto these dataclasses with OmegaConf's
structured configs, so an unknown key or a value of the wrong type fails with a
message naming the key. Every other module receives these plain dataclass objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.modality import PAPER_MODALITIES
from pipeline.recipe import ConfigError, DataConfig, check_recipe, modalities_of

__all__ = ["Config", "ConfigError", "DataConfig", "PerceiverConfig", "InputsConfig", "TrainConfig", "load_config"]


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

    modalities: list[str] = field(default_factory=lambda: list(PAPER_MODALITIES))  # concatenation order
    min_modality_channels: int = 4  # the widest modality still gets this many learned channels
    video_dropout: float = 0.3  # applies to the modalities whose kind takes whole-modality dropout


@dataclass
class AugmentConfig:
    """Training-time augmentation, on the device (off by default: the paper's is in configs/audioset.yaml).

    Video (per clip, the same for every frame): an Inception-style random resized crop from the stored
    frames (``data.video.stored_size``) to the model's size, area scale in [crop_min_scale, 1] (0 = no
    crop); a horizontal flip; brightness, contrast and saturation factors in [1 - colour, 1 + colour].
    Log-mel audio: SpecAugment time and frequency masks. Raw audio keeps only the random time window.
    """

    crop_min_scale: float = 0.0
    flip: bool = False
    colour: float = 0.0
    spec_time_masks: int = 0
    spec_time_width: int = 0  # frames, at most, per time mask
    spec_freq_masks: int = 0
    spec_freq_width: int = 0  # mel bins, at most, per frequency mask


@dataclass
class MixupConfig:
    """Mixup in training (off by default: the paper does not use it).

    With probability ``prob`` an example is mixed with another of its batch: its content, per modality
    after video dropout, and its multi-hot targets become ``lam * own + (1 - lam) * other``, one
    ``lam ~ Beta(alpha, alpha)`` per mixed example (``perceiver.inputs.Mix``).
    """

    prob: float = 0.0
    alpha: float = 1.0


# train.sampler: "uniform" reads every clip once per pass; "balanced" draws clips by class weight
# (perceiver.loader.ClassBalance).
SAMPLERS = ("uniform", "balanced")


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
    sampler: str = "uniform"  # one of SAMPLERS
    max_failures: int = 2  # Ray Train FailureConfig
    num_workers: int = 2
    use_gpu: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    compile: bool = False  # torch.compile the model (CUDA runs; its first steps compile)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: PerceiverConfig = field(default_factory=PerceiverConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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
    """Checks the schema's types cannot express: the recipe's (each modality's), then the rest."""
    check_recipe(cfg.data, modalities_of(cfg.data, cfg.inputs.modalities))
    checks = [
        (0.0 <= cfg.inputs.video_dropout <= 1.0, "inputs.video_dropout must lie in [0, 1]"),
        (0.0 <= cfg.train.augment.crop_min_scale <= 1.0, "train.augment.crop_min_scale must lie in [0, 1]"),
        (0.0 <= cfg.train.augment.colour < 1.0, "train.augment.colour must lie in [0, 1)"),
        (cfg.train.sampler in SAMPLERS, f"train.sampler must be one of {', '.join(SAMPLERS)}"),
        (0.0 <= cfg.train.mixup.prob <= 1.0, "train.mixup.prob must lie in [0, 1]"),
        (cfg.train.mixup.alpha > 0.0, "train.mixup.alpha must be > 0"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (0 <= cfg.train.warmup_steps < cfg.train.steps, "train.warmup_steps must lie in [0, train.steps)"),
        (cfg.model.latent_dim % cfg.model.self_heads == 0, "model.latent_dim must divide by model.self_heads"),
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
