"""Param groups, learning-rate schedules and clipping, against torch's own (live when
torch is importable) and against their definitions."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from adamhub_service.optim import AdamConfig, ParamGroup, Schedule, adam_step, init_state
from adamhub_service.optim.kernel import squared_norm

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed"
)


def test_schedules_follow_their_definitions() -> None:
    cosine = Schedule("warmup_cosine", warmup_steps=10, total_steps=110, final_lr_ratio=0.1)
    linear = Schedule("warmup_linear", warmup_steps=10, total_steps=110, final_lr_ratio=0.1)
    assert cosine.factor(1) == pytest.approx(0.1) and cosine.factor(10) == 1.0
    assert cosine.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(π/2) = 0
    assert linear.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert linear.factor(35) == pytest.approx(0.1 + 0.9 * 0.75)
    assert cosine.factor(110) == cosine.factor(500) == pytest.approx(0.1)
    assert Schedule().factor(7) == 1.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(schedule=Schedule("warmup_cosine", 10, 10)), "total_steps must be > warmup_steps"),
        (dict(schedule=Schedule("sometimes")), "schedule.kind"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(param_groups=(ParamGroup(2, lr=-1.0),)), "param_groups[0].lr"),
        (dict(param_groups=(ParamGroup(0),)), "param_groups[0].size"),
    ],
)
def test_invalid_settings_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AdamConfig(**config)  # type: ignore[arg-type]


def test_groups_must_cover_the_vector() -> None:
    config = AdamConfig(param_groups=(ParamGroup(2), ParamGroup(2)))
    state = init_state(np.zeros(5, np.float32), config)
    with pytest.raises(ValueError, match="cover 4 parameters"):
        adam_step(state, np.ones(5, np.float32), config)


def test_groups_are_separate_adams() -> None:
    """Two groups step as two sessions with each group's settings would, bit for bit."""
    rng = np.random.default_rng(0)
    first, second = AdamConfig(lr=0.1, weight_decay=0.1), AdamConfig(lr=0.01, betas=(0.5, 0.9))
    both = AdamConfig(
        lr=0.1,
        weight_decay=0.1,
        param_groups=(ParamGroup(6), ParamGroup(4, lr=0.01, betas=(0.5, 0.9), weight_decay=0.0)),
    )
    params = rng.normal(size=10).astype(np.float32)
    joint = init_state(params, both)
    alone = (init_state(params[:6], first), init_state(params[6:], second))
    for _ in range(20):
        grad = rng.normal(size=10).astype(np.float32)
        joint = adam_step(joint, grad, both)
        alone = (adam_step(alone[0], grad[:6], first), adam_step(alone[1], grad[6:], second))
    expected = np.concatenate([alone[0].params, alone[1].params])
    assert joint.params.tobytes() == expected.tobytes()


def test_the_norm_is_the_same_whatever_the_split() -> None:
    grad = np.random.default_rng(1).normal(size=300_001).astype(np.float32)
    exact = math.fsum(float(x) * float(x) for x in grad.astype(np.float64))
    assert squared_norm(grad) == pytest.approx(exact, rel=1e-12)
    assert squared_norm(grad) == squared_norm(grad.copy())


@needs_torch
def test_adamw_two_groups_warmup_cosine_and_clipping_match_torch() -> None:
    """An ordinary torch script: AdamW, decay on weights but not biases, warmup + cosine
    by LambdaLR, clip_grad_norm_(…, 1.0); 200 steps."""
    import torch

    schedule = Schedule("warmup_cosine", warmup_steps=20, total_steps=150, final_lr_ratio=0.05)
    rng = np.random.default_rng(2)
    weights = rng.normal(size=48).astype(np.float32)
    biases = rng.normal(size=8).astype(np.float32)
    w, b = torch.nn.Parameter(torch.tensor(weights)), torch.nn.Parameter(torch.tensor(biases))
    optimizer = torch.optim.AdamW(
        [{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}], lr=3e-2
    )
    # LambdaLR counts epochs from 0 after each step; f counts the step being computed.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: schedule.factor(e + 1))
    config = AdamConfig(
        lr=3e-2,
        weight_decay=0.05,
        decoupled_weight_decay=True,
        schedule=schedule,
        max_grad_norm=1.0,
        param_groups=(ParamGroup(48), ParamGroup(8, weight_decay=0.0)),
    )
    state = init_state(np.concatenate([weights, biases]), config)
    worst = 0.0
    for _ in range(200):
        grad = (rng.normal(size=56) * rng.uniform(0.05, 0.5)).astype(np.float32)
        w.grad, b.grad = torch.tensor(grad[:48]), torch.tensor(grad[48:])
        torch.nn.utils.clip_grad_norm_([w, b], 1.0)
        optimizer.step()
        scheduler.step()
        state = adam_step(state, grad, config)
        theirs = np.concatenate([w.detach().numpy(), b.detach().numpy()])
        worst = max(
            worst, float(np.max(np.abs(state.params - theirs) / np.maximum(1, np.abs(theirs))))
        )
    assert worst <= 1e-5, worst
    print(f"largest relative deviation from torch over 200 steps: {worst:.2e}")
