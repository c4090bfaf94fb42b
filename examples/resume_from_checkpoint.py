"""Save a run's optimizer state to a file, and resume it from there — bit for bit.

pip install adamhub
python resume_from_checkpoint.py --base-url http://localhost:8000 [--steps 100]

A checkpoint is one safetensors file: θ, m, v and the settings at one step. Importing it
makes a new session that goes on exactly as the original would have.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import adamhub


def gradient(params: np.ndarray, step: int) -> np.ndarray:
    """The gradient of a least-squares fit on a fresh batch."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(64, params.size)).astype(np.float32)
    y = x @ np.arange(1, params.size + 1, dtype=np.float32)
    grad: np.ndarray = (2 * x.T @ (x @ params - y) / len(x)).astype(np.float32)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    half = args.steps // 2

    with adamhub.Client(args.base_url) as client:
        run = client.create_session(size=8, optimizer={"lr": 0.05}, name="run")
        params = run.params()
        for step in range(half):
            params = run.step(gradient(params, step))
        path = Path(tempfile.mkdtemp()) / "run.safetensors"
        run.save(path)
        print(f"saved t={run.t} to {path} ({path.stat().st_size} bytes)")

        resumed = client.import_session(path, name="resumed")
        print(f"resumed session {resumed.id} at t={resumed.t}")
        mine, theirs = params, params
        for step in range(half, args.steps):
            mine = run.step(gradient(mine, step))
            theirs = resumed.step(gradient(theirs, step))
        print(f"after {args.steps} steps the resumed run matches: {np.array_equal(mine, theirs)}")
        print(f"params ≈ {np.round(theirs, 2).tolist()}")
        for session in (run, resumed):
            session.delete()


if __name__ == "__main__":
    main()
