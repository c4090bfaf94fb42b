"""Write the service's OpenAPI document (default settings) as JSON: the TypeScript
client's types are generated from it (clients/typescript, `npm run generate`), and
`make lint` checks that the committed copy is current.

    .venv/bin/python tools/openapi_json.py clients/typescript/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adamhub_service.app import create_app
from adamhub_service.config import Settings


def document_text() -> str:
    """The document, as the committed file holds it."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(document_text())
