"""Move a PyTorch run from local torch to adamhub and back, with its optimizer state.

pip install 'adamhub[torch]'
python torch_move_run.py --base-url http://localhost:8000

30 steps of torch.optim.AdamW here, 30 on the service with RemoteAdamW (loaded from the
local optimizer's state dict), 30 here again (from RemoteAdamW's state dict, which is in
torch's format) — and the result is the run that never moved, to float rounding.
"""

from __future__ import annotations

import argparse
import copy

import torch

import adamhub
from adamhub.torch import RemoteAdamW


def model_of(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> float:
    loss = torch.tensor(0.0)
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(64, 4, generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), (x**2).sum(dim=1, keepdim=True))
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        optimizer.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-url", default=None, help="default: $ADAMHUB_BASE_URL or :8000")
    args = parser.parse_args()

    never_moved = model_of(0)
    train(never_moved, torch.optim.AdamW(never_moved.parameters(), lr=1e-2), range(90))

    model = model_of(0)
    local = torch.optim.AdamW(model.parameters(), lr=1e-2)
    print(f"local torch:  loss {train(model, local, range(0, 30)):.4f}")
    with adamhub.Client(args.base_url) as client:
        remote = RemoteAdamW(model.parameters(), lr=1e-2, client=client)
        remote.load_state_dict(local.state_dict())  # was: local.load_state_dict(...)
        print(f"adamhub:      loss {train(model, remote, range(30, 60)):.4f} "
              f"(session {remote.session.id}, t={remote.session.t})")  # fmt: skip
        state = remote.state_dict()
        remote.session.delete()
    again = torch.optim.AdamW(model.parameters(), lr=1e-2)
    again.load_state_dict(copy.deepcopy({k: v for k, v in state.items() if k != "adamhub"}))
    print(f"local again:  loss {train(model, again, range(60, 90)):.4f}")
    pairs = zip(model.parameters(), never_moved.parameters(), strict=True)
    worst = max(float((p - q).abs().max()) for p, q in pairs)
    print(f"largest difference from the run that never moved: {worst:.2e}")


if __name__ == "__main__":
    main()
