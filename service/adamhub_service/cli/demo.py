"""``adamhub-service demo``: several workers train one small model through the service.

The service runs as a real process with its embedded store in a temporary folder. Each
worker process owns a shard of a synthetic regression data set (made here, nothing is
downloaded), computes the gradient of a two-layer tanh network with numpy, and steps the
shared session through the SDK. The loss of the session's parameters on the whole data
set is printed falling; then everything stops.

With ``--sync`` the session takes rounds: each step is the mean of the workers'
gradients, as DDP computes it; the loss is printed per round, and the result is checked
against one worker that takes all the workers' batches as one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import adamhub
from adamhub_service.cli.processes import ServiceProcess
from adamhub_service.optim import AdamConfig, adam_step, init_state

INPUTS, HIDDEN = 8, 32
SHAPES = {"w1": (INPUTS, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, 1), "b2": (1,)}
SIZE = sum(int(np.prod(shape)) for shape in SHAPES.values())
BATCH = 64
BAR_WIDTH = 24
LR = 0.003

Array = npt.NDArray[np.float64]


def dataset(rows: int = 4096) -> tuple[Array, Array]:
    """Synthetic data: y = sin(x·w) + noise, the same in every process."""
    rng = np.random.default_rng(2026)
    x = rng.normal(size=(rows, INPUTS))
    y = np.sin(x @ np.linspace(-1.0, 1.0, INPUTS))[:, None] + 0.05 * rng.normal(size=(rows, 1))
    return x, y


def unpack(params: npt.NDArray[np.floating]) -> dict[str, Array]:
    """The flat parameter vector as the network's weights."""
    weights, offset = {}, 0
    for name, shape in SHAPES.items():
        count = int(np.prod(shape))
        weights[name] = params[offset : offset + count].astype(np.float64).reshape(shape)
        offset += count
    return weights


def loss_and_gradient(params: npt.NDArray[np.floating], x: Array, y: Array) -> tuple[float, Array]:
    """Mean squared error of the network and its gradient, flat like ``params``."""
    w = unpack(params)
    hidden = np.tanh(x @ w["w1"] + w["b1"])
    error = hidden @ w["w2"] + w["b2"] - y
    d_out = 2.0 * error / len(x)
    d_hidden = (d_out @ w["w2"].T) * (1.0 - hidden**2)
    grads = {
        "w1": x.T @ d_hidden,
        "b1": d_hidden.sum(axis=0),
        "w2": hidden.T @ d_out,
        "b2": d_out.sum(axis=0),
    }
    return float(np.mean(error**2)), np.concatenate([grads[name].reshape(-1) for name in SHAPES])


def worker(
    base_url: str,
    session_id: str,
    index: int,
    workers: int,
    steps: int,
    updates: multiprocessing.Queue[tuple[int, int]],
) -> None:
    """One training worker: its own shard of the data, the shared session."""
    x, y = dataset()
    x, y = x[index::workers], y[index::workers]
    rng = np.random.default_rng(index)
    with adamhub.Client(base_url, worker=f"worker-{index}") as client:
        session = client.session(session_id)
        params = session.params()
        for step in range(1, steps + 1):
            rows = rng.integers(0, len(x), BATCH)
            loss, gradient = loss_and_gradient(params, x[rows], y[rows])
            params = session.step(gradient, loss=loss)  # the loss goes in the history
            updates.put((index, step))


@dataclass
class Progress:
    """Per-worker progress bars, redrawn in place on a terminal, else a line every 10%.

    The loss shown is that of the session's current parameters on the whole data set,
    measured every 10% of the steps, so that it reads as progress (a worker's batch
    loss jumps from batch to batch).
    """

    workers: int
    steps: int
    interactive: bool

    def __post_init__(self) -> None:
        self.done = [0] * self.workers
        self.loss: float | None = None
        self.tenths_measured = 0
        self._drawn = False

    @property
    def tenths(self) -> int:
        """Tenths of all steps done."""
        return 10 * sum(self.done) // (self.workers * self.steps)

    def step(self, index: int, step: int) -> None:
        """Record a worker's step and redraw."""
        self.done[index] = step
        if self.interactive:
            self._draw()

    def measured(self, loss: float) -> None:
        """Record the whole-data loss at the current tenth and show it."""
        self.tenths_measured, self.loss = self.tenths, loss
        if self.interactive:
            self._draw()
        else:
            print(f"  {10 * self.tenths:>3}%  steps {sum(self.done):>5}  loss {loss:.4f}")

    def _draw(self) -> None:
        if self._drawn:
            sys.stdout.write(f"\x1b[{self.workers + 1}F")
        for index in range(self.workers):
            filled = BAR_WIDTH * self.done[index] // self.steps
            bar = "█" * filled + "·" * (BAR_WIDTH - filled)
            sys.stdout.write(f"  worker {index} {bar} {self.done[index]:>4}/{self.steps}\x1b[K\n")
        shown = "…" if self.loss is None else f"{self.loss:.4f}"
        sys.stdout.write(f"  loss on all examples {shown}\x1b[K\n")
        sys.stdout.flush()
        self._drawn = True


@contextlib.contextmanager
def temporary_service() -> Iterator[str]:
    """A service with its embedded store in a temporary folder; its URL."""
    folder = Path(tempfile.mkdtemp(prefix="adamhub-demo-"))
    service = ServiceProcess(
        "--data-dir", str(folder / "data"), "--log-level", "warning",
        log_path=folder / "service.log",
    ).start()  # fmt: skip
    print(f"service at {service.base_url} (embedded store in {folder / 'data'})")
    try:
        yield service.base_url
    finally:
        service.stop()
        shutil.rmtree(folder, ignore_errors=True)


def start_workers(
    target: Callable[..., None], base_url: str, session_id: str, workers: int, count: int
) -> tuple[list[BaseProcess], multiprocessing.Queue[Any]]:
    """``workers`` processes running ``target(base_url, session_id, index, workers,
    count, updates)``, started, and the queue they report on."""
    context = multiprocessing.get_context("spawn")
    updates: multiprocessing.Queue[Any] = context.Queue()
    processes: list[BaseProcess] = [
        context.Process(target=target, args=(base_url, session_id, i, workers, count, updates))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    return processes, updates


def start_params() -> npt.NDArray[np.float32]:
    """The parameters every run starts from."""
    return np.random.default_rng(0).normal(0.0, 0.3, SIZE).astype(np.float32)


def run(workers: int = 4, steps: int = 150) -> int:
    """Run the demo; return the exit status (0 when the loss fell and no step was lost)."""
    print(f"adamhub demo: {workers} workers × {steps} steps on one session ({SIZE} parameters)")
    with temporary_service() as base_url:
        x, y = dataset()
        start = start_params()
        start_loss, _ = loss_and_gradient(start, x, y)
        with adamhub.Client(base_url) as client:
            session = client.create_session(start, optimizer={"lr": LR}, name="demo")
            processes, updates = start_workers(worker, base_url, session.id, workers, steps)
            began = time.monotonic()
            progress = Progress(workers, steps, interactive=sys.stdout.isatty())
            progress.measured(start_loss)
            while sum(progress.done) < workers * steps:
                try:
                    progress.step(*updates.get(timeout=60))
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        print("a worker failed")
                        return 1
                if progress.tenths > progress.tenths_measured:
                    progress.measured(loss_and_gradient(session.params(), x, y)[0])
            elapsed = time.monotonic() - began
            for process in processes:
                process.join(30)
            end_params = session.params()
        end_loss, _ = loss_and_gradient(end_params, x, y)
        total = workers * steps
        rate = total / elapsed
        print(
            f"\nsteps: {session.t} applied of {total} sent, in {elapsed:.1f} s: {rate:.0f} steps/s"
        )
        print(f"loss on all {len(x)} examples: {start_loss:.4f} at the start → {end_loss:.4f} now")
        ok = session.t == total and end_loss < start_loss / 2
        print("done" if ok else "something went wrong: see above")
        return 0 if ok else 1


def batch_rows(index: int, round_: int, rows: int) -> npt.NDArray[np.int64]:
    """The rows of worker ``index``'s shard in its batch of ``round_``."""
    return np.random.default_rng([index, round_]).integers(0, rows, BATCH)


def sync_worker(
    base_url: str,
    session_id: str,
    index: int,
    workers: int,
    rounds: int,
    updates: multiprocessing.Queue[tuple[int, int, float]],
) -> None:
    """One data-parallel worker: a batch of its shard per round, weighted by its size."""
    x, y = dataset()
    x, y = x[index::workers], y[index::workers]
    with adamhub.Client(base_url, worker=f"worker-{index}") as client:
        session = client.session(session_id)
        params = session.params()
        for round_ in range(rounds):
            rows = batch_rows(index, round_, len(x))
            loss, gradient = loss_and_gradient(params, x[rows], y[rows])
            # Returns when the round closes, with every worker's mean step.
            params = session.step(gradient, samples=BATCH, loss=loss)
            updates.put((index, round_ + 1, loss))


def one_worker_with_every_batch(workers: int, rounds: int) -> npt.NDArray[np.floating]:
    """What one worker reaches with a local Adam, taking the workers' batches of each
    round as one batch (``workers`` × BATCH rows)."""
    x, y = dataset()
    shards = [(x[i::workers], y[i::workers]) for i in range(workers)]
    config = AdamConfig(lr=LR)
    state = init_state(start_params(), config)
    for round_ in range(rounds):
        picked = [(sx[batch_rows(i, round_, len(sx))], sy[batch_rows(i, round_, len(sy))])
                  for i, (sx, sy) in enumerate(shards)]  # fmt: skip
        _, gradient = loss_and_gradient(
            state.params,
            np.concatenate([p[0] for p in picked]),
            np.concatenate([p[1] for p in picked]),
        )
        state = adam_step(state, gradient.astype(np.float32), config)
    return state.params


def run_sync(workers: int = 4, rounds: int = 150) -> int:
    """Run the demo in rounds; return the exit status (0 when every round was applied
    once, the loss fell, and the result is one big-batch worker's)."""
    print(
        f"adamhub demo --sync: {workers} workers in rounds × {rounds} rounds on one session "
        f"({SIZE} parameters); each step is the mean of the {workers} workers' gradients"
    )
    with temporary_service() as base_url:
        x, y = dataset()
        start = start_params()
        start_loss, _ = loss_and_gradient(start, x, y)
        with adamhub.Client(base_url) as client:
            session = client.create_session(
                start, optimizer={"lr": LR}, name="demo-sync", rounds={"contributions": workers}
            )
            processes, updates = start_workers(sync_worker, base_url, session.id, workers, rounds)
            began = time.monotonic()
            losses: dict[int, list[float]] = {}
            shown = 0
            while shown < rounds:
                try:
                    _, round_, loss = updates.get(timeout=60)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        print("a worker failed")
                        return 1
                    continue
                losses.setdefault(round_, []).append(loss)
                while len(losses.get(shown + 1, ())) == workers:
                    shown += 1
                    if shown == 1 or shown % max(1, rounds // 10) == 0 or shown == rounds:
                        mean = sum(losses[shown]) / workers
                        print(f"  round {shown:>4}/{rounds}  t={shown:<4}  batch loss {mean:.4f}")
            elapsed = time.monotonic() - began
            for process in processes:
                process.join(30)
            end_params = session.params()
        end_loss, _ = loss_and_gradient(end_params, x, y)
        reference = one_worker_with_every_batch(workers, rounds)
        deviation = float(np.abs(end_params - reference).max())
        print(
            f"\nrounds: t={session.t} for {workers * rounds} contributions, in {elapsed:.1f} s: "
            f"{rounds / elapsed:.1f} rounds/s"
        )
        print(f"loss on all {len(x)} examples: {start_loss:.4f} at the start → {end_loss:.4f} now")
        print(
            f"one worker with a {workers}×{BATCH} batch reaches the same parameters: "
            f"max |Δθ| = {deviation:.1e}"
        )
        ok = session.t == rounds and end_loss < start_loss / 2 and deviation <= 1e-4
        print("done" if ok else "something went wrong: see above")
        return 0 if ok else 1
