"""``specdec serve``: an OpenAI-compatible HTTP server over one engine (Starlette on uvicorn).

Install with ``pip install 'specdec[serve]'``. :func:`create_app` builds the ASGI application; :mod:`.protocol`
checks requests and builds OpenAI's responses, :mod:`.worker` runs them on the engine, :mod:`.metrics` counts.
"""

from specdec.serving.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
