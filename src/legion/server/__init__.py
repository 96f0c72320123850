"""``legion serve``: the HTTP API, the live dashboard, Prometheus metrics.

Needs the ``server`` extra (FastAPI, uvicorn, prometheus-client); nothing outside this
package and ``legion.cli.serve`` imports it, so the core stays light.

- :mod:`.app`: the FastAPI application and its routes' list.
- :mod:`.tasks_api`, :mod:`.streams`, :mod:`.ops_api`, :mod:`.dashboard`: the routes.
- :mod:`.auth`, :mod:`.keys`: API keys (made by ``legion keys create``, stored hashed).
- :mod:`.monitor`, :mod:`.snapshot`, :mod:`.metrics`: what the dashboard and ``/metrics``
  show, sampled once for every client.
- :mod:`.service`: :func:`running_server`, which runs it all under uvicorn.
"""

from __future__ import annotations

from .app import create_app
from .service import RunningServer, running_server
from .settings import ServerSettings

__all__ = ["RunningServer", "ServerSettings", "create_app", "running_server"]
