"""``orla serve``: an OpenAI-compatible HTTP proxy in front of orla's backends.

    with orla_sdk.serving.proxy.ProxyServer([orla.backends.llamacpp("local")],
                                            {"light": "local/smollm2-135m-instruct"}) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused")
        client.chat.completions.create(model="light", messages=[...],
                                       extra_headers={"X-Orla-Workflow": "ticket-42"})

Any framework or language reaches orla by changing its base URL. The request's
``model`` names a logical model, mapped to a backend and model as in ``orla.compile``.
Each call is tagged with a workflow, a stage and an agent: the headers
``X-Orla-Workflow``, ``X-Orla-Stage``, ``X-Orla-Agent`` and ``X-Orla-Priority``, or the
body fields of SGLang's proposed agent hints (``workflow_id``, ``agent_id``, ``step_id``,
``parent_step_id``), which are stripped before the request goes on (see
``proxy_input``). A call that names no agent is given one: a fingerprint of its first
message (``fp-...``), so that the calls of one system prompt are one agent.

The proxy is a ``ServingSession`` behind HTTP: a workflow is one of the session's runs
(its queue run and cache slots: on llama.cpp the calls of one of its conversations stay
on one slot, so their prefix is cached), a (stage, agent) of it one unit of work, whose
``StageRecord`` goes to the session's ``Report`` (``proxy.report``) labelled
``workflow``, ``stage``, ``agent`` and ``tenant``. Workflows are each tenant's own (see
``proxy_workflows``): ``GET /v1/orla/workflows/{id}`` reads one of the caller's,
``POST /v1/orla/workflows/{id}/complete`` settles it (its cache is dropped) and returns
the cache log and the report, then forgets it. A workflow idle for ``workflow_idle_s``
(an hour unless told) is completed by a background sweep, never on a call's path.

A call without a workflow is served in its tenant's one untagged run, which is never
settled: its calls share that run's cache slot, so the engine's prefix reuse across
them is kept, and no slot erase is waited for; they are not recorded.

Other endpoints: ``GET /v1/models`` and ``/v1/models/{id}``, ``GET /v1/orla/report``
(the caller's workflows; every tenant's for an admin), ``GET /openapi.json`` and
``GET /health``. The HTTP side (``proxy_http``) is Starlette under uvicorn
(``pip install 'orla_sdk[proxy]'``), loaded by ``start()``; uvicorn serves on the
session's own event loop, so a request's model call runs where the session's runs live,
without a hop between threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from orla_sdk.agents import AgentPolicy
from orla_sdk.backends.base import Backend, ChatRequest, ChatResult
from orla_sdk.errors import BackendError, MissingExtra, OrlaError, Refused
from orla_sdk.ir import BackendSpec, Node, Plan, StageSpec, Target
from orla_sdk.mapping import normalize_mapping
from orla_sdk.runtime.call import call_model
from orla_sdk.runtime.context import RunState, StageContext
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import CacheLogEntry, StageRecord, failed_cache_action
from orla_sdk.serving.proxy_errors import HttpError, tenant_safe, tenant_safe_log, unforeseen
from orla_sdk.serving.proxy_input import Tags
from orla_sdk.serving.proxy_workflows import Workflow, Workflows
from orla_sdk.serving.report import Report
from orla_sdk.serving.session import AD_HOC_REF, ServingSession

if TYPE_CHECKING:
    import uvicorn

DEFAULT_WORKFLOW_IDLE_S = 3600.0  # a workflow idle this long is completed
DEFAULT_MAX_WORKFLOWS = 10_000  # open workflows per API token
SWEEP_MAX_S = 60.0  # the idle sweep runs every tenth of workflow_idle_s, at least this often
REPORT_GROUPS = ("workflow", "stage", "agent")
STOP_TIMEOUT_S = 10.0
STAGES_KEPT = 1024  # the ad hoc stages of untagged calls, kept for reuse

log = logging.getLogger("orla_sdk.serving.proxy")


# ---- configuration --------------------------------------------------------------------
def serving_targets(backends: Sequence[BackendSpec],
                    mapping: Mapping[str, str | Target]) -> dict[str, Target]:
    """Logical model -> target, each on one of ``backends``."""
    names = {spec.name for spec in backends}
    targets: dict[str, Target] = {}
    for logical, value in normalize_mapping(mapping).items():
        if not isinstance(value, Target):
            raise OrlaError(f"the proxy maps {logical!r} to a mapper; give 'backend/model'")
        if value.backend not in names:
            raise OrlaError(f"{logical!r} is mapped to backend {value.backend!r}, which is not "
                            f"among the proxy's backends {sorted(names)}")
        targets[logical] = value
    if not targets:
        raise OrlaError("the proxy needs at least one logical model, e.g. "
                        "{'light': 'local/smollm2-135m-instruct'}")
    return targets


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_tokens(token: str | None, tokens: Mapping[str, str] | None,
               admins: Collection[str]) -> dict[str, str]:
    """Tenant name -> bearer token ("" for the one shared ``token``); ``admins`` must name
    tenants among them."""
    named = {**({"": token} if token else {}), **(tokens or {})}
    unknown = sorted(set(admins) - set(named))
    if unknown:
        raise OrlaError(f"admins {unknown} have no token; name tenants given in tokens= "
                        f"({sorted(t for t in named if t)})")
    return named


# ---- the proxy ------------------------------------------------------------------------
class ProxyServer:
    """The proxy: a ``ServingSession`` (its loop thread and ``BackendPool``) with uvicorn
    serving on that loop. ``clients`` supplies ready-made backends by name, as for
    ``BackendPool``. ``tokens`` gives each tenant its bearer token; a tenant reads and
    completes only its own workflows, except the tenants named in ``admins``, whose
    ``/v1/orla/report`` shows every tenant's. At most ``max_workflows`` workflows are open
    per token."""

    def __init__(self, backends: Sequence[BackendSpec], mapping: Mapping[str, str | Target],
                 host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 max_body: int = 1 << 20, *, clients: Mapping[str, Backend] | None = None,
                 slots: int = 4, workflow_idle_s: float = DEFAULT_WORKFLOW_IDLE_S,
                 policies: Sequence[AgentPolicy | str] = (),
                 tokens: Mapping[str, str] | None = None, admins: Collection[str] = (),
                 max_workflows: int = DEFAULT_MAX_WORKFLOWS) -> None:
        self.tokens = api_tokens(token, tokens, admins)  # tenant name -> bearer token
        if not self.tokens and not is_loopback(host):
            raise OrlaError(f"refusing to serve on {host} without a token: give --token or "
                            "ORLA_PROXY_TOKEN, or listen on 127.0.0.1")
        if max_body < 1 or max_workflows < 1 or workflow_idle_s <= 0:
            raise OrlaError("max_body, max_workflows and workflow_idle_s must be positive, not "
                            f"{max_body}, {max_workflows} and {workflow_idle_s}")
        self.targets = serving_targets(backends, mapping)
        self.host, self.port, self.max_body = host, port, max_body
        self.admins = frozenset(admins)
        self.workflow_idle_s = workflow_idle_s
        self.plan = Plan(name="orla-proxy", backends=list(backends), mapping=dict(self.targets),
                         runnable=False)
        self.session = ServingSession(
            self.plan, pool=BackendPool(backends, clients=clients, slots=slots,
                                        policies=policies),
            report=Report(groups=REPORT_GROUPS))
        self.workflows = Workflows(max_workflows)  # touched on the loop only
        self._untagged: dict[str, RunState] = {}  # tenant -> the run of its untagged calls
        self._stages: dict[str, tuple[Node, StageSpec]] = {}
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._serving: Future[None] | None = None
        self._sweeping: Future[None] | None = None

    @property
    def pool(self) -> BackendPool:
        return self.session.pool

    @property
    def report(self) -> Report:
        """The session's report: one row per (workflow, stage, agent) unit."""
        return self.session.report

    # -- lifecycle --
    def start(self) -> str:
        """Start the backends and the server; returns the proxy's URL (no ``/v1``)."""
        if self._server is not None:
            return self.url
        uvicorn = _import_uvicorn()
        from orla_sdk.serving.proxy_http import app

        listener = _listen(self.host, self.port)
        try:
            self.session.start()
            config = uvicorn.Config(
                app(self), lifespan="off", log_config=None, log_level="warning",
                access_log=False, ws="none", server_header=False,
                headers=[("server", "orla-proxy")], timeout_graceful_shutdown=5)
            self._server = uvicorn.Server(config)
            self._serving = asyncio.run_coroutine_threadsafe(
                self._server.serve(sockets=[listener]), self.session.loop)
            self._wait_started()
            self._sweeping = asyncio.run_coroutine_threadsafe(self._sweep_idle(),
                                                              self.session.loop)
        except BaseException:
            self.stop()
            listener.close()
            raise
        port = listener.getsockname()[1]
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}"
        return self.url

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._server is not None and not self._server.started:
            if self._serving is not None and self._serving.done():
                self._serving.result()  # a failure to start
                raise OrlaError("the proxy's HTTP server stopped while starting")
            if time.monotonic() > deadline:
                raise OrlaError("the proxy's HTTP server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop the idle sweep and the server (its connections end, its socket closes),
        then the session: every workflow's cache is dropped, the backends and any engine
        the pool started stop, and the loop thread ends."""
        server, serving, self._server, self._serving = self._server, self._serving, None, None
        sweeping, self._sweeping = self._sweeping, None
        try:
            if sweeping is not None:
                sweeping.cancel()
            if server is not None and serving is not None:
                server.should_exit = True
                try:
                    serving.result(timeout=STOP_TIMEOUT_S)
                except TimeoutError:
                    server.force_exit = True
                    serving.result(timeout=STOP_TIMEOUT_S)
            self._end_untagged()
        finally:
            self.session.close()
            self.workflows.clear()
            self.url = ""

    def _end_untagged(self) -> None:
        runs, self._untagged = list(self._untagged.values()), {}
        for run in runs:
            try:
                self.session.call(self.pool.memory.end_run(run.run_id))
            except Exception as exc:  # the engines stop anyway
                log.warning("the untagged run %s did not end cleanly: %s", run.run_id, exc)

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- requests (on the session's loop) --
    def target(self, model: Any) -> Target:
        target = self.targets.get(model) if isinstance(model, str) else None
        if target is None:
            raise HttpError(404, f"model {model!r} is not served here; the models are "
                            f"{sorted(self.targets)}"[:500], code="model_not_found",
                            param="model")
        return target

    async def chat(self, tags: Tags, target: Target, request: ChatRequest) -> ChatResult:
        """One call: in its workflow's run (queued at the call's priority, on the run's
        cache slot, recorded in its unit), or, untagged, in its tenant's untagged run. A
        failure is raised as its clients may read it, in an answer or a stream's error
        event alike: a backend's by ``tenant_safe``, an unforeseen one by ``unforeseen``."""
        try:
            if tags.tagged:
                return await self._workflow_call(tags, target, request)
            return await self._untagged_call(tags, target, request)
        except (BackendError, HttpError, Refused):
            raise
        except Exception as exc:
            raise unforeseen(exc, f"a call to {target.key()}") from exc

    async def _workflow_call(self, tags: Tags, target: Target,
                             request: ChatRequest) -> ChatResult:
        workflow = self.workflows.open(tags.tenant, tags.workflow)
        unit = self.session.unit(workflow.run_id, workflow.unit(f"{tags.stage}\x00{tags.agent}"),
                                 tags.stage,
                                 {"workflow": tags.workflow, "stage": tags.stage,
                                  "agent": tags.agent or None, "priority": tags.priority,
                                  "tenant": tags.tenant, "run": workflow.run_id})
        workflow.in_flight += 1
        try:
            return await call_model(replace(unit, priority=tags.priority, tenant=tags.tenant),
                                    self.pool[target.backend], target, request)
        except BackendError as exc:
            safe = tenant_safe(exc)
            unit.record.status, unit.record.error = "failed", str(safe)
            raise safe from exc
        finally:
            workflow.in_flight -= 1
            workflow.last_used = time.monotonic()

    async def _untagged_call(self, tags: Tags, target: Target,
                             request: ChatRequest) -> ChatResult:
        """A call outside any workflow: its tenant's untagged run, which is never settled,
        so no slot erase is waited for and the prefix its calls share stays cached; its
        record is the call's own, reported nowhere."""
        run = self._untagged.get(tags.tenant)
        if run is None:
            run = self._untagged[tags.tenant] = RunState(
                f"untagged:{tags.tenant}" if tags.tenant else "untagged", self.plan, self.pool,
                self.session.loop)
        node, spec = self._ad_hoc_stage(tags.stage)
        unit = StageContext(run, node, spec, StageRecord(node.id, spec.name), tags.priority,
                            0, tenant=tags.tenant)
        try:
            return await call_model(unit, self.pool[target.backend], target, request)
        except BackendError as exc:
            raise tenant_safe(exc) from exc
        finally:
            self.pool.memory.take_log(run.run_id)  # slots lent and restored: nobody reads it

    def _ad_hoc_stage(self, name: str) -> tuple[Node, StageSpec]:
        stage = self._stages.get(name)
        if stage is None:
            if len(self._stages) >= STAGES_KEPT:
                self._stages.clear()
            stage = self._stages[name] = (Node(id=name, kind="stage", label=name),
                                          StageSpec(name=name, ref=AD_HOC_REF))
        return stage

    # -- workflows (on the session's loop) --
    def workflow_report(self, tenant: str, workflow: str) -> dict[str, Any]:
        """The workflow's part of the report: totals, by stage and by agent, and the
        units a call of which failed."""
        return self._report_of(self.workflows.get(tenant, workflow))

    def _report_of(self, workflow: Workflow) -> dict[str, Any]:
        report = self.report
        rows = report.rows(run=workflow.run_id)
        return {
            "workflow": workflow.id,
            "total": report.row_totals(rows),
            "by_stage": report.grouped("stage", rows),
            "by_agent": report.grouped("agent", rows),
            "errors": [{"stage": row.labels["stage"], "agent": row.labels["agent"],
                        "error": row.record.error}
                       for row in rows if row.record.status == "failed"],
        }

    def tenants_report(self, tenant: str) -> dict[str, Any]:
        """The report of the tenant's open workflows; an admin's covers every tenant's,
        with ``by_tenant`` beside the other groups, and ``by_run`` (``tenant:id#n``),
        since two tenants' workflows may share an id (``by_workflow`` adds them up)."""
        if tenant not in self.admins:
            return self.report.to_json(tenant=tenant)
        return {**self.report.to_json(), "by_tenant": self.report.by("tenant"),
                "by_run": self.report.by("run")}

    async def complete(self, tenant: str, workflow: str) -> dict[str, Any]:
        """The end-of-workflow cache action; the workflow is then forgotten (a later call
        of its id opens a new one). A workflow with calls in flight is a 409: they would
        lose their report rows, and their busy slot could go to another workflow."""
        known = self.workflows.get(tenant, workflow)
        if known.in_flight:
            raise HttpError(409, f"workflow {workflow!r} has {known.in_flight} call(s) in "
                            "flight; complete it once they have answered",
                            code="workflow_busy")
        report = self._report_of(known)
        return {"workflow": workflow, "cache_log": await self._end(known), "report": report}

    async def _end(self, workflow: Workflow) -> list[CacheLogEntry]:
        """Forget the workflow and its report rows, and drop its cache."""
        self.workflows.remove(workflow)
        self.report.discard(run=workflow.run_id)
        return await self._settle(workflow.run_id)

    async def _settle(self, run_id: str) -> list[CacheLogEntry]:
        """Drop the run's cache; a failure is the cache log's (as tenants may read it),
        never the answer's."""
        try:
            entries = await self.session.settle(run_id, "over")
        except Exception as exc:
            log.warning("dropping the cache of run %s failed: %s: %s", run_id,
                        type(exc).__name__, exc)
            entries = [failed_cache_action(exc)]
        return tenant_safe_log(entries)

    async def _sweep_idle(self) -> None:
        """Complete the workflows idle for ``workflow_idle_s``, in the background: a client
        that never sends the workflow-complete call must not hold cache slots and records
        forever. Runs every tenth of that time (at least every ``SWEEP_MAX_S``)."""
        every = min(self.workflow_idle_s / 10, SWEEP_MAX_S)
        while True:
            await asyncio.sleep(every)
            for workflow in self.workflows.idle(self.workflow_idle_s):
                # still open (not completed, nor opened anew, meanwhile) and still idle
                if (self.workflows.holds(workflow)
                        and workflow.idle_for(self.workflow_idle_s, time.monotonic())):
                    await self._end_idle(workflow)

    async def _end_idle(self, workflow: Workflow) -> None:
        """End an idle workflow (no report: nobody asked for one); a failure is logged, and
        the sweep goes on."""
        try:
            await self._end(workflow)
        except Exception as exc:
            log.warning("ending idle workflow %r failed: %s: %s", workflow.id,
                        type(exc).__name__, exc)


def _import_uvicorn() -> Any:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise MissingExtra(exc.name or "starlette", "proxy", "orla serve") from None
    return uvicorn


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use fails ``start()`` itself.
    It says it is TCP (``IPPROTO_TCP``): asyncio turns Nagle's algorithm off only on the
    connections of such a socket, and with it on, an answer written in two parts (head,
    then body) waits about 40 ms for the client's delayed acknowledgement."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except BaseException:
        listener.close()
        raise
    return listener
