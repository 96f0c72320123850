"""``legion serve``: the HTTP API, the live dashboard, Prometheus metrics.

Needs the ``server`` extra (FastAPI, uvicorn, prometheus-client); nothing outside this
package and ``legion.cli.serve`` imports it, so the core stays light.

- `.app`: the FastAPI application and its routes' list.
- `.tasks_api`, `.streams`, `.ops_api`, `.dashboard`: the routes.
- `.auth`, `.keys`: API keys (made by ``legion keys create``, stored hashed).
- `.monitor`, `.snapshot`, `.metrics`: what the dashboard and ``/metrics``
  show, sampled once for every client.
- `.service`: `running_server`, which runs it all under uvicorn.
"""

from __future__ import annotations

from legion.server.app import create_app
from legion.server.service import RunningServer, running_server
from legion.server.settings import ServerSettings

__all__ = ["RunningServer", "ServerSettings", "create_app", "running_server"]
