"""A JAX worker: a small MLP fitted with optax, Adam's state kept by an adamhub service.

    pip install 'adamhub[jax]'
    python examples/jax_worker.py --base-url http://127.0.0.1:8000 [--session ID]

`remote_adam` is an optax GradientTransformation: `init` makes the session (or attaches
to `--session`), `update` sends the gradient pytree as one step.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamhub
from adamhub.optax import remote_adam


def predict(params: dict[str, Any], x: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    output: jax.Array = hidden @ params["w2"] + params["b2"]
    return output


def loss(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((predict(params, x) - y) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--session", help="attach to this session instead of making one")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params = {
        "w1": jax.random.normal(keys[0], (1, 32)) * 0.5,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(keys[1], (32, 1)) * 0.5,
        "b2": jnp.zeros(1),
    }
    rng = np.random.default_rng(0)
    grad = jax.jit(jax.value_and_grad(loss))
    with adamhub.Client(args.base_url) as client:
        optimizer = remote_adam(0.01, client=client, session=args.session, name="jax-example")
        state = optimizer.init(params)
        for step in range(args.steps):
            x = jnp.asarray(rng.uniform(-3, 3, size=(64, 1)).astype(np.float32))
            value, grads = grad(params, x, jnp.sin(x))
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            if step % 100 == 0:
                print(f"step {step}: loss {float(value):.4f}")
        print(f"session {state.session_id}: t={state.step}, loss {float(value):.4f}")


if __name__ == "__main__":
    main()
