"""A PyTorch script ported by changing its optimizer's constructor: the same results,
one request per step; state dicts both ways; bfloat16 models; frozen parameters."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import httpx
import pytest

import adamhub

pytest.importorskip("torch", reason="RemoteAdam needs torch (adamhub[torch])")

import torch

from adamhub.torch import RemoteAdam, RemoteAdamW

STEPS = 200


def model_of(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 1)
    )
    return model.to(dtype)


def groups_of(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weights, none on biases and norms (the usual AdamW split)."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
    return [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(step: int) -> float:
    warmup, total = 20, STEPS
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(32, 8, generator=generator)
    return x.to(dtype), torch.sin(x.sum(dim=1, keepdim=True)).to(dtype)


def run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> float:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore")
        for _ in range(steps.start):
            scheduler.step()  # a resumed run resumes its schedule too
    loss = torch.tensor(0.0)
    for step in steps:
        x, y = batch(step, next(model.parameters()).dtype)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return float(loss.detach())


def deviation(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float(((p - q).abs() / q.abs().clamp(min=1.0)).max().detach())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_the_ported_script_matches_torch_with_one_request_per_step(service_url: str) -> None:
    local, remote = model_of(0), model_of(0)
    run(local, torch.optim.AdamW(groups_of(local), lr=3e-3), range(STEPS))
    requests: list[str] = []
    http = httpx.Client(
        timeout=60, event_hooks={"request": [lambda r: requests.append(r.url.path)]}
    )
    with adamhub.Client(service_url, http_client=http) as client:
        optimizer = RemoteAdamW(groups_of(remote), lr=3e-3, client=client, foreach=None)
        requests.clear()
        run(remote, optimizer, range(STEPS))
        # The session is made at the first step; then one request per step.
        assert requests[0] == "/v1/sessions"
        assert len(requests) == 1 + STEPS
        assert all(path.endswith("/step") for path in requests[1:])
        assert optimizer.session.t == STEPS
    http.close()
    worst = deviation(remote, local)
    print(f"largest relative deviation from torch.optim.AdamW after {STEPS} steps: {worst:.2e}")
    assert worst <= 1e-5


def test_state_dicts_go_both_ways_and_continue_as_never_stopping(service_url: str) -> None:
    never_stopped = model_of(1)
    run(never_stopped, torch.optim.AdamW(groups_of(never_stopped), lr=3e-3), range(100))
    with adamhub.Client(service_url) as client:
        # Local torch for 50 steps, then adamhub from its state dict.
        local = model_of(1)
        local_opt = torch.optim.AdamW(groups_of(local), lr=3e-3)
        run(local, local_opt, range(50))
        moved = model_of(7)
        moved.load_state_dict(local.state_dict())
        remote_opt = RemoteAdamW(groups_of(moved), lr=3e-3, client=client)
        remote_opt.load_state_dict(local_opt.state_dict())
        assert remote_opt.session.t == 50
        run(moved, remote_opt, range(50, 75))
        # adamhub's state dict, in torch's format, back to local torch.
        saved = remote_opt.state_dict()
        mark = saved["adamhub"]
        assert (mark["session"], mark["t"]) == (remote_opt.session.id, 75)
        assert (mark["name"], mark["tags"]) == (remote_opt.session.name, [])
        assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
        back = model_of(8)
        back.load_state_dict(moved.state_dict())
        back_opt = torch.optim.AdamW(groups_of(back), lr=3e-3)
        # torch counts steps in the state's own tensors: give it a copy.
        back_opt.load_state_dict(copy.deepcopy({k: v for k, v in saved.items() if k != "adamhub"}))
        run(back, back_opt, range(75, 100))
        # The session went on elsewhere: loading the older state warns and forks from it.
        run(moved, remote_opt, range(75, 80))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            remote_opt.load_state_dict(saved)
        assert any("moved on" in str(w.message) for w in caught)
        assert remote_opt.session.t == 75
    assert deviation(back, never_stopped) <= 1e-5


def test_a_bfloat16_model_trains_on_float32_master_weights(service_url: str) -> None:
    model = model_of(2, torch.bfloat16)
    with adamhub.Client(service_url) as client:
        optimizer = RemoteAdam(model.parameters(), lr=1e-2, client=client)
        assert optimizer.session.dtype == "float32"
        first = run(model, optimizer, range(0, 5))
        last = run(model, optimizer, range(5, 60))
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        master = optimizer.session.params()
        flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
        assert torch.equal(torch.from_numpy(master).to(torch.bfloat16).float(), flat)
    assert last < first


def test_frozen_parameters_stay_as_torch_leaves_them(service_url: str) -> None:
    local, remote = model_of(3), model_of(3)
    for model in (local, remote):
        model[0].weight.requires_grad_(False)
    run(local, torch.optim.Adam(local.parameters(), lr=1e-2), range(30))
    with adamhub.Client(service_url) as client:
        optimizer = RemoteAdam(remote.parameters(), lr=1e-2, client=client)
        run(remote, optimizer, range(30))
        frozen = model_of(3)[0]
        assert isinstance(frozen, torch.nn.Linear) and isinstance(remote[0], torch.nn.Linear)
        assert torch.equal(remote[0].weight, frozen.weight)
        assert optimizer.session.size == sum(
            p.numel() for p in remote.parameters() if p.requires_grad
        )
    assert deviation(remote, local) <= 1e-5


def test_non_finite_gradients_raise_or_are_skipped(service_url: str) -> None:
    model = model_of(4)
    with adamhub.Client(service_url) as client:
        for mode in ("raise", "skip"):
            optimizer = RemoteAdam(model.parameters(), client=client, on_nonfinite=mode)
            for p in model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            if mode == "raise":
                with pytest.raises(FloatingPointError, match="not finite"):
                    optimizer.step()
            else:
                optimizer.step()
                assert optimizer.skipped_steps == 1
            assert optimizer.session.t == 0
