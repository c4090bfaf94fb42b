"""Mixed precision with RemoteAdamW: torch.autocast and torch.amp.GradScaler work as with
torch's own AdamW. A step whose scaled gradients overflow is skipped by the scaler and
never sent; the scale is halved and training goes on. Checked against torch.optim.AdamW.

pip install 'adamhub[torch]'
python amp_gradscaler.py --base-url http://localhost:8000 [--steps 40]
"""

from __future__ import annotations

import argparse

import torch

import adamhub
from adamhub.torch import RemoteAdamW


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> int:
    """Train with autocast and a GradScaler; the steps the scaler skipped."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10)
    generator = torch.Generator().manual_seed(3)
    skipped = 0
    for step in range(steps):
        x = torch.randn(64, 8, generator=generator)
        y = torch.sin(x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(net(x).float(), y)
        if step in (5, 23):
            loss = loss * float("inf")  # an overflowing batch, as fp16 training sees
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < scale
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f} scale {scaler.get_scale():g}")
    return skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    local, remote = model(), model()
    train(local, torch.optim.AdamW(local.parameters(), lr=1e-2), args.steps)
    with adamhub.Client(args.base_url) as client:
        optimizer = RemoteAdamW(remote.parameters(), client=client, lr=1e-2)
        skipped = train(remote, optimizer, args.steps)
        pairs = zip(remote.parameters(), local.parameters(), strict=True)
        worst = max(float((p - q).abs().max().detach()) for p, q in pairs)
        print(f"{skipped} steps skipped by the scaler; session t={optimizer.session.t}")
        print(f"max |θ − θ_torch| = {worst:.2e}")
        optimizer.session.delete()


if __name__ == "__main__":
    main()
