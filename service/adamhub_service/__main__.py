"""``python -m adamhub_service``: the same as the ``adamhub-service`` command."""

from adamhub_service.cli import main

raise SystemExit(main())
