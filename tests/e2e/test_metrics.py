"""Metrics: the sum over worker processes, the families the service exports, and the
Grafana dashboard over them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np

import adamhub
from adamhub_service.testing import ServiceProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "adamhub.json"
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count")


def base_name(name: str) -> str:
    """A sample's or a family's name without the suffix its type adds."""
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)


def families(exposition: str) -> set[str]:
    """The metric families a /metrics answer declares (by their base names)."""
    return {base_name(n) for n in re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE)}


def sample(exposition: str, name: str, labels: str) -> float:
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", exposition, re.M)
    assert found, f"{name}{{{labels}}} not in the metrics"
    return float(found.group(1))


def test_with_several_workers_a_scrape_sums_them_all(redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    service = ServiceProcess(
        "--redis-url", redis_url, "--workers", "2",
        env={"PROMETHEUS_MULTIPROC_DIR": str(folder)}, log_path=tmp_path / "log",
    ).start()  # fmt: skip
    try:
        with adamhub.Client(service.base_url) as client:
            session = client.create_session(size=8)
        steps = 30
        for _ in range(steps):  # a new connection each: the workers share them out
            answer = httpx.post(
                f"{service.base_url}/v1/sessions/{session.id}/step",
                content=np.ones(8, np.float32).tobytes(),
                headers={"Content-Type": "application/octet-stream", "Connection": "close"},
            )
            assert answer.status_code == 200
        pids = {re.sub(r"\D", "", path.stem.rsplit("_", 1)[-1]) for path in folder.glob("*.db")}
        assert len(pids) >= 2, "both workers keep metrics"
        for _ in range(6):  # whichever worker answers, it answers the sum
            text = httpx.get(f"{service.base_url}/metrics", headers={"Connection": "close"}).text
            assert sample(text, "adamhub_steps_total", 'outcome="applied"') == steps
            route = 'method="POST",route="/v1/sessions/{session_id}/step",status="200"'
            assert sample(text, "adamhub_http_requests_total", route) == steps
            assert sample(text, "adamhub_step_phase_seconds_count", 'phase="read_body"') == steps
    finally:
        assert service.stop() == 0


def test_the_grafana_dashboard_asks_only_for_metrics_the_service_exports(
    service_url: str,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "adamhub" and dashboard["panels"]
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    exported = families(httpx.get(f"{service_url}/metrics").text)
    asked = set()
    for expr in exprs:
        asked |= {base_name(name) for name in re.findall(r"\badamhub_[a-z_]+", expr)}
    assert asked, exprs
    missing = {name for name in asked if name not in exported}
    assert not missing, f"the dashboard asks for metrics the service does not export: {missing}"
    # and the dashboard covers what issue-level operators watch
    assert {
        "adamhub_step_phase_seconds",
        "adamhub_rounds_closed",
        "adamhub_round_contributions",
        "adamhub_stale_gradients",
        "adamhub_rate_limited",
        "adamhub_snapshots",
        "adamhub_store_written_bytes",
    } <= asked
