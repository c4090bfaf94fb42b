"""``adamhub.optax``: a small MLP trained with ``remote_adam``/``remote_adamw`` follows
``optax.adam``/``optax.adamw`` (float32) to 1e-5, a schedule included; a worker that
restarts attaches to its session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamhub
from adamhub.optax import remote_adam, remote_adamw

STEPS = 40


def mlp_params(seed: int = 0) -> dict[str, Any]:
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    return {
        "hidden": {"w": jax.random.normal(keys[0], (8, 16)) * 0.3, "b": jnp.zeros(16)},
        "out": {"w": jax.random.normal(keys[1], (16, 1)) * 0.3, "b": jnp.zeros(1)},
    }


def loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return jnp.mean((hidden @ params["out"]["w"] + params["out"]["b"] - y) ** 2)


def batches() -> list[tuple[jax.Array, jax.Array]]:
    rng = np.random.default_rng(0)
    data = []
    for _ in range(STEPS):
        x = rng.normal(size=(32, 8)).astype(np.float32)
        data.append((jnp.asarray(x), jnp.asarray(np.sin(x.sum(axis=1, keepdims=True)))))
    return data


def train(optimizer: optax.GradientTransformation) -> tuple[dict[str, Any], list[float]]:
    params = mlp_params()
    state = optimizer.init(params)
    grad = jax.jit(jax.value_and_grad(loss))
    losses = []
    for x, y in batches():
        value, grads = grad(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(value))
    return params, losses


def worst(a: dict[str, Any], b: dict[str, Any]) -> float:
    diffs = jax.tree_util.tree_map(lambda p, q: float(jnp.max(jnp.abs(p - q))), a, b)
    return float(max(jax.tree_util.tree_leaves(diffs)))


CASES: list[tuple[str, Callable[..., Any], Callable[..., Any], dict[str, Any]]] = [
    ("adam", remote_adam, optax.adam, {"learning_rate": 0.01}),
    ("adamw", remote_adamw, optax.adamw, {"learning_rate": 0.01, "weight_decay": 0.05}),
    (
        "adam with a schedule",
        remote_adam,
        optax.adam,
        {"learning_rate": optax.linear_schedule(0.02, 0.001, STEPS)},
    ),
]


@pytest.mark.parametrize(
    ("label", "remote", "local", "arguments"), CASES, ids=[c[0] for c in CASES]
)
def test_a_small_mlp_follows_optax(
    service_url: str,
    label: str,
    remote: Callable[..., Any],
    local: Callable[..., Any],
    arguments: dict[str, Any],
) -> None:
    with adamhub.Client(service_url) as client:
        ours, our_losses = train(remote(client=client, **arguments))
        theirs, their_losses = train(local(**arguments))
        assert worst(ours, theirs) <= 1e-5, label
        assert our_losses[-1] < our_losses[0] / 2  # it learned
        assert np.allclose(our_losses, their_losses, atol=1e-5)


def test_a_restarted_worker_attaches_to_its_session(service_url: str) -> None:
    with adamhub.Client(service_url) as client:
        first = remote_adam(0.01, client=client)
        params = mlp_params()
        state = first.init(params)
        grads = jax.grad(loss)(params, *batches()[0])
        updates, state = first.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        # A new process: the same session, its moments on the service.
        again = remote_adam(0.01, client=client, session=state.session_id)
        resumed = again.init(params)
        assert resumed == state and resumed.step == 1
        updates, resumed = again.update(grads, resumed, params)
        assert resumed.step == 2
        with pytest.raises(ValueError, match="needs params"):
            again.update(grads, resumed)
        with pytest.raises(ValueError, match="parameters"):
            remote_adam(client=client, session=state.session_id).init({"w": jnp.zeros(3)})


def test_the_jax_example_fits_a_sine(service_url: str) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "jax_worker.py"
    done = subprocess.run(
        [sys.executable, str(example), "--base-url", service_url, "--steps", "300"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert "t=300" in last and float(last.rsplit(" ", 1)[1]) < 0.05, done.stdout
