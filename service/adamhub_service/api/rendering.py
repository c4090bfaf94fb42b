"""Answers shared by several routes."""

from __future__ import annotations

from fastapi.responses import Response

from adamhub_service.api import headers
from adamhub_service.api.negotiation import JSON
from adamhub_service.api.schemas import SessionOut, render
from adamhub_service.sessions.service import Created


def created_response(created: Created) -> Response:
    """201 with the new session, its Location, and whether a retry found it made."""
    answer_headers = {"Location": f"/v1/sessions/{created.record.id}"}
    if created.replayed:
        answer_headers[headers.REPLAYED] = "true"
    return Response(
        render(SessionOut.of(created.record)),
        status_code=201,
        media_type=JSON,
        headers=answer_headers,
    )
