"""Local SGD with adamhub as the outer optimizer (FedAdam, DiLoCo).

    pip install adamhub
    python local_sgd.py --base-url http://localhost:8000 [--workers 4] [--rounds 20]

Each worker trains its own copy of the model for ``--local-steps`` steps of plain SGD
on its own data, then sends the distance it travelled, θ_global − θ_local, as a
pseudo-gradient. The session takes rounds of all workers: it averages their
pseudo-gradients and applies one Adam step (the outer optimizer), and every worker
starts the next round from the new global parameters. Workers talk to the service once
per ``--local-steps`` steps instead of at every step.
"""

from __future__ import annotations

import argparse
import multiprocessing

import numpy as np

import adamhub

FEATURES = 10
TRUE_W = np.linspace(-2.0, 2.0, FEATURES)


def data(worker: int) -> tuple[np.ndarray, np.ndarray]:
    """A worker's own data: y = x·w + noise (each worker's x drawn differently)."""
    rng = np.random.default_rng(worker)
    x = rng.normal(loc=0.3 * worker, size=(1024, FEATURES))
    return x, x @ TRUE_W + 0.1 * rng.normal(size=1024)


def worker(
    base_url: str | None, session_id: str, index: int, rounds: int, local_steps: int, lr: float
) -> float:
    x, y = data(index)
    rng = np.random.default_rng(1000 + index)
    with adamhub.Client(base_url) as client:
        session = client.session(session_id)
        global_w = session.params()
        for _ in range(rounds):
            w = global_w.copy()
            for _ in range(local_steps):  # the inner optimizer: plain SGD, locally
                rows = rng.integers(0, len(x), 32)
                w -= lr * 2 * x[rows].T @ (x[rows] @ w - y[rows]) / len(rows)
            # The outer gradient; the round's step averages every worker's.
            global_w = session.step(global_w - w, samples=len(x))
            if index == 0:
                loss = np.mean((x @ global_w - y) ** 2)
                print(f"round {session.t}: worker 0's loss at the global parameters {loss:.4f}")
    return float(np.mean((x @ global_w - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    args = parser.parse_args()

    with adamhub.Client(args.base_url) as client:
        session = client.create_session(
            size=FEATURES,
            dtype="float64",
            optimizer={"lr": 0.1, "betas": [0.9, 0.99]},  # the outer Adam
            rounds={"contributions": args.workers},
            name="local-sgd-example",
        )
        print(f"session {session.id}: {args.workers} workers, {args.local_steps} local steps")
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            losses = pool.starmap(
                worker,
                [
                    (args.base_url, session.id, i, args.rounds, args.local_steps, args.inner_lr)
                    for i in range(args.workers)
                ],
            )
        w = session.params()
    print(f"final mean loss {np.mean(losses):.4f} after t={session.t} outer steps")
    print(f"w ≈ {np.round(w, 2).tolist()}")


if __name__ == "__main__":
    main()
