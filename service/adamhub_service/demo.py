"""``adamhub-service demo``: several workers train one small model through the service.

The service runs as a real process with its embedded store in a temporary folder. Each
worker process owns a shard of a synthetic regression data set (made here, nothing is
downloaded), computes the gradient of a two-layer tanh network with numpy, and steps the
shared session through the SDK. The loss is printed falling; then everything stops.
"""

from __future__ import annotations

import multiprocessing
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

import adamhub

INPUTS, HIDDEN = 8, 32
SHAPES = {"w1": (INPUTS, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, 1), "b2": (1,)}
SIZE = sum(int(np.prod(shape)) for shape in SHAPES.values())
BATCH = 64
BAR_WIDTH = 24

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
    updates: multiprocessing.Queue[tuple[int, int, float]],
) -> None:
    """One training worker: its own shard of the data, the shared session."""
    x, y = dataset()
    x, y = x[index::workers], y[index::workers]
    rng = np.random.default_rng(index)
    with adamhub.Client(base_url) as client:
        session = client.session(session_id)
        params = session.params()
        for step in range(1, steps + 1):
            rows = rng.integers(0, len(x), BATCH)
            loss, gradient = loss_and_gradient(params, x[rows], y[rows])
            params = session.step(gradient)
            updates.put((index, step, loss))


@dataclass
class Progress:
    """Per-worker progress bars, redrawn in place on a terminal, else a line every 10%."""

    workers: int
    steps: int
    interactive: bool

    def __post_init__(self) -> None:
        self.done = [0] * self.workers
        self.loss = [float("nan")] * self.workers
        self._drawn = False
        self._tenths_shown = 0

    def update(self, index: int, step: int, loss: float) -> None:
        """Record a worker's step and redraw."""
        self.done[index], self.loss[index] = step, loss
        if self.interactive:
            self._draw()
        elif (tenths := 10 * sum(self.done) // (self.workers * self.steps)) > self._tenths_shown:
            self._tenths_shown = tenths
            losses = " ".join(f"{value:.4f}" for value in self.loss)
            print(
                f"  {10 * tenths:>3}%  steps {sum(self.done):>5}  batch loss per worker: {losses}"
            )

    def _draw(self) -> None:
        if self._drawn:
            sys.stdout.write(f"\x1b[{self.workers}F")
        for index in range(self.workers):
            filled = BAR_WIDTH * self.done[index] // self.steps
            bar = "█" * filled + "·" * (BAR_WIDTH - filled)
            sys.stdout.write(
                f"  worker {index} {bar} {self.done[index]:>4}/{self.steps}"
                f"  loss {self.loss[index]:.4f}\x1b[K\n"
            )
        sys.stdout.flush()
        self._drawn = True


def start_service(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The service with its embedded store, on a free port; returns it and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "adamhub_service", "serve", "--port", str(port),
               "--data-dir", str(data_dir), "--log-level", "warning"]  # fmt: skip
    log = open(data_dir.parent / "service.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the service exited: {(data_dir.parent / 'service.log').read_text()}"
            )
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return process, base_url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the service did not become ready within 60 s")


def run(workers: int = 4, steps: int = 150) -> int:
    """Run the demo; return the exit status (0 when the loss fell and no step was lost)."""
    folder = Path(tempfile.mkdtemp(prefix="adamhub-demo-"))
    print(f"adamhub demo: {workers} workers × {steps} steps on one session ({SIZE} parameters)")
    service, base_url = start_service(folder / "data")
    print(f"service at {base_url} (embedded store in {folder / 'data'})")
    try:
        x, y = dataset()
        start = np.random.default_rng(0).normal(0.0, 0.3, SIZE).astype(np.float32)
        with adamhub.Client(base_url) as client:
            session = client.create_session(start, optimizer={"lr": 0.01}, name="demo")
        context = multiprocessing.get_context("spawn")
        updates: multiprocessing.Queue[tuple[int, int, float]] = context.Queue()
        processes = [
            context.Process(target=worker, args=(base_url, session.id, i, workers, steps, updates))
            for i in range(workers)
        ]
        began = time.monotonic()
        for process in processes:
            process.start()
        progress = Progress(workers, steps, interactive=sys.stdout.isatty())
        while sum(progress.done) < workers * steps:
            try:
                progress.update(*updates.get(timeout=60))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in processes):
                    print("a worker failed")
                    return 1
        elapsed = time.monotonic() - began
        for process in processes:
            process.join(30)
        with adamhub.Client(base_url) as client:
            final = client.session(session.id)
            end_params = final.params()
        start_loss, _ = loss_and_gradient(start, x, y)
        end_loss, _ = loss_and_gradient(end_params, x, y)
        total = workers * steps
        rate = total / elapsed
        print(f"\nsteps: {final.t} applied of {total} sent, in {elapsed:.1f} s: {rate:.0f} steps/s")
        print(f"loss on all {len(x)} examples: {start_loss:.4f} at the start → {end_loss:.4f} now")
        ok = final.t == total and end_loss < start_loss / 2
        print("done" if ok else "something went wrong: see above")
        return 0 if ok else 1
    finally:
        service.terminate()
        service.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
