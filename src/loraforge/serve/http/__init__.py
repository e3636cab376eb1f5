"""The OpenAI-compatible HTTP layer: routes, schemas, errors, limits, metrics.

It knows an engine only through `serve.engine.Engine`, adapters through `serve.adapters`, and
tenants through `serve.tenants`; `build_app` wires them into a FastAPI app.
"""

from loraforge.serve.http.app import build_app
from loraforge.serve.http.limits import Limits

__all__ = ["Limits", "build_app"]
