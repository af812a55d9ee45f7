"""Serving a model artifact over HTTP, in layers.

schemas.py (pydantic shapes) -> service.py (no web framework: `Service.from_artifact`, thread-safe
`segment`) -> batching.py (tiles of concurrent requests share forward passes) -> app.py
(`create_app(config)`: FastAPI routes, metrics, auth, limits) -> server.py (`run_server`, config
from flags, file and UNETKIT_SERVE_* variables). The web parts need `pip install 'unetkit[serve]'`.
"""
