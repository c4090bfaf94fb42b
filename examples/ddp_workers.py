"""Data-parallel training as DDP does it, with the optimizer in adamhub.

    pip install 'adamhub[torch]'
    python ddp_workers.py --base-url http://localhost:8000 [--workers 4] [--steps 100]

The session takes rounds of ``--workers`` contributions: every step is the mean of the
workers' gradients, each worker's ``optimizer.step()`` returns when its round closes,
and every worker then holds the same parameters. Each worker trains on its own shard
(as ``DistributedSampler`` gives it); nothing else changes in the training loop.
"""

from __future__ import annotations

import argparse
import hashlib

import torch
import torch.multiprocessing as mp

import adamhub
from adamhub.torch import RemoteAdam

BATCH = 32


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # only the starting point: workers attach to the session's
    return torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 4, generator=generator)
    return x, (x**2).sum(dim=1, keepdim=True)


def worker(
    rank: int,
    base_url: str | None,
    session_id: str,
    workers: int,
    steps: int,
    results: mp.Queue[tuple[int, str]],
) -> None:
    x, y = make_data()
    x, y = x[rank::workers], y[rank::workers]  # this worker's shard
    model = make_model()
    generator = torch.Generator().manual_seed(100 + rank)
    with adamhub.Client(base_url) as client:
        optimizer = RemoteAdam(model.parameters(), client=client, session=session_id)
        for step in range(1, steps + 1):
            batch = torch.randint(0, len(x), (BATCH,), generator=generator)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step(samples=BATCH)  # returns when every worker's gradient is in
            if rank == 0 and (step == 1 or step % 25 == 0):
                print(f"round {optimizer.session.t}: worker 0 batch loss {loss.item():.4f}")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    results.put((rank, hashlib.sha256(flat.numpy().tobytes()).hexdigest()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    model = make_model()
    with adamhub.Client(args.base_url) as client:
        # The session: the model's starting parameters, one step per round of all workers.
        optimizer = RemoteAdam(
            model.parameters(), client=client, lr=1e-2, rounds=args.workers, name="ddp-example"
        )
        session_id = optimizer.session.id
        print(f"session {session_id}: rounds of {args.workers} workers")
        results: mp.Queue[tuple[int, str]] = mp.get_context("spawn").Queue()
        mp.spawn(  # type: ignore[attr-defined]
            worker,
            args=(args.base_url, session_id, args.workers, args.steps, results),
            nprocs=args.workers,
        )
        finals = dict(results.get() for _ in range(args.workers))
        optimizer.pull()
    agree = len(set(finals.values())) == 1
    x, y = make_data()
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x), y).item()
    print(f"workers hold the same parameters: {agree}")
    gradients = args.workers * args.steps
    print(f"final loss {final:.4f} (t={optimizer.session.t} for {gradients} gradients)")


if __name__ == "__main__":
    main()
