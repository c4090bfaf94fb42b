"""adamhub: the Python SDK of the Adam-as-a-service HTTP API.

    import adamhub

    with adamhub.Client("http://localhost:8000") as client:
        session = client.create_session(params, optimizer={"lr": 1e-3})
        params = session.step(gradient)

``adamhub.torch.RemoteAdam`` (with ``adamhub[torch]``) is a drop-in torch optimizer.
"""

from adamhub import _errors
from adamhub._api_keys import ApiKey
from adamhub._client import AsyncClient, Client
from adamhub._config import AdamConfig
from adamhub._errors import *  # noqa: F403  (every exception: _errors.__all__)
from adamhub._session import AsyncSession, Session
from adamhub._version import __version__

__all__ = [
    "AdamConfig",
    "ApiKey",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "Session",
    "__version__",
]
__all__ += _errors.__all__
