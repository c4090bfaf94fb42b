"""The served OpenAPI document is one that tools accept, and /docs works offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from adamhub_service.app import create_app
from adamhub_service.config import Settings
from adamhub_service.testing import LOOPBACK

PROBLEM_JSON = "application/problem+json"
METHODS = ("get", "put", "post", "patch", "delete")


@pytest.fixture(scope="module")
def client(store_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=store_url, max_size=5000)
    with TestClient(create_app(settings), client=LOOPBACK) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_document_passes_the_openapi_validator(document: dict[str, Any]) -> None:
    validate(document)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    found = set(refs(document))
    assert found, "the document uses components"
    schemas = document["components"]["schemas"]
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, f"{ref} points nowhere"


def test_every_error_status_is_documented_as_a_problem(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        if not path.startswith("/v1"):
            continue
        statuses = {int(s) for s in operation["responses"] if s.isdigit()}
        assert {400, 401, 403, 429, 500, 503} <= statuses, (method, path)
        if "{session_id}" in path or "{key_id}" in path:
            assert 404 in statuses, (method, path)
        if method in ("put", "patch") or (method == "post" and "session" in path):
            assert {408, 413, 415, 422} <= statuses, (method, path)
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"][PROBLEM_JSON]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
                assert "application/json" not in response["content"]
        for status in ("409", "503"):
            if status in operation["responses"]:
                assert "Retry-After" in operation["responses"][status]["headers"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_step_documents_its_headers_and_both_encodings(document: dict[str, Any]) -> None:
    step = document["paths"]["/v1/sessions/{session_id}/step"]["post"]
    ok = step["responses"]["200"]
    assert set(ok["headers"]) == {
        "Adamhub-Step",
        "Adamhub-Applied-Step",
        "Adamhub-Dtype",
        "ETag",
        "Idempotent-Replayed",
    }
    assert set(ok["content"]) == {"application/json", "application/octet-stream"}
    assert set(step["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    headers = {p["name"]: p for p in step["parameters"] if p["in"] == "header"}
    dtypes = ["bfloat16", "float16", "float32", "float64"]
    assert headers["adamhub-dtype"]["schema"]["enum"] == [*dtypes, "int8-block4096"]
    assert headers["adamhub-accept-dtype"]["schema"]["enum"] == dtypes
    assert headers["idempotency-key"]["schema"]["pattern"] == "^[!-~]{1,255}$"
    created = document["paths"]["/v1/sessions"]["post"]["responses"]["201"]
    assert "Location" in created["headers"]


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


REFUSED: list[tuple[str, Any]] = [
    ("SessionCreate", {"params": []}),
    ("SessionCreate", {"params": [1.0], "size": 1}),
    ("SessionCreate", {}),
    ("SessionCreate", {"size": 0}),
    ("SessionCreate", {"size": 5001}),
    ("SessionCreate", {"size": 1, "dtype": "int8"}),
    ("SessionCreate", {"size": 1, "optimizer": {"lr": -1}}),
    ("SessionCreate", {"size": 1, "optimizer": {"betas": [1.0, 0.5]}}),
    ("SessionCreate", {"size": 1, "optimizer": {"betas": [0.9]}}),
    ("SessionCreate", {"size": 1, "optimizer": {"eps": 0}}),
    ("SessionCreate", {"size": 1, "optimizer": {"learning_rate": 0.1}}),
    ("SessionCreate", {"size": 1, "init": {"kind": "uniform"}}),
    ("SessionCreate", {"size": 1, "name": "x" * 257}),
    ("SessionPatch", {"optimizer": {"amsgrad": True}}),
    ("SessionPatch", {"size": 3}),
    ("StepIn", {"gradient": []}),
    ("StepIn", {"grad": [1.0]}),
    ("ParamsIn", {"params": ["1"]}),
]


@pytest.mark.parametrize(("name", "body"), REFUSED)
def test_the_schema_refuses_what_the_service_refuses(
    client: TestClient, document: dict[str, Any], name: str, body: Any
) -> None:
    assert not validator(document, name).is_valid(body)
    if name == "SessionCreate":
        assert client.post("/v1/sessions", json=body).status_code == 422


ACCEPTED: list[tuple[str, Any]] = [
    ("SessionCreate", {"params": [1.0, 2.0]}),
    ("SessionCreate", {"size": 5000, "init": {"kind": "normal", "std": 0.1, "seed": 1}}),
    ("SessionCreate", {"size": 3, "optimizer": {"lr": 0.1, "betas": [0.0, 0.5]}}),
    ("SessionPatch", {"optimizer": {"lr": 0.5}, "name": "n", "metadata": {"a": [1]}}),
    ("StepIn", {"gradient": [1.0, 2]}),
]


@pytest.mark.parametrize(("name", "body"), ACCEPTED)
def test_the_schema_accepts_what_the_service_accepts(
    client: TestClient, document: dict[str, Any], name: str, body: Any
) -> None:
    assert validator(document, name).is_valid(body)
    if name == "SessionCreate":
        assert client.post("/v1/sessions", json=body).status_code == 201


def test_a_generated_client_has_every_operation(document: dict[str, Any], tmp_path: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            Path(sys.executable).parent / "openapi-python-client",
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(tmp_path / "client"),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Warning" not in output and "will not be generated" not in output, output
    generated = {p.stem for p in (tmp_path / "client" / "api").rglob("*.py")} - {"__init__"}
    expected = {operation["operationId"] for _, _, operation in operations(document)}
    assert generated == expected
    assert {"create_session", "patch_session", "step", "put_params"} <= generated


def test_docs_load_nothing_from_the_internet(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert any(url.endswith("swagger-ui-bundle.js") for url in urls), urls
    for url in urls:
        assert not re.match(r"^(https?:)?//", url), f"/docs loads {url} from outside"
        assert client.get(url).status_code == 200, url
    assert "cdn" not in page.text.lower()
