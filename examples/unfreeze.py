"""Progressive unfreezing with RemoteAdamW: train the head alone, then add the body as a
new param group with its own learning rate (``optimizer.add_param_group``), as with
torch. The session grows by those parameters, their moments starting at zero. The run is
checked against torch.optim.AdamW.

pip install 'adamhub[torch]'
python unfreeze.py --base-url http://localhost:8000 [--steps 40]
"""

from __future__ import annotations

import argparse

import torch

import adamhub
from adamhub.torch import RemoteAdamW


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    for p in net[0].parameters():
        p.requires_grad_(False)  # the body starts frozen
    return net


def train(net: torch.nn.Sequential, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(2)
    for step in range(steps):
        if step == steps // 2:
            for p in net[0].parameters():
                p.requires_grad_(True)
            optimizer.add_param_group({"params": list(net[0].parameters()), "lr": 3e-3})
            print(f"step {step}: the body joins, with lr 3e-3")
        x = torch.randn(64, 8, generator=generator)
        y = torch.sin(x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    local, remote = model(), model()
    train(local, torch.optim.AdamW(local[2].parameters(), lr=1e-2), args.steps)
    with adamhub.Client(args.base_url) as client:
        optimizer = RemoteAdamW(remote[2].parameters(), client=client, lr=1e-2)
        train(remote, optimizer, args.steps)
        pairs = zip(remote.parameters(), local.parameters(), strict=True)
        worst = max(float((p - q).abs().max().detach()) for p, q in pairs)
        session = optimizer.session
        print(f"session {session.id}: {session.size} parameters, t={session.t}")
        print(f"max |θ − θ_torch| = {worst:.2e}")
        session.delete()


if __name__ == "__main__":
    main()
