"""adamhub: the Python SDK of the Adam-as-a-service HTTP API.

    import adamhub

    with adamhub.Client("http://localhost:8000") as client:
        session = client.create_session(params, optimizer={"lr": 1e-3})
        params = session.step(gradient)

``adamhub.torch.RemoteAdam`` (with ``adamhub[torch]``) is a drop-in torch optimizer.
"""

from adamhub._api_keys import ApiKey
from adamhub._client import AsyncClient, Client
from adamhub._config import AdamConfig
from adamhub._errors import (
    AdamhubError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    HistoryUnavailableError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    StaleGradientError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from adamhub._session import AsyncSession, Session
from adamhub._version import __version__

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AdamConfig",
    "AdamhubError",
    "ApiKey",
    "AsyncClient",
    "AsyncSession",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "HistoryUnavailableError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "Session",
    "StaleGradientError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "__version__",
]
