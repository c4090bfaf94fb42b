"""RemoteAdam against torch.optim.Adam/AdamW, through a real service."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import adamhub

pytest.importorskip("torch", reason="RemoteAdam needs torch (adamhub[torch])")

import torch

from adamhub.torch import RemoteAdam


def mlp(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x @ torch.linspace(-1, 1, 8)).unsqueeze(1)
    return x, y


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    x, y = data()
    losses = []
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        optimizer.step()
        losses.append(loss.item())
    return losses


def relative_deviation(a: torch.nn.Module, b: torch.nn.Module) -> float:
    worst = 0.0
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        worst = max(worst, float(((p - q).abs() / q.abs().clamp(min=1.0)).max().detach()))
    return worst


@pytest.mark.parametrize(
    "options",
    [
        {"lr": 1e-2},
        {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True, "amsgrad": True},
    ],
)
def test_remote_adam_trains_like_torch_adam(service_url: str, options: dict[str, Any]) -> None:
    local, remote = mlp(0), mlp(0)
    local_options = dict(options)
    kind = (
        torch.optim.AdamW
        if local_options.pop("decoupled_weight_decay", False)
        else torch.optim.Adam
    )
    local_losses = train(local, kind(local.parameters(), **local_options), 150)
    with adamhub.Client(service_url) as client:
        optimizer = RemoteAdam(remote.parameters(), client=client, **options)
        remote_losses = train(remote, optimizer, 150)
        assert optimizer.session.t == 150
    deviation = relative_deviation(remote, local)
    assert deviation <= 1e-4, f"worst relative deviation {deviation:.3g}"
    assert remote_losses[-1] < remote_losses[0] / 2
    assert abs(remote_losses[-1] - local_losses[-1]) <= 1e-4 * max(1.0, local_losses[-1])


def test_scheduler_changes_reach_the_session_and_attaching_resumes(service_url: str) -> None:
    local, remote = mlp(1), mlp(1)
    local_opt = torch.optim.Adam(local.parameters(), lr=0.05)
    local_sched = torch.optim.lr_scheduler.StepLR(local_opt, step_size=1, gamma=0.5)
    with adamhub.Client(service_url) as client:
        remote_opt = RemoteAdam(remote.parameters(), client=client, lr=0.05)
        remote_sched = torch.optim.lr_scheduler.StepLR(remote_opt, step_size=1, gamma=0.5)
        for _ in range(3):
            train(local, local_opt, 10)
            local_sched.step()
            train(remote, remote_opt, 10)
            remote_sched.step()
        # Each lr went with the steps after it, as the session's group setting.
        groups = client.session(remote_opt.session.id).param_groups
        assert groups is not None and groups[0]["lr"] == 0.05 * 0.5**2
        assert relative_deviation(remote, local) <= 1e-4

        # A new worker attaches to the same session: it gets the session's parameters.
        fresh = mlp(99)
        attached = RemoteAdam(fresh.parameters(), client=client, session=remote_opt.session.id)
        assert relative_deviation(fresh, remote) == 0.0
        assert attached.session.t == 30


def test_missing_gradients_step_the_others_and_sparse_ones_are_refused(
    service_url: str,
) -> None:
    model = mlp(2)
    with adamhub.Client(service_url) as client:
        optimizer = RemoteAdam(model.parameters(), client=client)
        optimizer.step()  # no gradient at all: torch steps nothing, and so does this
        assert optimizer._session is None  # nor made a session
        first = model[0]
        assert isinstance(first, torch.nn.Linear)
        first.weight.grad = torch.zeros_like(first.weight)
        untouched = [p.detach().clone() for p in model.parameters()][1:]
        optimizer.step()  # only the first weight has a gradient: only it steps
        assert optimizer.session.t == 1
        assert all(
            torch.equal(p, q) for p, q in zip(list(model.parameters())[1:], untouched, strict=True)
        )
        embedding = torch.nn.Embedding(10, 3, sparse=True)
        sparse_opt = RemoteAdam(embedding.parameters(), client=client)
        embedding(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match="sparse gradients"):
            sparse_opt.step()
        assert sparse_opt.session.t == 0


def test_two_workers_in_rounds_train_like_one_with_the_whole_batch(service_url: str) -> None:
    """DDP semantics: two RemoteAdam workers, each with half of every batch, in rounds
    of two; their parameters after 50 steps equal one local Adam's on whole batches."""
    x, y = data()
    local = mlp(3)
    local_optimizer = torch.optim.Adam(local.parameters(), lr=1e-2)
    for step in range(50):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        local_optimizer.zero_grad()
        torch.nn.functional.mse_loss(local(x[batch]), y[batch]).backward()  # type: ignore[no-untyped-call, unused-ignore]
        local_optimizer.step()

    client = adamhub.Client(service_url)
    first = mlp(3)
    lead = RemoteAdam(first.parameters(), lr=1e-2, client=client, rounds=2)
    second = mlp(99)  # attaching copies the session's parameters in
    follower = RemoteAdam(second.parameters(), client=client, session=lead.session.id)
    workers = [(first, lead, 0), (second, follower, 1)]
    failures: list[BaseException] = []

    def work(model: torch.nn.Module, optimizer: RemoteAdam, half: int) -> None:
        try:
            for step in range(50):
                start = (step * 32) % 256 + 16 * half
                optimizer.zero_grad()
                # The mean of two half-batch means is the whole batch's mean.
                loss = torch.nn.functional.mse_loss(
                    model(x[start : start + 16]), y[start : start + 16]
                )
                loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
                optimizer.step(samples=16)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=worker) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert lead.session.t == follower.session.t == 50
    assert lead.stale_steps == follower.stale_steps == 0
    deviation = relative_deviation(first, local)
    print(f"two half-batch workers vs one whole-batch Adam after 50 rounds: {deviation:.2e}")
    assert deviation <= 1e-5
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)  # every worker holds the same parameters
    client.close()


def test_a_stale_step_in_rounds_is_skipped_and_the_newest_parameters_pulled(
    service_url: str,
) -> None:
    client = adamhub.Client(service_url)
    model = mlp(4)
    optimizer = RemoteAdam(model.parameters(), lr=1e-2, client=client, rounds={"contributions": 1})
    other = adamhub.Client(service_url).session(optimizer.session.id)
    other.step(np.ones(other.size, dtype=np.float32))  # the session moves on under it
    x, y = data()
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x[:8]), y[:8]).backward()  # type: ignore[no-untyped-call, unused-ignore]
    optimizer.step()
    assert optimizer.stale_steps == 1
    assert optimizer.session.t == 1
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert np.array_equal(flat, other.params())
    client.close()


def test_sessions_are_named_after_the_model_and_host_and_losses_recorded(
    service_url: str,
) -> None:
    import socket

    client = adamhub.Client(service_url)
    model = mlp(5)
    optimizer = RemoteAdam(model.parameters(), client=client, model=model, tags=["remote-tag"])
    assert optimizer.session.name == f"Sequential@{socket.gethostname()}"
    assert optimizer.session.tags == ["remote-tag"]
    assert [s.id for s in client.list_sessions(tag="remote-tag")] == [optimizer.session.id]
    unnamed = RemoteAdam(mlp(5).parameters(), client=client)
    assert unnamed.session.name is not None and unnamed.session.name.endswith(socket.gethostname())
    x, y = data()

    def closure() -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[:16]), y[:16])
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss.item()

    losses = [optimizer.step(closure) for _ in range(3)]
    history = optimizer.session.history()
    assert [point["loss"] for point in history] == pytest.approx(losses)
    client.close()
