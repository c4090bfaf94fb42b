"""8-bit gradients with error feedback: what they save, and what they cost in training.

    make bench     (or: .venv/bin/python bench/bench_int8.py)

Measures, through the SDK against a local service (Redis AOF everysec):
- the bytes a step uploads, float32 against int8-block4096, at 1M, 10M and 100M
  parameters, and what that is on a 1 Gbit/s link; the SDK's encoding time (with
  error feedback) and a 10M step's latency on this machine's loopback;
- a small MLP (a digits-like task: 10 classes of 8×8 inputs) trained with RemoteAdam
  sending float32, float16, int8 with error feedback, and int8 without it (the
  residual dropped every step): final loss and test accuracy side by side.

Writes bench/results/int8.json and int8.md.
"""

from __future__ import annotations

import http.server
import statistics
import threading
import time
from typing import Any

import httpx
import numpy as np
from bench_step import write_results

import adamhub
from adamhub.quantization import ErrorFeedback
from adamhub_service.testing import ServiceProcess, StoreServer

LINK_BITS_PER_SECOND = 1e9
BLOCK_SIZE = 4096
STEPS = 400


def upload_rows(base_url: str) -> list[dict[str, Any]]:
    rows = []
    for size in (1_000_000, 10_000_000, 100_000_000):
        gradient = np.random.default_rng(0).normal(size=size).astype(np.float32)
        feedback = ErrorFeedback(size)
        started = time.perf_counter()
        body, feedback = feedback.encode(gradient)
        encode_ms = (time.perf_counter() - started) * 1000
        row: dict[str, Any] = {
            "params": size,
            "float32_bytes": 4 * size,
            "int8_bytes": len(body),
            "ratio": round(len(body) / (4 * size), 4),
            "float32_link_s": round(4 * size * 8 / LINK_BITS_PER_SECOND, 2),
            "int8_link_s": round(len(body) * 8 / LINK_BITS_PER_SECOND, 2),
            "encode_ms": round(encode_ms, 1),
        }
        if size == 100_000_000:
            row["float32_upload_s"] = round(upload_seconds(gradient.tobytes()), 2)
            row["int8_upload_s"] = round(upload_seconds(body), 2)
        if size == 10_000_000:
            for dtype in ("float32", "int8"):
                with adamhub.Client(base_url, timeout=600, gradient_dtype=dtype) as client:
                    session = client.create_session(size=size)
                    times = []
                    for _ in range(6):
                        start = time.perf_counter()
                        session.step(gradient)
                        times.append((time.perf_counter() - start) * 1000)
                    session.delete()
                row[f"{dtype}_step_ms"] = round(statistics.median(times[1:]), 1)
        rows.append(row)
        print(row, flush=True)
    return rows


class _Sink(http.server.BaseHTTPRequestHandler):
    """Reads a request's body and answers 204: an upload, and nothing else."""

    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 22)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def upload_seconds(body: bytes) -> float:
    """Median time to POST ``body`` over loopback to a server that only reads it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with httpx.Client(timeout=600) as client:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                client.post(url, content=body)
                times.append(time.perf_counter() - start)
    finally:
        server.shutdown()
    return statistics.median(times)


def digits_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10 classes of 8×8 inputs: each class a random stroke pattern, samples noisy and
    shifted copies of it (2,000 to train, 500 to test)."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.uniform(size=(10, 8, 8)) > 0.6).astype(np.float32)

    def sample(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=count)
        images = prototypes[labels]
        shifts = rng.integers(-1, 2, size=(count, 2))
        images = np.stack(
            [
                np.roll(img, tuple(shift), axis=(0, 1))
                for img, shift in zip(images, shifts, strict=True)
            ]
        )
        images = images + rng.normal(scale=0.6, size=images.shape).astype(np.float32)
        return images.reshape(count, 64), labels

    x_train, y_train = sample(2000)
    x_test, y_test = sample(500)
    return x_train, y_train, x_test, y_test


def train(base_url: str, wire: str) -> dict[str, Any]:
    import torch

    from adamhub.torch import RemoteAdam

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in digits_like())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    dtype = {"float32": None, "float16": "float16"}.get(wire, "int8")
    with adamhub.Client(base_url) as client:
        optimizer = RemoteAdam(model.parameters(), lr=3e-3, client=client, gradient_dtype=dtype)
        generator = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            batch = torch.randint(0, len(x_train), (64,), generator=generator)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            if wire == "int8, no error feedback":
                optimizer.session.error_feedback = None  # each step rounded on its own
            optimizer.step()
        with torch.no_grad():
            final = torch.nn.functional.cross_entropy(model(x_train), y_train).item()
            accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
        optimizer.session.delete()
    row = {"wire": wire, "train_loss": round(final, 4), "test_accuracy": round(accuracy, 4)}
    print(row, flush=True)
    return row


def small_beside_large(base_url: str) -> list[dict[str, Any]]:
    """Where error feedback matters: a quadratic on 4,096 weights (one block), one of
    them with a curvature 10,000× the others', so that the others' gradients stay below
    half an 8-bit step of the block's scale. The distance of the small-curvature weights
    to their optimum after 300 steps (it starts at about 0.8), float32 against int8 with
    and without error feedback."""
    rng = np.random.default_rng(0)
    curvature = np.full(BLOCK_SIZE, 1e-2, np.float32)
    curvature[0] = 100.0
    optimum = rng.normal(size=BLOCK_SIZE).astype(np.float32)
    rows = []
    for wire in ("float32", "int8 + error feedback", "int8, no error feedback"):
        dtype = None if wire == "float32" else "int8"
        with adamhub.Client(base_url, gradient_dtype=dtype) as client:
            session = client.create_session(size=BLOCK_SIZE, optimizer={"lr": 0.02})
            weights = np.zeros(BLOCK_SIZE, np.float32)
            for _ in range(300):
                gradient = curvature * (weights - optimum)
                gradient[0] += 50.0 * np.sign(weights[0] - optimum[0])  # a kink: it stays large
                if wire == "int8, no error feedback":
                    session.error_feedback = None
                weights = session.step(gradient)
            session.delete()
        small = float(np.abs(weights[1:] - optimum[1:]).mean())
        rows.append({"wire": wire, "small_weights_error": round(small, 4)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Measure, print the tables, write them to bench/results."""
    store = StoreServer("--appendonly", "yes", "--appendfsync", "everysec").start()
    service = ServiceProcess("--redis-url", store.url).start()
    try:
        uploads = upload_rows(service.base_url)
        training = [
            train(service.base_url, wire)
            for wire in ("float32", "float16", "int8 + error feedback", "int8, no error feedback")
        ]
        skewed = small_beside_large(service.base_url)
    finally:
        service.stop()
        store.cleanup()
    lines = [
        "8-bit gradients (int8-block4096) against float32, one run, through the SDK",
        "",
        "| params | float32 bytes | int8 bytes | ÷ float32 | 1 Gbit/s: float32 s | int8 s "
        "| SDK encode ms | step ms float32 / int8 (loopback) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in uploads:
        steps = (
            f"{row['float32_step_ms']} / {row['int8_step_ms']}" if "int8_step_ms" in row else "—"
        )
        lines.append(
            f"| {row['params']:,} | {row['float32_bytes']:,} | {row['int8_bytes']:,} "
            f"| {row['ratio']} | {row['float32_link_s']} | {row['int8_link_s']} "
            f"| {row['encode_ms']} | {steps} |"
        )
    huge = uploads[-1]
    lines += [
        "",
        f"a {huge['params']:,}-parameter gradient uploaded over loopback to a server that only "
        f"reads it: float32 {huge['float32_upload_s']} s, int8 {huge['int8_upload_s']} s "
        f"(plus {huge['encode_ms'] / 1000:.2f} s to encode it with error feedback)",
    ]
    lines += [
        "",
        f"a 64-64-10 MLP, {STEPS} RemoteAdam steps of 64 (digits-like, 10 classes of 8×8)",
        "",
        "| gradients sent as | final train loss | test accuracy |",
        "|---|---:|---:|",
    ]
    for row in training:
        lines.append(f"| {row['wire']} | {row['train_loss']} | {row['test_accuracy']:.1%} |")
    lines += [
        "",
        "a quadratic on 4,096 weights in one block, one whose gradient stays 1,000× the "
        "others': 300 steps (the small weights start 0.8 from their optimum)",
        "",
        "| gradients sent as | mean error of the small weights |",
        "|---|---:|",
    ]
    for row in skewed:
        lines.append(f"| {row['wire']} | {row['small_weights_error']} |")
    table = "\n".join(lines) + "\n"
    write_results("int8", table, {"uploads": uploads, "training": training})


if __name__ == "__main__":
    main()
