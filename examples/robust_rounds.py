"""Robust rounds: five workers fit one linear model in synchronous rounds; one of them
sends garbage (gradients 1000× too large, with their signs flipped). With the round's
aggregate a coordinate-wise median, the loss still falls; screening refuses the bad
worker's gradients and quarantines it.

pip install adamhub
python robust_rounds.py --base-url http://localhost:8000 [--rounds 60]
"""

from __future__ import annotations

import argparse
import threading

import numpy as np

import adamhub

WORKERS = 5
SIZE = 16


def worker(base_url: str | None, session_id: str, index: int, rounds: int) -> None:
    rng = np.random.default_rng(index)
    truth = np.linspace(-1, 1, SIZE)
    name = "bad-worker" if index == WORKERS - 1 else f"worker-{index}"
    with adamhub.Client(base_url, worker=name) as client:
        session = client.session(session_id)
        params = session.params()
        for _ in range(rounds):
            x = rng.normal(size=(32, SIZE))
            gradient = 2 * x.T @ (x @ params - x @ truth) / len(x)
            if name == "bad-worker":
                gradient = -1000 * gradient
            try:
                params = session.step(gradient.astype(np.float32))
            except (adamhub.OutlierGradientError, adamhub.WorkerQuarantinedError):
                session.params(min_step=session.t + 1, wait_seconds=5)
                params = session.params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()

    truth = np.linspace(-1, 1, SIZE)
    with adamhub.Client(args.base_url) as client:
        session = client.create_session(
            size=SIZE,
            optimizer={"lr": 0.05},
            name="robust-rounds",
            # The median of the workers' gradients; a round closes with all five, or
            # with four 0.3 s after its first contribution (once the bad worker is
            # quarantined).
            rounds={"contributions": WORKERS, "aggregate": "median", "timeout_seconds": 0.3,
                    "min_contributions": WORKERS - 1},
            screen={"max_norm_ratio": 10, "window": 8, "quarantine_after": 3,
                    "quarantine_seconds": 3600},
        )  # fmt: skip
        start = float(np.mean((session.params() - truth) ** 2))
        threads = [
            threading.Thread(target=worker, args=(args.base_url, session.id, i, args.rounds))
            for i in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        end = float(np.mean((session.params() - truth) ** 2))
        screening = session.screening()
        print(f"rounds: {session.t}; error {start:.4f} -> {end:.6f}")
        refused, held = len(screening["refusals"]), sorted(screening["quarantined"])
        print(f"refused: {refused}; quarantined: {held}")
        session.delete()


if __name__ == "__main__":
    main()
