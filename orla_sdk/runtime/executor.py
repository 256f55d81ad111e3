"""The executor: runs a compiled plan with concrete values on asyncio.

Every node waits for the nodes it depends on, so stages with no path between them run
concurrently. A node runs when one of its guards holds (a branch took one of the listed
choices); otherwise it is skipped. A map node runs its loop body once per item, all
items concurrently. Each stage body runs under a stage context, through which the
model calls it makes are queued, routed and cached. A failing stage ends the run with a
clear error in the result; it never takes the process down.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import secrets
import time
from collections import ChainMap
from pathlib import Path
from typing import Any

from orla_sdk.errors import OrlaError, StageFailed
from orla_sdk.ir import Node, Plan, PriorityNote, PriorityRule, StageSpec, priority_of
from orla_sdk.runtime.bodies import Body
from orla_sdk.runtime.checkpoint import CheckpointStore, Durable, inputs_of, open_store
from orla_sdk.runtime.context import RunState, StageContext, current_stage
from orla_sdk.runtime.events import Emitter, Listener
from orla_sdk.runtime.layout import Layout, layout_of
from orla_sdk.runtime.pool import BackendPool
from orla_sdk.runtime.records import RunResult, StageRecord, failed_cache_action

Env = ChainMap[str, Any]
Checkpoint = str | Path | CheckpointStore


class _Skipped:
    def __repr__(self) -> str:
        return "<did not run>"


SKIPPED = _Skipped()


def run(plan: Plan, /, *, pool: BackendPool | None = None, run_id: str | None = None,
        checkpoint: Checkpoint | None = None, on_event: Listener | None = None,
        **inputs: Any) -> RunResult:
    """Run a plan to completion and return its result (see ``arun``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(plan, pool=pool, run_id=run_id, checkpoint=checkpoint,
                                on_event=on_event, **inputs))
    raise OrlaError("orla.run was called inside a running event loop; use `await orla.arun(...)`.")


def resume(plan: Plan, run_id: str, /, *, checkpoint: Checkpoint,
           pool: BackendPool | None = None, on_event: Listener | None = None) -> RunResult:
    """Continue run ``run_id`` from its checkpoints (see ``aresume``)."""
    inputs = inputs_of(open_store(checkpoint), run_id)
    return run(plan, pool=pool, run_id=run_id, checkpoint=checkpoint, on_event=on_event,
               **inputs)


async def aresume(plan: Plan, run_id: str, /, *, checkpoint: Checkpoint,
                  pool: BackendPool | None = None,
                  on_event: Listener | None = None) -> RunResult:
    """Continue run ``run_id`` from its checkpoints, with the inputs it started with: no
    stage it completed runs again (a finished run gives its result again)."""
    inputs = inputs_of(open_store(checkpoint), run_id)
    return await arun(plan, pool=pool, run_id=run_id, checkpoint=checkpoint,
                      on_event=on_event, **inputs)


async def arun(plan: Plan, /, *, pool: BackendPool | None = None, run_id: str | None = None,
               checkpoint: Checkpoint | None = None, on_event: Listener | None = None,
               **inputs: Any) -> RunResult:
    """Run a plan once with ``inputs``. Backends come from ``pool`` (shared between runs),
    or from a pool started and closed for this run. ``on_event`` receives the run's
    events as they happen (see ``orla_sdk.runtime.events``).

    ``checkpoint`` (a SQLite file path, or a ``CheckpointStore``) makes the run durable:
    each completed stage's value is stored as it completes, and a later call with the same
    ``run_id`` (or ``orla.resume``) continues the run without running those stages again.
    """
    if not plan.runnable:
        raise OrlaError(f"plan {plan.name!r} was read from another framework's app, for "
                        "passes and diagrams; orla.run cannot run it: run the app itself, "
                        "served by orla with orla.serve(app).")
    layout = layout_of(plan)
    values = _bind_inputs(plan, layout.inputs, inputs)
    durable = _durable(checkpoint, plan, run_id, inputs) if checkpoint is not None else None
    run_id = run_id or secrets.token_hex(6)  # 12 hex digits, as uuid4's first 12: cheaper
    own_pool = pool is None
    if pool is not None and not pool.started:
        raise OrlaError("the pool passed to orla.arun is not started; open it with "
                        "`async with orla.BackendPool(plan.backends) as pool:`.")
    if pool is None:
        pool = BackendPool(plan.backends)
        try:
            await pool.start()
        except BaseException:
            await pool.aclose()  # engines it already started must not outlive the error
            raise
    result = RunResult(run_id=run_id, workflow=plan.name)
    state = RunState(run_id, plan, pool, asyncio.get_running_loop(), Emitter(run_id, on_event),
                     durable=durable, warnings=result.warnings)
    try:
        env = await _Executor(plan, layout, state, result).run_scope(None, ChainMap(values),
                                                                     ())
        result.output = env.get("output")
    except StageFailed as exc:
        result.error = str(exc)
    finally:
        try:
            result.cache_log += pool.memory.take_log(run_id) + await pool.memory.end_run(run_id)
            pool.end_run(run_id)
        except OrlaError as exc:
            result.cache_log.append(failed_cache_action(exc))
        finally:
            if own_pool:
                await pool.aclose()
    if durable is not None and (warning := durable.finish(result.output, result.error)):
        result.warnings.append(warning)
    state.emit("run_end", result=result)
    if state.emit.error:
        result.warnings.append(state.emit.error)
    return result


def _durable(checkpoint: Checkpoint, plan: Plan, run_id: str | None,
             inputs: dict[str, Any]) -> Durable:
    if run_id is None:
        raise OrlaError("a durable run needs a run_id to be resumed by; pass "
                        "orla.run(plan, run_id=..., checkpoint=...) (`orla run ... --run-id "
                        "ID --checkpoint FILE` on the command line).")
    return Durable.begin(open_store(checkpoint), plan, run_id, inputs)


def _bind_inputs(plan: Plan, input_nodes: list[Node], inputs: dict[str, Any]
                 ) -> dict[str, Any]:
    nodes = {n.label: n for n in input_nodes}
    unknown = sorted(set(inputs) - set(nodes))
    if unknown:
        raise OrlaError(f"workflow {plan.name!r} has no input(s) {unknown}; its inputs are "
                        f"{sorted(nodes)}.")
    values: dict[str, Any] = {}
    for name, node in nodes.items():
        if name in inputs:
            values[node.id] = inputs[name]
        elif "default" in node.kwargs:
            values[node.id] = node.kwargs["default"]
        else:
            raise OrlaError(f"workflow {plan.name!r} needs input {name!r}; pass "
                            f"orla.run(plan, {name}=...).")
    return values


class _Executor:
    def __init__(self, plan: Plan, layout: Layout, state: RunState, result: RunResult) -> None:
        self.plan = plan
        self.state = state
        self.result = result
        self.layout = layout
        self.bodies: dict[str, Body] = {}

    async def run_scope(self, scope: str | None, env: Env, items: tuple[int, ...]) -> Env:
        """Run the nodes of one scope (the top level, or one item of a map: ``items`` are
        its indices in the maps around it, outermost first). A node starts once the last
        node it waits for has finished: in the task that finished it, or where that made
        several nodes ready, the others in tasks of their own."""
        start, ready_at_start = self.layout.starts.get(scope, ({}, []))
        waiting = dict(start)

        def finish(node: Node) -> list[Node]:
            """The nodes whose last wait was ``node``."""
            ready = []
            for later in self.layout.dependents.get(node.id, ()):
                waiting[later.id] -= 1
                if not waiting[later.id]:
                    ready.append(later)
            return ready

        async def run_from(node: Node | None) -> None:
            while node is not None:
                # a stage without guards needs none of _node's checks: one frame fewer
                runs = self._stage if node.kind == "stage" and not node.guards else self._node
                try:
                    env.maps[0][node.id] = await runs(node, env, items)
                except StageFailed:
                    raise
                except Exception as exc:
                    raise StageFailed(node.id, exc) from exc
                ready = finish(node)
                for other in ready[1:]:
                    group.create_task(run_from(other))
                node = ready[0] if ready else None

        try:
            async with asyncio.TaskGroup() as group:
                for node in ready_at_start:
                    group.create_task(run_from(node))
        except BaseExceptionGroup as failures:
            raise _first_failure(failures) from None
        return env

    async def _node(self, node: Node, env: Env, items: tuple[int, ...]) -> Any:
        item = items[-1] if items else None
        if not self._guard_holds(node, env):
            if node.kind == "stage":
                record = StageRecord(node.id, node.label, "skipped", item)
                self.result.stages.append(record)
                self.state.emit("stage_end", node.id, record=record)
            return SKIPPED
        if node.kind == "branch":
            return self._branch(node, env, items)
        if node.kind == "map":
            return await self._map(node, env, items)
        if node.kind == "output":
            return resolve(node.args[0], env, self.plan) if node.args else None
        return await self._stage(node, env, items)

    def _guard_holds(self, node: Node, env: Env) -> bool:
        return not node.guards or any(guard_holds(guard, env) for guard in node.guards)

    # ---- branches and maps ------------------------------------------------------------
    def _branch(self, node: Node, env: Env, items: tuple[int, ...]) -> Any:
        args = [resolve(a, env, self.plan) for a in node.args]
        kwargs = {k: resolve(v, env, self.plan) for k, v in node.kwargs.items()}
        if node.test is not None and node.test.op == "call" and node.test.fn:
            value = self.plan.resolve(node.test.fn)(*args, **kwargs)
        else:
            value = args[0]
        choice = value.value if isinstance(value, enum.Enum) else value
        if choice not in node.choices:
            raise StageFailed(node.id, OrlaError(
                f"branch got {choice!r}, which is not one of its choices {node.choices}"))
        self.result.branches[_key(node, items)] = choice
        self.state.emit("branch", node.id, item=items[-1] if items else None, choice=choice)
        return choice

    async def _map(self, node: Node, env: Env, items: tuple[int, ...]) -> list[Env]:
        values = resolve(node.args[0], env, self.plan)
        if not isinstance(values, (list, tuple)):
            raise StageFailed(node.id, OrlaError(f"expected a list to map over, got "
                                                 f"{type(values).__name__}"))
        scopes = [env.new_child({node.id: value}) for value in values]
        return list(await asyncio.gather(
            *(self.run_scope(node.id, scope, (*items, i)) for i, scope in enumerate(scopes))))

    # ---- stages -------------------------------------------------------------------------
    async def _stage(self, node: Node, env: Env, items: tuple[int, ...]) -> Any:
        key = _key(node, items)
        spec = self.plan.stage_of(node)
        body = self._body_of(spec.ref)
        saved = (self.state.durable.stage(key, body.annotation) if self.state.durable
                 else None)
        if saved is not None:
            return self._restored(node, *saved)
        record = StageRecord(node.id, spec.name, item=items[-1] if items else None)
        self.result.stages.append(record)
        emit = self.state.emit
        if emit.active:  # spares building the event's keywords for nobody
            emit("stage_start", node.id, stage=spec.name, item=record.item)
        started = time.perf_counter()
        try:
            args = [resolve(a, env, self.plan) for a in node.args]
            kwargs = {k: resolve(v, env, self.plan) for k, v in node.kwargs.items()}
            ctx = StageContext(
                self.state, node, spec, record, *self._priority(node, body.fn, args, kwargs),
                tools={t.name: self.plan.resolve(t.ref) for t in spec.tools}, key=key)
            token = current_stage.set(ctx)
            try:
                value = await body.run(ctx, args, kwargs)
            finally:
                current_stage.reset(token)
            if self.state.durable:
                record.duration_s = time.perf_counter() - started
                self.state.durable.save_stage(key, value, record, body.annotation)
        except asyncio.CancelledError:
            record.status, record.error = "failed", "cancelled: another stage of the run failed"
            raise
        except Exception as exc:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            raise StageFailed(node.id, exc) from exc
        finally:
            record.duration_s = time.perf_counter() - started
            if record.status == "failed":
                emit("stage_end", node.id, record=record)
        await self._cache_action(node, spec, record)
        if emit.active:
            emit("stage_end", node.id, record=record, output=value)
        return value

    def _body_of(self, ref: str) -> Body:
        """The stage behind ``ref`` and how its body runs, looked up once a run."""
        found = self.bodies.get(ref)
        if found is None:
            found = self.bodies[ref] = Body.of(self.plan.resolve(ref))
        return found

    def _restored(self, node: Node, value: Any, record: StageRecord) -> Any:
        """A stage an earlier attempt of this run completed: its value and record."""
        self.result.stages.append(record)
        self.state.emit("stage_end", node.id, record=record, output=value)
        return value

    def _priority(self, node: Node, fn: Any, args: list[Any],
                  kwargs: dict[str, Any]) -> tuple[int, int]:
        note = priority_of(node) or NEUTRAL
        value = note.value
        if note.source == "runtime" and note.rule is not None:
            rule = PriorityRule.model_validate(note.rule)
            bound = _signature(fn).bind(*args, **kwargs).arguments
            value = rule.evaluate(dict(bound), self.plan.resolve)
        return value, note.critical_path

    async def _cache_action(self, node: Node, spec: StageSpec, record: StageRecord) -> None:
        hinted = spec.cache is not None
        entry = await self.state.pool.memory.stage_done(self.state.run_id, node, record,
                                                        hinted=hinted)
        if entry is not None:
            self.result.cache_log.append(entry)
            if self.state.emit.active:  # spares copying the entry into keywords
                self.state.emit("cache", node.id, **entry)


NEUTRAL = PriorityNote(source="graph")  # a stage without a priority note (notes are frozen)


def _key(node: Node, items: tuple[int, ...]) -> str:
    """A node's run inside maps: its id and item indices, outermost first (``answer[2]``)."""
    return node.id + "".join(f"[{i}]" for i in items) if items else node.id


_signature = functools.lru_cache(maxsize=1024)(inspect.signature)  # stages', asked every run


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real failure inside (possibly nested) task groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_failure(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


# ---- argument templates ----------------------------------------------------------------
def guard_holds(guard: list[Any], env: Env) -> bool:
    """All conditions hold: each branch ran and took one of the listed choices."""
    for condition in guard:
        branch, choices = _condition(condition)
        taken = env.get(branch, SKIPPED)
        if taken is SKIPPED or taken not in choices:
            return False
    return True


def _condition(condition: Any) -> tuple[str, list[Any]]:
    if isinstance(condition, dict):
        return condition["branch"], condition["choices"]
    return condition.branch, condition.choices


def resolve(template: Any, env: Env, plan: Plan) -> Any:
    """The concrete value of an argument template (see ``orla_sdk.ir``)."""
    if isinstance(template, list):
        return [resolve(t, env, plan) for t in template]
    if not isinstance(template, dict):
        return template
    if "$ref" in template:
        return _walk(_value_of(template["$ref"], env), template.get("path", []))
    if "$gather" in template:
        scopes = env.get(template["map"], [])
        values = [_walk(s[template["$gather"]], template.get("path", [])) for s in scopes
                  if s.get(template["$gather"], SKIPPED) is not SKIPPED]
        return values
    if "$oneof" in template:
        for alternative in template["$oneof"]:
            if not alternative["when"] or any(guard_holds(g, env) for g in alternative["when"]):
                return resolve(alternative["value"], env, plan)
        raise OrlaError("no alternative of a $oneof argument holds on this path")
    if "$tuple" in template:
        return tuple(resolve(t, env, plan) for t in template["$tuple"])
    if "$dict" in template:
        return {k: resolve(v, env, plan) for k, v in template["$dict"].items()}
    if "$enum" in template:
        return plan.resolve(template["$enum"])(template["value"])
    if "$model" in template:
        return plan.resolve(template["$model"]).model_validate(template["data"])
    return {k: resolve(v, env, plan) for k, v in template.items()}


def _value_of(node_id: str, env: Env) -> Any:
    for scope in env.maps:  # as ChainMap.get, which looks in every scope twice
        if node_id in scope:
            value = scope[node_id]
            break
    else:
        value = SKIPPED
    if value is SKIPPED:
        raise OrlaError(f"the output of {node_id!r} is needed but it did not run on this path")
    return value


def _walk(value: Any, path: list[Any]) -> Any:
    for step in path:
        value = value[step] if isinstance(step, int) or isinstance(value, dict) \
            else getattr(value, step)
    return value
