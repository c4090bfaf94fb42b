"""A training worker in plain numpy: copy it, put your model's gradient in.

    pip install adamhub
    python numpy_worker.py --base-url http://localhost:8000 [--session s_…] [--steps 200]

It fits a linear regression on synthetic data. Run several copies with the same
``--session`` to train one model with several workers.
"""

from __future__ import annotations

import argparse

import numpy as np

import adamhub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--session", help="the session to join (default: create one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # The data: y = x·w + noise, with w to be found.
    rng = np.random.default_rng(args.seed)
    true_w = np.arange(1.0, 11.0)
    x = rng.normal(size=(2048, 10))
    y = x @ true_w + 0.1 * rng.normal(size=2048)

    with adamhub.Client(args.base_url) as client:
        if args.session:
            session = client.session(args.session)
        else:
            session = client.create_session(size=10, optimizer={"lr": 0.1}, name="numpy-example")
            print(f"created session {session.id}")
        w = session.params()
        for step in range(1, args.steps + 1):
            rows = rng.integers(0, len(x), 64)
            error = x[rows] @ w - y[rows]
            gradient = 2 * x[rows].T @ error / len(rows)  # d/dw of the mean squared error
            w = session.step(gradient)
            if step % 50 == 0 or step == args.steps:
                print(f"step {session.t}: batch loss {np.mean(error**2):.4f}")
        print(f"final loss {np.mean((x @ w - y) ** 2):.4f}; w ≈ {np.round(w, 2).tolist()}")


if __name__ == "__main__":
    main()
