"""The ``legion_workers_desired`` signal of ``legion serve``: the scaling policy run on the
whole store, for a cluster's autoscaler (KEDA's Prometheus scaler, an HPA on external
metrics), which applies its own bounds; so no minimum or maximum here.
"""

from __future__ import annotations

from collections.abc import Collection

from legion.provision.board import Board, served
from legion.provision.policy import PolicyState, ScalingConfig, decide
from legion.server.snapshot import Scaling
from legion.store.base import Store
from legion.store.types import WorkerInfo
from legion.task import TaskStatus

AUTOSCALER_FRESH = 30.0  # seconds: an autoscaler that published longer ago has stopped


class ScalingGauge:
    """Keeps the policy's state between two samples of the server's monitor."""

    def __init__(self, config: ScalingConfig | None = None) -> None:
        self._config = config or ScalingConfig()
        self._board = Board()
        self._state = PolicyState()

    async def read(
        self,
        store: Store,
        counts: dict[TaskStatus, int],
        workers: list[WorkerInfo],
        agents: Collection[str] = (),
    ) -> Scaling:
        """The decision now, on the backlog of ``agents`` (the server's) and of those the
        live workers serve: tasks no worker would run ask for no worker."""
        now = await store.now()
        backlog = await self._board.backlog(store, now, served(workers, agents))
        demand = self._board.demand(now, backlog.ready, backlog.oldest_created_at, counts, workers)
        if self._state.desired == 0 and workers:
            self._state = PolicyState(len(workers))  # the workers found running
        decision, self._state = decide(demand, self._config, self._state)
        scalers = await store.autoscalers(now - AUTOSCALER_FRESH)
        return Scaling(
            desired=decision.desired,
            running=decision.running,
            reason=decision.reason,
            autoscalers=[
                {
                    "host": a.host,
                    "pid": a.pid,
                    "desired": a.desired,
                    "running": a.running,
                    "minimum": a.minimum,
                    "maximum": a.maximum,
                    "reason": a.reason,
                }
                for a in scalers
            ],
        )
