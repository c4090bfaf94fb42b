"""The dashboard: static assets (``static/``), served by the app at ``/ui``."""
