"""``adamhub-service``: the command line of the service.

Only the standard library is imported here, so that an install without the
``service`` extra can say what is missing instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

INSTALL_HINT = "pip install 'adamhub[service]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    from adamhub_service.cli.memory import retain_freed_memory

    # Before numpy's and numba's thread pools start: glibc fixes its number of arenas
    # when a second thread first allocates.
    retain_freed_memory()
    try:
        from adamhub_service.cli.commands import run
    except ModuleNotFoundError as exc:
        print(
            f"adamhub-service: the service's dependencies are not installed ({exc.name} is "
            f"missing); install them with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    return run(argv)
