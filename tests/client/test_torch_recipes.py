"""Training recipes with RemoteAdam as torch runs them: resuming in torch's order,
mixed precision with GradScaler."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

import adamhub

pytest.importorskip("torch", reason="RemoteAdam needs torch (adamhub[torch])")

import torch

from adamhub.torch import RemoteAdam, RemoteAdamW


def mlp(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(32, 8, generator=generator)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def deviation(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float(((p - q).abs() / q.abs().clamp(min=1.0)).max().detach())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_five_resumes_in_torchs_order_leave_one_session(service_url: str) -> None:
    """Train, save, and resume five times as torch documents it (a new model and
    optimizer, then load_state_dict): one session the whole way, keeping its name and
    tags, and the same parameters as torch's AdamW resumed the same way."""
    tag = f"resume-{uuid.uuid4().hex[:8]}"
    with adamhub.Client(service_url) as client:
        local = mlp(0)
        local_opt = torch.optim.AdamW(local.parameters(), lr=0.01)
        saved_model, saved_opt = mlp(0).state_dict(), None
        run_name = "resumed-run"
        for resume in range(6):
            model = mlp(0)
            model.load_state_dict(saved_model)
            optimizer = RemoteAdamW(
                model.parameters(), client=client, lr=0.01, name=run_name, tags=[tag]
            )
            if saved_opt is not None:
                optimizer.load_state_dict(saved_opt)
            for step in range(resume * 5, resume * 5 + 5):
                for net, opt in ((model, optimizer), (local, local_opt)):
                    x, y = batch(step)
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(net(x), y).backward()  # type: ignore[no-untyped-call, unused-ignore]
                    opt.step()
            saved_model, saved_opt = model.state_dict(), optimizer.state_dict()
        sessions = client.list_sessions(tag=tag)
        assert [s.id for s in sessions] == [optimizer.session.id]
        assert (sessions[0].name, sessions[0].tags, sessions[0].t) == (run_name, [tag], 30)
        assert deviation(model, local) <= 1e-5


def test_a_plain_torch_state_resumes_into_one_new_session(service_url: str) -> None:
    tag = f"from-torch-{uuid.uuid4().hex[:8]}"
    local = mlp(1)
    local_opt = torch.optim.Adam(local.parameters(), lr=0.02)
    for step in range(4):
        x, y = batch(step)
        local_opt.zero_grad()
        torch.nn.functional.mse_loss(local(x), y).backward()  # type: ignore[no-untyped-call, unused-ignore]
        local_opt.step()
    with adamhub.Client(service_url) as client:
        model = mlp(1)
        model.load_state_dict(local.state_dict())
        optimizer = RemoteAdamW(
            model.parameters(), client=client, lr=0.02, weight_decay=0.0,
            decoupled_weight_decay=False, tags=[tag],
        )  # fmt: skip
        optimizer.load_state_dict(local_opt.state_dict())
        assert [s.id for s in client.list_sessions(tag=tag)] == [optimizer.session.id]
        assert optimizer.session.t == 4


def test_grad_scaler_with_skipped_steps_matches_torch_and_sends_nothing_for_them(
    service_url: str,
) -> None:
    """Mixed precision as torch.amp does it on CPU (bfloat16 autocast, a GradScaler that
    grows its scale every 5 steps): three steps whose loss overflows are skipped, the
    scale halved, as torch's own AdamW sees them."""
    local, remote = mlp(2), mlp(2)
    local_opt = torch.optim.AdamW(local.parameters(), lr=0.01)
    with adamhub.Client(service_url) as client:
        remote_opt = RemoteAdamW(remote.parameters(), client=client, lr=0.01)
        scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5) for _ in "ab"]
        for step in range(40):
            scales = []
            for net, opt, scaler in (
                (local, local_opt, scalers[0]),
                (remote, remote_opt, scalers[1]),
            ):
                x, y = batch(step)
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = torch.nn.functional.mse_loss(net(x).float(), y)
                if step in (3, 17, 29):
                    loss = loss * float("inf")
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call, unused-ignore]
                scaler.step(opt)
                scales.append(scaler.get_scale())
                scaler.update()
            assert scales[0] == scales[1]
        assert scalers[1].get_scale() < 2.0**16 * 2 ** (40 // 5)  # it was halved
        # No request for a skipped step: the session's t counts the 37 applied ones.
        assert remote_opt.session.t == 37
        assert len(remote_opt.session.history()) == 37
        assert deviation(remote, local) <= 1e-5


class Experts(torch.nn.Module):
    """A shared layer and two experts; each step uses one of them (a mixture of experts
    routed per batch), so the other has no gradient."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.shared = torch.nn.Linear(8, 16)
        self.experts = torch.nn.ModuleList([torch.nn.Linear(16, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return self.experts[expert](torch.tanh(self.shared(x)))  # type: ignore[no-any-return]


def moe_run(model: Experts, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        optimizer.zero_grad(set_to_none=True)
        expert = 1 if step % 3 == 2 else 0
        torch.nn.functional.mse_loss(model(x, expert), y).backward()  # type: ignore[no-untyped-call, unused-ignore]
        optimizer.step()


@pytest.mark.parametrize("decoupled", [False, True])
def test_modules_unused_at_some_steps_train_as_torch_does(
    service_url: str, decoupled: bool
) -> None:
    local, remote = Experts(3), Experts(3)
    options: dict[str, Any] = {"lr": 0.01, "weight_decay": 0.01}
    local_opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(
        local.parameters(), **options
    )
    with adamhub.Client(service_url) as client:
        remote_opt = (RemoteAdamW if decoupled else RemoteAdam)(
            remote.parameters(), client=client, **options
        )
        moe_run(local, local_opt, range(30))
        moe_run(remote, remote_opt, range(30))
        assert remote_opt.session.t == 30
        assert deviation(remote, local) <= 1e-5
        # Per-parameter step counts, in torch's format both ways.
        ours = remote_opt.state_dict()["state"]
        theirs = local_opt.state_dict()["state"]
        assert [float(ours[i]["step"]) for i in ours] == [float(theirs[i]["step"]) for i in theirs]
        assert {float(theirs[i]["step"]) for i in theirs} == {30.0, 20.0, 10.0}
        # torch's state into a new session, and on from there in both.
        moved = Experts(9)
        moved.load_state_dict(local.state_dict())
        resumed = (RemoteAdamW if decoupled else RemoteAdam)(
            moved.parameters(), client=client, **options
        )
        resumed.load_state_dict(local_opt.state_dict())
        moe_run(moved, resumed, range(30, 45))
        moe_run(local, local_opt, range(30, 45))
        assert deviation(moved, local) <= 1e-5


def test_a_partial_step_uploads_only_the_gradients_it_has(service_url: str) -> None:
    sizes: list[int] = []
    http = httpx.Client(
        timeout=60,
        event_hooks={
            "request": [
                lambda r: (
                    sizes.append(int(r.headers.get("content-length", 0)))
                    if r.url.path.endswith("/step")
                    else None
                )
            ]
        },
    )
    model = Experts(4)
    with adamhub.Client(service_url, http_client=http) as client:
        optimizer = RemoteAdam(model.parameters(), client=client, lr=0.01)
        moe_run(model, optimizer, range(3))  # experts 0, 0, then 1
    http.close()
    total = sum(p.numel() for p in model.parameters())
    one_expert = total - 17  # the other expert: 16 weights and a bias
    assert sizes == [one_expert * 4] * 3


def test_progressive_unfreezing_matches_torch_and_other_workers_follow(
    service_url: str,
) -> None:
    """A head trained alone for 10 steps, then the body added as a param group with its
    own lr (as torch's add_param_group): the parameters match torch's AdamW; a second
    worker on the session is told to follow, and does."""

    def model(seed: int) -> torch.nn.Sequential:
        net = mlp(seed)
        for p in net[0].parameters():
            p.requires_grad_(False)
        return net

    def train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            x, y = batch(step)
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()  # type: ignore[no-untyped-call, unused-ignore]
            opt.step()

    def unfreeze(net: torch.nn.Sequential, opt: torch.optim.Optimizer) -> None:
        for p in net[0].parameters():
            p.requires_grad_(True)
        opt.add_param_group({"params": list(net[0].parameters()), "lr": 3e-3})

    local, remote, other = model(5), model(5), model(5)
    local_opt = torch.optim.AdamW(local[2].parameters(), lr=1e-2)
    train(local, local_opt, range(10))
    unfreeze(local, local_opt)
    train(local, local_opt, range(10, 25))
    with adamhub.Client(service_url) as client:
        remote_opt = RemoteAdamW(remote[2].parameters(), client=client, lr=1e-2)
        train(remote, remote_opt, range(10))
        # A second worker attached before the group is added.
        follower = RemoteAdamW(
            other[2].parameters(), client=client, lr=1e-2, session=remote_opt.session.id
        )
        unfreeze(remote, remote_opt)
        train(remote, remote_opt, range(10, 25))
        assert remote_opt.session.size == sum(p.numel() for p in remote.parameters())
        assert remote_opt.session.t == 25
        assert deviation(remote, local) <= 1e-5
        # The follower is told how to follow, and follows.
        with pytest.raises(RuntimeError, match="add_param_group"):
            train(other, follower, range(25, 26))
        unfreeze(other, follower)
        assert deviation(other, remote) == 0.0  # the session's values
        train(other, follower, range(25, 27))
        assert follower.session.t == 27


def test_remote_adam_skips_or_raises_on_an_outlier(service_url: str) -> None:
    screen = {"max_norm_ratio": 2, "window": 3, "quarantine_after": 100, "quarantine_seconds": 60}
    with adamhub.Client(service_url) as client:
        net = mlp(6)
        optimizer = RemoteAdam(net.parameters(), client=client, lr=1e-3, on_outlier="skip")
        session = client.create_session(
            optimizer._flat(p.detach() for p in net.parameters()),
            segments=[p.numel() for p in net.parameters()],
            screen=screen,
        )
        optimizer.session = session

        def once(scale: float) -> None:
            x, y = batch(0)
            optimizer.zero_grad()
            (scale * torch.nn.functional.mse_loss(net(x), y)).backward()  # type: ignore[no-untyped-call, unused-ignore]
            optimizer.step()

        for _ in range(3):
            once(1.0)
        once(1e6)
        assert (optimizer.outlier_steps, optimizer.session.t) == (1, 3)
        optimizer.on_outlier = "raise"
        with pytest.raises(adamhub.OutlierGradientError):
            once(1e6)
        assert optimizer.session.t == 3
