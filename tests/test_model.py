"""The Perceiver model: the paper's parameter counts, weight sharing, masking, attention maps."""

from __future__ import annotations

import pytest
import torch

from perceiver import Perceiver, PerceiverConfig

B, M, C = 3, 20, 12


def small_config(**overrides) -> PerceiverConfig:
    kw = dict(
        input_channels=C,
        num_latents=8,
        latent_dim=16,
        num_blocks=3,
        self_attends_per_block=2,
        cross_heads=1,
        self_heads=2,
        num_classes=5,
        share_weights=False,
    )
    kw.update(overrides)
    return PerceiverConfig(**kw)


def small_model(seed: int = 0, **overrides) -> Perceiver:
    torch.manual_seed(seed)
    return Perceiver(small_config(**overrides)).eval()


def inputs_and_mask(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, M, C, generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[0, 15:] = False
    mask[1, ::3] = False
    return x, mask


def imagenet_params(share_weights: bool) -> int:
    """Table 7's ImageNet model, built on the meta device: shapes only, no memory."""
    cfg = PerceiverConfig(
        input_channels=261,
        num_latents=512,
        latent_dim=1024,
        num_blocks=8,
        self_attends_per_block=6,
        cross_heads=1,
        self_heads=8,
        cross_widening=1,
        self_widening=1,
        num_classes=1000,
        share_weights=share_weights,
    )
    with torch.device("meta"):
        model = Perceiver(cfg)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_table_7():
    assert round(imagenet_params(share_weights=True) / 1e6, 1) == 44.9
    assert round(imagenet_params(share_weights=False) / 1e6, 1) == 326.2


def test_weight_sharing_structure():
    shared = small_model(share_weights=True, num_blocks=4)
    crosses, latents = shared.cross_attends, shared.latent_transformers
    assert crosses[0] is not crosses[1]
    assert all(c is crosses[1] for c in crosses[2:])
    assert all(t is latents[0] for t in latents)
    unshared = small_model(num_blocks=4)
    assert len({id(m) for m in unshared.cross_attends}) == 4
    assert len({id(m) for m in unshared.latent_transformers}) == 4
    # a checkpoint restores the tying, not copies of it
    restored = small_model(seed=5, share_weights=True, num_blocks=4)
    restored.load_state_dict(shared.state_dict())
    assert restored.cross_attends[3] is restored.cross_attends[1]
    x, mask = inputs_and_mask()
    torch.testing.assert_close(restored(x, mask), shared(x, mask))


@pytest.mark.parametrize("missing", ["input_channels", "num_classes"])
def test_missing_data_dependent_sizes_raise(missing):
    with pytest.raises(ValueError, match=missing):
        Perceiver(small_config(**{missing: None}))


@pytest.mark.parametrize("share_weights", [False, True])
def test_gradients_reach_every_parameter(share_weights):
    model = small_model(share_weights=share_weights).train()
    x, mask = inputs_and_mask()
    model(x, mask).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_output_shape_and_latent_init():
    model = small_model()
    x, mask = inputs_and_mask()
    assert model(x, mask).shape == (B, 5)
    assert model(x).shape == (B, 5)
    torch.manual_seed(0)
    latents = Perceiver(small_config(num_latents=512, latent_dim=256)).latents.detach()
    assert latents.shape == (512, 256)
    assert latents.abs().max() <= 0.04
    # std 0.02 before the cut at 2 std; the cut leaves 0.02 * 0.88
    assert 0.016 < latents.std() < 0.019
    assert abs(latents.mean()) < 1e-3


def test_masked_tokens_do_not_change_the_output():
    model = small_model()
    x, mask = inputs_and_mask()
    garbage = x.clone()
    garbage[~mask] = 1e4 * torch.randn(int((~mask).sum()), C)
    torch.testing.assert_close(model(garbage, mask), model(x, mask))
    # and a padded sample equals the same sample without its padding
    torch.testing.assert_close(model(x[:1, :15]), model(x, mask)[:1])


def test_permuting_unmasked_tokens_leaves_the_output_unchanged():
    model = small_model(cross_heads=2)
    x, mask = inputs_and_mask()
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(x[:, perm], mask[:, perm]), model(x, mask), atol=1e-5, rtol=1e-5)


def test_all_masked_sample_is_finite_and_leaves_the_others_alone():
    model = small_model()
    x, mask = inputs_and_mask()
    mask[2] = False
    out = model(x, mask)
    assert torch.isfinite(out).all()
    # its logits do not depend on its (ignored) values
    x2 = x.clone()
    x2[2] = 1e3
    torch.testing.assert_close(model(x2, mask), out)
    torch.testing.assert_close(out[:2], model(x[:2], mask[:2]))
    model.train()
    model(x, mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    _, maps = model(x, mask, return_attention=True)
    assert all(m[2].abs().sum() == 0 for m in maps)


@pytest.mark.parametrize("cross_heads", [1, 2])
def test_attention_maps(cross_heads):
    model = small_model(cross_heads=cross_heads, share_weights=True)
    x, mask = inputs_and_mask()
    logits, maps = model(x, mask, return_attention=True)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (B, cross_heads, 8, M)
        torch.testing.assert_close(m.sum(-1), torch.ones(B, cross_heads, 8))
        assert (m[~mask[:, None, None, :].expand_as(m)] == 0).all()
    torch.testing.assert_close(logits, model(x, mask), atol=1e-5, rtol=1e-5)


def test_runs_under_torch_compile():
    model = small_model()
    x, mask = inputs_and_mask()
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x, mask), model(x, mask))


def test_runs_under_bf16_autocast():
    model = small_model()
    x, mask = inputs_and_mask()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, mask)
        logits, maps = model(x, mask, return_attention=True)
    assert out.shape == (B, 5) and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x, mask), atol=0.1, rtol=0.1)
    torch.testing.assert_close(logits.float(), out.float(), atol=0.1, rtol=0.1)


def test_folded_key_value_projections_are_exact():
    """fold_kv moves W_k and W_v from the M inputs to the N queries: same function, same gradients."""
    model = small_model().train()
    attentions = [c.attention for c in model.cross_attends]
    assert all(a.fold_kv for a in attentions)  # one head, keys as wide as the 12 input channels
    x, mask = inputs_and_mask()
    results = []
    for fold in (True, False):
        for a in attentions:
            a.fold_kv = fold
        model.zero_grad()
        logits, maps = model(x, mask, return_attention=True)
        model(x, mask).square().sum().backward()
        results.append((logits, maps, [p.grad.clone() for p in model.parameters()]))
    (folded, folded_maps, folded_grads), (plain, plain_maps, plain_grads) = results
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(folded_maps, plain_maps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(folded_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
