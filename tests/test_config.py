"""Typed configs: every shipped YAML loads, mistakes fail with one line naming the key."""

from __future__ import annotations

import pytest
import torch

from perceiver.attention import attention_kernels
from perceiver.classifier import AVClassifier
from perceiver.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["tiny", "micro", "audioset"])
def test_shipped_configs_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.inputs.modalities == ["audio", "video"]


def test_audioset_config_is_the_papers_av_recipe():
    cfg = load_config("configs/audioset.yaml")
    assert (cfg.model.num_blocks, cfg.model.self_attends_per_block, cfg.model.share_weights) == (2, 8, False)
    assert (cfg.data.video.fps, cfg.data.video.num_frames, cfg.data.video.size) == (25.0, 32, 224)
    assert (cfg.data.audio.sample_rate, cfg.data.audio.num_samples) == (48000, 61440)
    assert cfg.inputs.video_dropout == 0.3
    model = AVClassifier(cfg, num_classes=527)
    assert model.inputs.num_tokens == 13024 and model.inputs.out_channels == 487
    # What the training job's rank 0 says on a GPU, built here as it builds it: the folded cross-attend's
    # one head is the input array's 487 channels rounded up to a multiple of 8.
    kernels = attention_kernels(model.perceiver, model.inputs.num_tokens, torch.bfloat16, torch.device("cpu"))
    assert kernels == ("attention kernels: cross-attend (heads 1, head dim 488): the cpu scaled_dot_product_attention; "
                       "latent self-attend (heads 8, head dim 64): the cpu scaled_dot_product_attention")


@pytest.mark.parametrize("overrides, message", [
    (["model.num_latnts=3"], "num_latnts"),
    (["model.num_latents=many"], "model.num_latents"),
    (["train.lr"], "key.sub=value"),
    (["data.video.encoding=png"], "data.video.encoding"),
    (["data.video.num_frames=31"], "num_frames"),
])
def test_mistakes_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_misspelt_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*batch_sise"):
        load_config(bad)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['touch {}']\n".format(tmp_path / "ran"))
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do; running it would not)
        load_config(evil)
    assert not (tmp_path / "ran").exists()


def test_overrides_apply():
    cfg = load_config("configs/tiny.yaml", ["model.num_latents=256", "train.use_gpu=true"])
    assert cfg.model.num_latents == 256 and cfg.train.use_gpu is True
