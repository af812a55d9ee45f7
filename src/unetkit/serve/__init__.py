"""Serving a model artifact over HTTP, in layers.

schemas.py (pydantic shapes) -> service.py (no web framework: `Service.from_artifact`, thread-safe
`segment`) -> batching.py (tiles of concurrent requests share forward passes) -> routes_health.py,
routes_v1.py (with state.py, auth.py, middleware.py, errors.py) -> app.py (`create_app(config)`:
state, lifespan, routers, middleware, error handlers) -> server.py (`run_server`, config
from flags, file and UNETKIT_SERVE_* variables). The web parts need `pip install 'unetkit[serve]'`.
"""
