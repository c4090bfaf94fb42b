"""The optimiser against torch (golden files, and live when torch is importable)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamhub_service.errors import NonFiniteUpdate
from adamhub_service.optim import AdamConfig, AdamState, adam_step, init_state
from golden_cases import CASES, CHECKPOINT_STEPS, GOLDEN_FILE, STEPS, case_inputs

HERE = Path(__file__).parent
VECTORS = ("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def config_of(options: dict[str, Any]) -> AdamConfig:
    return AdamConfig(**options)


def run_ours(case: str) -> dict[int, AdamState]:
    _, options = CASES[case]
    params, gradients = case_inputs(case)
    config = config_of(options)
    state = init_state(params, config)
    states = {}
    for step in range(1, STEPS + 1):
        state = adam_step(state, gradients[step - 1], config)
        if step in CHECKPOINT_STEPS:
            states[step] = state
    return states


def worst_relative_deviation(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |a - b| / max(1, |b|): the bar of docs/architecture.md is 1e-5."""
    assert ours.dtype == reference.dtype
    return float(np.max(np.abs(ours - reference) / np.maximum(1.0, np.abs(reference))))


def assert_matches(
    states: dict[int, AdamState], reference: dict[str, np.ndarray], case: str
) -> None:
    for step in CHECKPOINT_STEPS:
        for vector in VECTORS:
            ours = getattr(states[step], vector)
            key = f"{case}/{step}/{vector}"
            if ours is None:
                assert key not in reference
                continue
            deviation = worst_relative_deviation(ours, reference[key])
            assert deviation <= 1e-5, f"{key}: worst relative deviation {deviation:.3g}"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_FILE) as data:
        return dict(data)


def test_golden_file_covers_every_case(golden: dict[str, np.ndarray]) -> None:
    cases = {key.split("/")[0] for key in golden if key != "about"}
    assert cases == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_golden(case: str, golden: dict[str, np.ndarray]) -> None:
    assert_matches(run_ours(case), golden, case)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize(
    "case", ["adamw_amsgrad_maximize-float32", "l2-float64", "default-float32"]
)
def test_matches_torch_live(case: str) -> None:
    from make_golden import run_case

    assert_matches(run_ours(case), run_case(case), case)


def test_float32_and_float64_keep_their_dtype() -> None:
    for dtype in ("float32", "float64"):
        state = init_state(np.ones(3, dtype=dtype), AdamConfig(amsgrad=True))
        state = adam_step(state, np.ones(3, dtype=dtype), AdamConfig(amsgrad=True))
        for vector in VECTORS:
            assert getattr(state, vector).dtype == np.dtype(dtype)


def paper_step(state: AdamState, g: np.ndarray, c: AdamConfig) -> AdamState:
    """The paper's formulas (docs/architecture.md) written plainly, in float64."""
    t = state.step + 1
    beta1, beta2 = c.betas
    theta = state.params.astype(np.float64)
    g = -g if c.maximize else g.astype(np.float64)
    if c.weight_decay and c.decoupled_weight_decay:
        theta = theta * (1 - c.lr * c.weight_decay)
    elif c.weight_decay:
        g = g + c.weight_decay * theta
    m = beta1 * state.exp_avg + (1 - beta1) * g
    v = beta2 * state.exp_avg_sq + (1 - beta2) * g * g
    v_max = None
    if c.amsgrad:
        assert state.max_exp_avg_sq is not None
        v_max = np.maximum(state.max_exp_avg_sq, v)
    m_hat = m / (1 - beta1**t)
    v_hat = (v if v_max is None else v_max) / (1 - beta2**t)
    theta = theta - c.lr * m_hat / (np.sqrt(v_hat) + c.eps)
    return AdamState(theta, m, v, v_max, t)


configs = st.builds(
    AdamConfig,
    lr=st.floats(0, 1),
    betas=st.tuples(st.floats(0, 0.999), st.floats(0, 0.9999)),
    eps=st.floats(1e-10, 1e-3),
    weight_decay=st.floats(0, 0.5),
    decoupled_weight_decay=st.booleans(),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
)
finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    config=configs,
    arrays=hnp.arrays(np.float64, st.integers(1, 16).map(lambda n: (3, n)), elements=finite),
    steps=st.integers(1, 5),
)
def test_agrees_with_the_paper_formulas(config: AdamConfig, arrays: np.ndarray, steps: int) -> None:
    params, grad_a, grad_b = arrays
    ours = reference = init_state(params, config)
    for step in range(steps):
        grad = grad_a if step % 2 == 0 else grad_b
        ours = adam_step(ours, grad, config)
        reference = paper_step(reference, grad, config)
    assert ours.step == reference.step == steps
    np.testing.assert_allclose(ours.params, reference.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.exp_avg_sq, reference.exp_avg_sq, rtol=1e-9, atol=1e-300)


def test_the_first_moment_follows_torchs_lerp_for_a_large_weight() -> None:
    """torch's ``exp_avg.lerp_(grad, 1 - β1)`` is g - (g - m)(1 - w) for a weight w of
    0.5 or more: with β1 = 0 the first moment is the gradient itself, however small
    next to the one before (m + w(g - m) would lose it to cancellation)."""
    config = AdamConfig(betas=(0.0, 0.999))
    for dtype in ("float32", "float64"):
        ones = np.ones(4).astype(dtype)
        state = adam_step(init_state(ones, config), ones, config)
        small = np.array([1e-10, -3e-12, 2e-9, 0.0]).astype(dtype)
        assert np.array_equal(adam_step(state, small, config).exp_avg, small)


def test_input_state_is_not_modified() -> None:
    config = AdamConfig(weight_decay=0.1, amsgrad=True, maximize=True)
    state = adam_step(init_state(np.arange(4.0), config), np.ones(4), config)
    copies = {v: getattr(state, v).copy() for v in VECTORS}
    adam_step(state, np.full(4, 3.0), config)
    for vector, value in copies.items():
        assert np.array_equal(getattr(state, vector), value)


def test_an_overflowing_update_is_refused_with_the_index() -> None:
    config = AdamConfig()
    state = init_state(np.zeros(3, dtype=np.float32), config)
    grad = np.array([1.0, 3e38, 1.0], dtype=np.float32)  # g*g overflows float32
    with pytest.raises(NonFiniteUpdate) as caught:
        adam_step(state, grad, config)
    assert caught.value.index == 1
    assert caught.value.vector == "exp_avg_sq"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -0.1}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas[0]"),
        ({"betas": (0.9, -0.5)}, "betas[1]"),
        ({"eps": 0.0}, "eps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"lr": float("nan")}, "finite"),
    ],
)
def test_out_of_range_hyperparameters_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        replace(AdamConfig(), **changes)
