"""A mixture of experts with RemoteAdam: each batch goes to one expert, so the others
have no gradient at that step, and torch leaves them (and their Adam state) untouched;
so does the session, stepping only the tensors with gradients (a partial step) and
uploading only theirs. The run is checked against torch.optim.Adam.

pip install 'adamhub[torch]'
python moe_partial.py --base-url http://localhost:8000 [--steps 60]
"""

from __future__ import annotations

import argparse

import httpx
import torch

import adamhub
from adamhub.torch import RemoteAdam

EXPERTS = 4


class Experts(torch.nn.Module):
    """A shared encoder, and one head per expert; a batch is routed to one of them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(64, 1) for _ in range(EXPERTS))

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        head: torch.nn.Module = self.heads[expert]
        return head(self.encoder(x))  # type: ignore[no-any-return]


def train(model: Experts, optimizer: torch.optim.Optimizer, steps: int) -> float:
    generator = torch.Generator().manual_seed(1)
    loss = torch.tensor(0.0)
    for step in range(steps):
        expert = step % EXPERTS if step % 5 else 0  # expert 0 is busier
        x = torch.randn(64, 8, generator=generator)
        y = torch.sin(x[:, :1] * (expert + 1))
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x, expert), y)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step}: expert {expert} loss {loss.item():.4f}")
    return float(loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    local, remote = Experts(), Experts()
    train(local, torch.optim.Adam(local.parameters(), lr=1e-2), args.steps)
    uploaded: list[int] = []  # the bytes of each step's body

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/step"):
            uploaded.append(int(request.headers["content-length"]))

    http = httpx.Client(timeout=60, event_hooks={"request": [count]})
    with adamhub.Client(args.base_url, http_client=http) as client:
        optimizer = RemoteAdam(remote.parameters(), client=client, lr=1e-2)  # was torch's
        train(remote, optimizer, args.steps)
        steps = sorted({int(s["step"]) for s in optimizer.state_dict()["state"].values()})
        pairs = zip(remote.parameters(), local.parameters(), strict=True)
        worst = max(float((p - q).abs().max().detach()) for p, q in pairs)
        print(f"per-tensor step counts: {steps} (session t={optimizer.session.t})")
        print(f"max |θ − θ_torch| = {worst:.2e}")
        whole = 4 * sum(p.numel() for p in remote.parameters()) * len(uploaded)
        saved = 100 * (1 - sum(uploaded) / whole)
        print(
            f"uploaded {sum(uploaded)} bytes in {len(uploaded)} steps; whole steps would be "
            f"{whole} ({saved:.1f}% less)"
        )
        optimizer.session.delete()
    http.close()


if __name__ == "__main__":
    main()
