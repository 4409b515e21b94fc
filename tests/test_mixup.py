"""train.mixup: two examples' content (per modality, after video dropout) and targets mixed with one
coefficient; presence and masks the union of the sources'; never at evaluation; drawn from the step's generator."""

from __future__ import annotations

import pytest
import torch

from perceiver import MultimodalInput
from perceiver.config import ConfigError, load_config
from perceiver.inputs import Mix
from tests.test_inputs import small_content, small_specs

AUDIO, VIDEO = slice(0, 5), slice(5, 17)  # token ranges of small_specs; content is 6 and 12 wide


def _content_of(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"audio": inputs[:, AUDIO, :6], "video": inputs[:, VIDEO, :12]}


# Example 0 mixed with 2 (lam 0.7), 1 with 0 (lam 0.25), 2 and 3 unmixed.
MIX = Mix(torch.tensor([2, 0, 2, 3]), torch.tensor([0.7, 0.25, 1.0, 1.0]))


def test_targets_and_content_mix_with_the_same_coefficient():
    module = MultimodalInput(small_specs(), dropout={"video": 0.0})
    content = small_content(4)
    plain, _ = module(content)
    mixed, _ = module(content, mix=MIX)
    for name, x in _content_of(mixed).items():
        own = _content_of(plain)[name]
        torch.testing.assert_close(x[0], 0.7 * own[0] + 0.3 * own[2])
        torch.testing.assert_close(x[1], 0.25 * own[1] + 0.75 * own[0])
        assert torch.equal(x[2:], own[2:])  # unmixed examples stay exactly as they were
    # Position features and modality vectors are every example's own: they do not change.
    assert torch.equal(mixed[:, AUDIO, 6:], plain[:, AUDIO, 6:]) and torch.equal(mixed[:, VIDEO, 12:], plain[:, VIDEO, 12:])
    labels = torch.eye(4, 3)  # examples 0..2 one class each, 3 none
    targets = MIX.targets(labels)
    torch.testing.assert_close(targets[0], torch.tensor([0.7, 0.0, 0.3]))
    torch.testing.assert_close(targets[1], torch.tensor([0.75, 0.25, 0.0]))
    assert torch.equal(targets[2:], labels[2:])


def test_a_mixed_modality_is_present_where_either_source_is_and_its_masks_are_the_union():
    module = MultimodalInput(small_specs(), dropout={"video": 0.0})
    content = small_content(4)
    present = {"video": torch.tensor([False, False, True, False])}  # 0 and 1 lack video, 2 has it
    masks = {"audio": torch.ones(4, 5, dtype=torch.bool), "video": torch.ones(4, 12, dtype=torch.bool)}
    masks["audio"][0, 3:] = False  # 0's audio ends early, 2's starts late
    masks["audio"][2, :1] = False
    masks["video"][2, 8:] = False  # 2's video ends early; an absent modality is unmasked (all True)
    plain, _ = module(content, present)
    inputs, mask = module(content, present, masks=masks, mix=MIX)
    video = _content_of(inputs)["video"]
    # 0 (no video) mixed with 2 (video): present, with 2's video scaled by 1 - lam.
    torch.testing.assert_close(video[0], 0.3 * _content_of(plain)["video"][2])
    assert not video[1].any()  # 1 and 0 both lack it: absent, zeroed
    audio_mask, video_mask = mask[:, AUDIO], mask[:, VIDEO]
    assert audio_mask[0].tolist() == [True] * 5  # 0's real [0, 3) with 2's real [1, 5)
    assert audio_mask[1].tolist() == [True] * 5  # 1's own audio is whole
    assert video_mask[0].tolist() == [True] * 8 + [False] * 4  # only 2's video is real: its mask, not 0's
    assert video_mask[1].all()  # neither source has video: the example's own (absent) mask
    assert torch.equal(mask[2:], torch.cat([masks["audio"], masks["video"]], 1)[2:])


def test_mixup_comes_after_video_dropout():
    module = MultimodalInput(small_specs(), dropout={"video": 1.0})  # every video dropped
    inputs, _ = module(small_content(4), generator=torch.Generator().manual_seed(0), mix=MIX)
    assert not _content_of(inputs)["video"].any()  # mixing dropped videos gives no video back
    assert _content_of(inputs)["audio"].all()


def test_mixup_is_off_at_evaluation():
    module = MultimodalInput(small_specs(), dropout={"video": 0.3}).eval()
    content = small_content(4)
    assert torch.equal(module(content, mix=MIX)[0], module(content)[0])


def test_the_draw_is_the_generators():
    def draw(seed: int, prob: float) -> Mix:
        return Mix.draw(torch.Generator().manual_seed(seed), 4000, prob=prob, alpha=1.0)

    a, b = draw(5, 0.5), draw(5, 0.5)
    assert torch.equal(a.partner, b.partner) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.lam, draw(6, 0.5).lam)
    mixed = a.lam < 1
    assert 0.45 < mixed.float().mean() < 0.55 and torch.equal(a.partner[~mixed], torch.arange(4000)[~mixed])
    assert 0.45 < a.lam[mixed].mean() < 0.55  # Beta(1, 1) is uniform on (0, 1)
    off = draw(5, 0.0)
    assert (off.lam == 1).all() and torch.equal(off.partner, torch.arange(4000))


@pytest.mark.parametrize("override, message", [("train.mixup.prob=1.5", "train.mixup.prob"),
                                               ("train.mixup.alpha=0", "train.mixup.alpha")])
def test_mixup_settings_are_checked(override, message):
    assert load_config("configs/audioset.yaml").train.mixup.prob == 0.0  # the paper's recipe does not mix
    with pytest.raises(ConfigError, match=message):
        load_config("configs/micro.yaml", [override])
