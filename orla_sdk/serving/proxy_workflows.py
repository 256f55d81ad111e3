"""The proxy's open workflows, each a tenant's own: a workflow id names a workflow within
the tenant whose token made it, so another tenant's id is one it does not know (and the
same id is its own workflow). At most ``limit`` are open per tenant; opening one more is
a 429 naming the limit.

Each time an id is opened it gets a session run of its own (``run_id``), so a workflow
completed while a new call of that id arrives never shares its run, cache slot or report
rows with the new one. A workflow holds at most ``MAX_UNITS`` (stage, agent) units, each a
report row: past that, a call naming a new one is a 429.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

from orla_sdk.serving.proxy_errors import HttpError

MAX_UNITS = 1024  # (stage, agent) pairs, each a report row, in one workflow


@dataclass
class Workflow:
    """An open workflow: its tenant and id, its session run, when it was last used and
    how many of its calls are running."""

    tenant: str
    id: str
    run_id: str
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    units: set[str] = field(default_factory=set)

    def idle_for(self, seconds: float, now: float) -> bool:
        return not self.in_flight and now - self.last_used >= seconds

    def unit(self, key: str) -> str:
        """``key``, a (stage, agent) unit of the workflow; a 429 past ``MAX_UNITS``."""
        if key not in self.units:
            if len(self.units) >= MAX_UNITS:
                raise HttpError(429, f"workflow {self.id!r} has {MAX_UNITS} (stage, agent) "
                                "pairs, the most one workflow may have; name fewer stages "
                                "and agents (X-Orla-Stage, X-Orla-Agent), or start another "
                                "workflow", code="too_many_units")
            self.units.add(key)
        return key


class Workflows:
    """The open workflows by (tenant, id); touched on the proxy's event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[tuple[str, str], Workflow] = {}
        self._per_tenant: Counter[str] = Counter()
        self._runs = itertools.count(1)

    def open(self, tenant: str, workflow: str) -> Workflow:
        """The tenant's workflow of that id, opened if it was not."""
        known = self._open.get((tenant, workflow))
        if known is not None:
            return known
        if self._per_tenant[tenant] >= self.limit:
            raise HttpError(429, f"{self.limit} workflows are open, the most one API token may "
                            "hold (max_workflows); complete finished ones with POST "
                            "/v1/orla/workflows/{id}/complete, or wait for idle ones to expire",
                            code="too_many_workflows")
        run_id = f"{tenant}:{workflow}#{next(self._runs)}" if tenant else (
            f"{workflow}#{next(self._runs)}")
        opened = self._open[(tenant, workflow)] = Workflow(tenant, workflow, run_id)
        self._per_tenant[tenant] += 1
        return opened

    def get(self, tenant: str, workflow: str) -> Workflow:
        """The tenant's open workflow of that id; a 404 for any other."""
        known = self._open.get((tenant, workflow))
        if known is None:
            raise HttpError(404, f"no workflow {workflow!r} is known here"[:300],
                            code="workflow_not_found")
        return known

    def holds(self, workflow: Workflow) -> bool:
        """Whether ``workflow`` is open: not completed, nor replaced by a new one of its id."""
        return self._open.get((workflow.tenant, workflow.id)) is workflow

    def remove(self, workflow: Workflow) -> None:
        if self._open.pop((workflow.tenant, workflow.id), None) is not None:
            self._per_tenant[workflow.tenant] -= 1

    def idle(self, seconds: float) -> list[Workflow]:
        """The workflows without a call for ``seconds`` and none running."""
        now = time.monotonic()
        return [w for w in self._open.values() if w.idle_for(seconds, now)]

    def ids(self, tenant: str = "") -> set[str]:
        """The ids of the tenant's open workflows (readable from any thread)."""
        return {w.id for (owner, _), w in list(self._open.items()) if owner == tenant}

    def clear(self) -> None:
        self._open.clear()
        self._per_tenant.clear()

    def __len__(self) -> int:
        return len(self._open)
