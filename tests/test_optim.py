import copy
import io
import math

import pytest
import torch
from timm.optim import Lamb

from perceiver.optim import build_optimizer, build_schedule


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.latents = torch.nn.Parameter(torch.randn(4, 8))
        self.modality_embed = torch.nn.Parameter(torch.randn(2, 8))
        self.linear = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.frozen = torch.nn.Parameter(torch.randn(8, 8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.linear(x) + self.modality_embed.sum(0))
        return h @ self.latents.T


def _ids(params: list[torch.Tensor]) -> set[int]:
    return {id(p) for p in params}


def test_weight_decay_groups() -> None:
    model = Tiny()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, Lamb)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _ids(decay["params"]) == {id(model.linear.weight)}
    assert _ids(no_decay["params"]) == _ids(
        [model.latents, model.modality_embed, model.linear.bias, model.norm.weight, model.norm.bias]
    )


def test_empty_group_is_left_out() -> None:
    opt = build_optimizer(torch.nn.LayerNorm(4), lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]


def _lr_at(warmup: int, total: int, step: int) -> float:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_schedule(opt, warmup, total)
    for _ in range(step):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_schedule_values() -> None:
    warmup, total = 10, 110
    assert _lr_at(warmup, total, 0) == pytest.approx(2.0 / (warmup + 1))
    assert 0 < _lr_at(warmup, total, 0) < _lr_at(warmup, total, 5) < 2.0
    assert _lr_at(warmup, total, warmup) == pytest.approx(2.0)
    assert _lr_at(warmup, total, 60) == pytest.approx(1.0)  # halfway through the cosine
    assert _lr_at(warmup, total, 35) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert _lr_at(warmup, total, total) == pytest.approx(0.0, abs=1e-12)
    assert _lr_at(warmup, total, total + 5) == pytest.approx(0.0, abs=1e-12)


def test_schedule_without_warmup_starts_at_lr() -> None:
    assert _lr_at(0, 10, 0) == pytest.approx(2.0)


@pytest.mark.parametrize(("warmup", "total"), [(10, 10), (-1, 10), (20, 10)])
def test_schedule_rejects_bad_steps(warmup: int, total: int) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        build_schedule(opt, warmup, total)


def _train_step(model: Tiny, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    batches = torch.randn(12, 5, 8)
    model = Tiny()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = build_schedule(opt, warmup_steps=3, total_steps=12)
    for x in batches[:6]:
        _train_step(model, opt, sched, x)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = Tiny()
    resumed.load_state_dict(state["model"])
    resumed_opt = build_optimizer(resumed, lr=1e-2, weight_decay=0.1)
    resumed_sched = build_schedule(resumed_opt, warmup_steps=3, total_steps=12)
    resumed_opt.load_state_dict(state["opt"])
    resumed_sched.load_state_dict(state["sched"])

    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for x in batches[6:]:
        _train_step(model, opt, sched, x)
        _train_step(resumed, resumed_opt, resumed_sched, x)
        for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
            assert torch.equal(a, b)
        assert resumed_sched.get_last_lr() == sched.get_last_lr()


def test_lamb_reduces_quadratic_loss() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    target = copy.deepcopy(model)
    with torch.no_grad():
        target.weight.add_(torch.randn_like(target.weight))
    x = torch.randn(64, 16)
    y = target(x).detach()
    opt = build_optimizer(model, lr=0.05, weight_decay=1e-4)  # non-zero: trust ratio on

    def loss() -> torch.Tensor:
        return (model(x) - y).pow(2).mean()

    initial = loss().item()
    for _ in range(100):
        opt.zero_grad()
        current = loss()
        current.backward()
        opt.step()
    assert loss().item() < 0.1 * initial
