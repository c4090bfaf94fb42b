"""A PyTorch training loop with RemoteAdam: the optimizer line is the only change.

pip install 'adamhub[torch]'
python torch_worker.py --base-url http://localhost:8000 [--steps 300]
"""

from __future__ import annotations

import argparse

import torch

import adamhub
from adamhub.torch import RemoteAdam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(1024, 4)
    y = (x**2).sum(dim=1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    with adamhub.Client(args.base_url) as client:
        optimizer = RemoteAdam(model.parameters(), client=client, lr=1e-2)  # was torch.optim.Adam
        for step in range(1, args.steps + 1):
            batch = torch.randint(0, len(x), (64,))
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            if step % 100 == 0 or step == 1:
                print(f"step {step}: loss {loss.item():.4f}")
        with torch.no_grad():
            final = torch.nn.functional.mse_loss(model(x), y).item()
        print(f"final loss {final:.4f} (session {optimizer.session.id}, t={optimizer.session.t})")


if __name__ == "__main__":
    main()
