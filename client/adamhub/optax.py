"""JAX: Adam computed by an adamhub service, as an ``optax.GradientTransformation``.

    import optax
    from adamhub.optax import remote_adam

    optimizer = remote_adam(1e-3)                  # or remote_adamw(1e-3, weight_decay=…)
    state = optimizer.init(params)                 # makes (or attaches to) a session
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)  # the session's parameters

``update`` sends the flattened gradient pytree as one step and returns
``new_params - params`` as the updates, so that ``optax.apply_updates`` gives the
session's parameters (to one float rounding of that difference). The state is the
session's, kept by the service: a worker that restarts attaches with ``session=<id>``.
The step is an HTTP request, so ``update`` runs outside ``jax.jit`` (jit the gradient).

Needs the ``jax`` extra: ``pip install 'adamhub[jax]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamhub._client import Client
from adamhub._session import Session

ScalarOrSchedule = float | Callable[[int], Any]


class RemoteAdamState(NamedTuple):
    """The optimizer's state on this side: the session's id and its step count (the
    moments are the service's; a schedule is read at ``step``, as optax's count)."""

    session_id: str
    step: int


def remote_adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    client: Client | None = None,
    session: Session | str | None = None,
    rounds: int | dict[str, Any] | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
) -> optax.GradientTransformation:
    """``optax.adam``'s arguments (a schedule for ``learning_rate`` too), computed by a
    session of ``client`` (default ``adamhub.Client()``): made by ``init`` from the
    parameters, or ``session`` (an id or a ``Session``) attached to. ``rounds=K`` makes
    a session whose every step is the mean of K workers' gradients (the others attach
    with ``session=``)."""
    return _remote(learning_rate, b1, b2, eps, 0.0, client, session, rounds, name, tags)


def remote_adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    *,
    client: Client | None = None,
    session: Session | str | None = None,
    rounds: int | dict[str, Any] | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
) -> optax.GradientTransformation:
    """``optax.adamw``: ``remote_adam`` with decoupled weight decay (θ ← θ(1 − αλ))."""
    return _remote(learning_rate, b1, b2, eps, weight_decay, client, session, rounds, name, tags)


def _remote(
    learning_rate: ScalarOrSchedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    client: Client | None,
    session: Session | str | None,
    rounds: int | dict[str, Any] | None,
    name: str | None,
    tags: list[str] | None,
) -> optax.GradientTransformation:
    the_client = client if client is not None else Client()
    schedule: Callable[[int], Any] | None = None
    if callable(learning_rate):
        schedule, first_lr = learning_rate, learning_rate(0)
    else:
        first_lr = learning_rate
    optimizer: dict[str, Any] = {
        "lr": float(first_lr),
        "betas": [b1, b2],
        "eps": eps,
    }
    if weight_decay:
        optimizer |= {"weight_decay": weight_decay, "decoupled_weight_decay": True}
    sessions: dict[str, Session] = {}

    def init(params: Any) -> RemoteAdamState:
        flat = _flat(params)
        if session is not None:
            found = the_client.session(session) if isinstance(session, str) else session
            if found.size != flat.size:
                raise ValueError(
                    f"the session has {found.size} parameters; the pytree has {flat.size}"
                )
        else:
            found = the_client.create_session(
                flat,
                dtype=str(flat.dtype),
                optimizer=optimizer,
                rounds={"contributions": rounds} if isinstance(rounds, int) else rounds,
                name=name,
                tags=tags or [],
            )
        sessions[found.id] = found
        return RemoteAdamState(found.id, found.t)

    def update(
        updates: Any, state: RemoteAdamState, params: Any | None = None
    ) -> tuple[Any, RemoteAdamState]:
        if params is None:
            raise ValueError("remote_adam's update needs params: update(grads, state, params)")
        remote = sessions.get(state.session_id) or the_client.session(state.session_id)
        sessions[remote.id] = remote
        settings = (
            {"optimizer": {"lr": float(schedule(state.step))}} if schedule is not None else None
        )
        new_flat = remote.step(_flat(updates), settings=settings)
        leaves, tree = jax.tree_util.tree_flatten(params)
        new_leaves, start = [], 0
        for leaf in leaves:
            size = int(np.size(leaf))
            shaped = np.asarray(new_flat[start : start + size]).reshape(np.shape(leaf))
            new_leaves.append(jnp.asarray(shaped, dtype=jnp.result_type(leaf)) - leaf)
            start += size
        return jax.tree_util.tree_unflatten(tree, new_leaves), RemoteAdamState(remote.id, remote.t)

    return optax.GradientTransformation(init, update)


def _flat(tree: Any) -> np.ndarray[Any, Any]:
    """A pytree's leaves as one vector (float32, or float64 when every leaf is)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        raise ValueError("the pytree has no leaves")
    dtype = np.float64 if all(leaf.dtype == np.float64 for leaf in leaves) else np.float32
    return np.concatenate([leaf.astype(dtype, copy=False).reshape(-1) for leaf in leaves])


__all__ = ["RemoteAdamState", "remote_adam", "remote_adamw"]
