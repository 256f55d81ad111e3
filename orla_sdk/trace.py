"""The tracer: runs a workflow function on proxies and records the DAG it would run.

Stage calls return ``Proxy`` objects instead of running. When a proxy of a finite type
(bool, Literal, Enum, or such a field) is tested, the tracer picks a value for it and
remembers the choice; the workflow is then run again for every other choice, until all
paths are known. The paths are merged into one plan: nodes are identified by their call
site, and each node is guarded by the branch choices that lead to it.
"""

from __future__ import annotations

import asyncio
import dis
import enum
import inspect
import os
import sys
import typing
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from orla_sdk.context import active_tracer
from orla_sdk.errors import OrlaError, TraceError
from orla_sdk.ir import BranchTest
from orla_sdk.refs import ref_of
from orla_sdk.trace_checks import facts_of, line_of, none_tests_refused, try_refusal
from orla_sdk.typespec import (
    enumerate_values,
    field_annotation,
    item_annotation,
    json_choice,
    type_name,
)

if TYPE_CHECKING:
    from orla_sdk.stage import Stage

DEFAULT_MAX_PATHS = 256
MAX_LOOP_DECISIONS = 64
MAX_TESTS_PER_SITE = 10_000
MAX_NODES_PER_PATH = 100_000
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_EXAMPLES_DIR = _PACKAGE_DIR + "examples" + os.sep  # workflows shipped with orla: user code
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep

_GET_ITER = dis.opmap["GET_ITER"]  # the opcode of `for x in ...` and comprehensions
PathKey = tuple[Any, ...]
Decision = tuple[str, Any]  # (branch id, JSON choice)


# ---------------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------------
class Proxy:
    """Stands for a value a node will produce when the plan runs."""

    __slots__ = ("_orla_node", "_orla_path", "_orla_scope", "_orla_tracer", "_orla_type")
    _orla_tracer: Tracer
    _orla_node: str
    _orla_path: tuple[str | int, ...]
    _orla_type: Any
    _orla_scope: tuple[str, ...]

    def __init__(self, tracer: Tracer, node: str, path: tuple[str | int, ...],
                 annotation: Any, scope: tuple[str, ...]) -> None:
        object.__setattr__(self, "_orla_tracer", tracer)
        object.__setattr__(self, "_orla_node", node)
        object.__setattr__(self, "_orla_path", path)
        object.__setattr__(self, "_orla_type", annotation)
        object.__setattr__(self, "_orla_scope", scope)

    def _orla_child(self, key: str | int, annotation: Any) -> Proxy:
        return Proxy(self._orla_tracer, self._orla_node, (*self._orla_path, key), annotation,
                     self._orla_scope)

    def _orla_describe(self) -> str:
        where = self._orla_node + "".join(f".{p}" for p in self._orla_path)
        return f"`{where}` ({type_name(self._orla_type)})"

    def __getattr__(self, name: str) -> Proxy:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            annotation = field_annotation(self._orla_type, name)
        except KeyError:
            raise self._orla_tracer.misuse(
                self, f"reads attribute {name!r}",
                "only fields of a pydantic output can be read while tracing; annotate the "
                "stage's return type with a pydantic model that has this field") from None
        return self._orla_child(name, annotation)

    def __getitem__(self, key: Any) -> Proxy:
        item = item_annotation(self._orla_type)
        if item is None or not isinstance(key, int):
            raise self._orla_tracer.misuse(
                self, f"is indexed with {key!r}",
                "index only list outputs with an int, or pass the value to a stage")
        return self._orla_child(key, item)

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._orla_tracer.misuse(self, f"is assigned attribute {name!r}",
                                       "stage outputs are read-only; build new values in a stage")

    def __bool__(self) -> bool:
        return bool(self._orla_tracer.concrete(self, "is tested with `if`/`while`/`and`/`or`"))

    def __eq__(self, other: object) -> bool:
        return self._orla_tracer.equals(self, other, "is compared with ==")

    def __ne__(self, other: object) -> bool:
        return not self._orla_tracer.equals(self, other, "is compared with !=")

    def __hash__(self) -> int:
        if sys._getframe(1).f_code.co_filename.startswith(_ASYNCIO_DIR):
            raise self._orla_tracer.misuse(
                self, "is passed to asyncio (gather, wait or a task)",
                "await stages one by one; stages without a data dependency already run "
                "concurrently in the plan")
        return hash(self._orla_tracer.concrete(self, "is hashed (used as a key)"))

    def __iter__(self) -> Iterator[Proxy]:
        caller = sys._getframe(1)
        if caller.f_code.co_code[caller.f_lasti] != _GET_ITER:
            raise self._orla_tracer.misuse(
                self, "is passed to a function that iterates it (enumerate, zip, list(), "
                "unpacking)", "iterate over the list itself, `for item in items:`, to fan "
                "out; to number or pair items, do it inside a stage that returns the list")
        return self._orla_tracer.record_map(self)

    def __len__(self) -> int:
        raise self._orla_tracer.misuse(
            self, "is passed to len()",
            "pass the list to a stage, or iterate over it (`for item in items:`) to fan out")

    def __str__(self) -> str:
        raise self._orla_tracer.misuse(
            self, "is turned into a string (str() or an f-string)",
            "pass the value to a stage and build the text inside the stage")

    def __format__(self, spec: str) -> str:
        return self.__str__()

    def __repr__(self) -> str:
        return f"<orla proxy {self._orla_describe()}>"

    def __contains__(self, item: object) -> bool:
        raise self._orla_tracer.misuse(self, "is searched with `in`",
                                       "decide membership inside a stage, or use orla.cond")

    def __lt__(self, other: object) -> bool:
        raise self._orla_tracer.misuse(self, "is ordered with <, <=, > or >=",
                                       "use orla.cond(predicate, value) for such tests")

    __le__ = __gt__ = __ge__ = __lt__

    def __int__(self) -> int:
        raise self._orla_tracer.misuse(self, "is converted to a number",
                                       "do arithmetic inside a stage")

    __float__ = __index__ = __int__

    def __await__(self) -> Generator[Any, None, Proxy]:
        return self
        yield  # a generator that never suspends: `await proxy` evaluates to the proxy


# ---------------------------------------------------------------------------------
# Per-path records
# ---------------------------------------------------------------------------------
@dataclass
class Draft:
    """What every path agrees on about a node (first seen wins)."""

    kind: Literal["input", "stage", "branch", "map", "output"]
    label: str
    site: str | None
    scope: str | None
    annotation: Any = Any
    stage: Stage[Any, Any] | None = None
    test: BranchTest | None = None
    choices: list[Any] = field(default_factory=list)
    py_choices: list[Any] = field(default_factory=list)


@dataclass
class Visit:
    """A node's appearance on one path: the decisions before it, and its arguments."""

    prefix: tuple[Decision, ...]
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass
class PathRecord:
    choices: dict[str, Any] = field(default_factory=dict)
    visits: dict[str, Visit] = field(default_factory=dict)


@dataclass
class Frontier:
    """One run's decisions as (branch id, index taken, number of choices)."""

    taken: list[tuple[str, int, int]] = field(default_factory=list)

    def next_forced(self) -> list[tuple[str, int]] | None:
        """The decisions that lead to the next unexplored path, depth first."""
        for i in range(len(self.taken) - 1, -1, -1):
            branch, index, count = self.taken[i]
            if index + 1 < count:
                return [(b, n) for b, n, _ in self.taken[:i]] + [(branch, index + 1)]
        return None


# ---------------------------------------------------------------------------------
# The tracer
# ---------------------------------------------------------------------------------
class Tracer:
    def __init__(self, workflow_name: str, workflow_code: CodeType) -> None:
        self.workflow_name = workflow_name
        self.workflow_code = workflow_code
        self.drafts: dict[str, Draft] = {}
        self.key_to_id: dict[PathKey, str] = {}
        self.paths: list[PathRecord] = []
        self.objects: dict[str, Any] = {}
        self.input_types: dict[str, Any] = {}
        self.suffixes: dict[str, int] = {}
        self.refusals: list[TraceError] = []
        self.stages_by_ref: dict[str, Stage[Any, Any]] = {}
        self._reset_path([])

    def _reset_path(self, forced: list[tuple[str, int]]) -> None:
        self.forced = forced
        self.frontier = Frontier()
        self.path = PathRecord()
        self.values: dict[str, Any] = {}
        self.occurrences: dict[PathKey, int] = {}
        self.loop_decisions: dict[PathKey, int] = {}
        self.value_branches: dict[tuple[str, tuple[str | int, ...]], str] = {}
        self.tests_at_site: dict[PathKey, int] = {}
        self.scope: tuple[str, ...] = ()
        self.round = 0
        self.last_event = -1

    # ---- running the workflow once per path ----------------------------------------
    def run_all(self, fn: Callable[..., Any], params: list[inspect.Parameter],
                max_paths: int) -> None:
        self.input_types = _type_hints(fn)
        forced: list[tuple[str, int]] | None = []
        while forced is not None:
            if len(self.paths) >= max_paths:
                raise self._too_many_paths(max_paths)
            self._reset_path(forced)
            self._run_once(fn, params)
            self.paths.append(self.path)
            forced = self.frontier.next_forced()

    def _run_once(self, fn: Callable[..., Any], params: list[inspect.Parameter]) -> None:
        inputs = {p.name: self._input_proxy(p) for p in params}
        token = active_tracer.set(self)
        try:
            with none_tests_refused(self.workflow_code.co_filename, _is_user_code,
                                    _is_traced_value):
                result = fn(**inputs)
                if inspect.iscoroutine(result):
                    result = _drive(result, self.workflow_name)
        except OrlaError:
            raise
        except Exception as exc:
            raise TraceError(
                f"{_raised_at(exc)}: workflow {self.workflow_name!r} raised "
                f"{type(exc).__name__}: {exc} while it was traced. Fix: the workflow function "
                "runs once per branch path at compile time; make it run without the stages' "
                "real outputs, and keep other work inside stages.") from exc
        finally:
            active_tracer.reset(token)
        if self.refusals:
            raise self.refusals[0]
        if self.scope:
            loop = self.drafts[self.scope[-1]]
            raise TraceError(
                f"{loop.site}: workflow {self.workflow_name!r} left the loop over "
                f"`{loop.label}` early (break or return inside it). Fix: "
                "a map runs every item; filter the list in a stage before the loop instead.")
        self._visit(("output",), Draft("output", "output", None, None),
                    [self.template(result, "the return value")], {})

    def _input_proxy(self, param: inspect.Parameter) -> Proxy:
        annotation = self.input_types.get(param.name, Any)
        draft = Draft("input", param.name, None, None, annotation=annotation)
        default = {} if param.default is param.empty else {
            "default": self.template(param.default, f"the default of input {param.name!r}")}
        node_id = self._visit(("input", param.name), draft, [], default,
                              preferred=f"input:{param.name}")
        return Proxy(self, node_id, (), annotation, ())

    # ---- recording nodes ------------------------------------------------------------
    def _visit(self, key: PathKey, draft: Draft, args: list[Any], kwargs: dict[str, Any],
               preferred: str | None = None) -> str:
        node_id = self.key_to_id.get(key)
        if node_id is None:
            node_id = self._fresh_id(preferred or draft.label, draft.kind)
            self.key_to_id[key] = node_id
            self.drafts[node_id] = draft
        prefix = tuple((b, json_choice(self.values[b])) for b, _, _ in self.frontier.taken)
        self.path.visits[node_id] = Visit(prefix, args, kwargs)
        if len(self.path.visits) > MAX_NODES_PER_PATH:
            raise self.refuse(
                f"workflow {self.workflow_name!r} makes more than "
                f"{MAX_NODES_PER_PATH} calls on one path. Fix: iterate over a list output to "
                "fan out (one map node) instead of unrolling a long loop in Python.")
        return node_id

    def _fresh_id(self, base: str, kind: str) -> str:
        """``base``, else ``base_2``, ``base_3``, ... in the order call sites are met."""
        if base not in self.drafts and (base != "output" or kind == "output"):
            return base
        n = self.suffixes.get(base, 1) + 1
        while f"{base}_{n}" in self.drafts:
            n += 1
        self.suffixes[base] = n
        return f"{base}_{n}"

    def _occurrence_key(self, kind: str, site: PathKey) -> PathKey:
        count = self.occurrences.get(site, 0) + 1
        self.occurrences[site] = count
        return (kind, site, count)

    def record_stage(self, stage: Stage[Any, Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Proxy:
        for frame in self._user_frames():
            if frame.f_lineno in facts_of(frame.f_code.co_filename).guarded_lines:
                raise self.refuse(try_refusal(stage.name), at=frame)
        self._check_one_stage_per_function(stage)
        site, where = self._call_site()
        # one node per (call site, stage): `HANDLERS[kind](x)` calls different stages
        # from one site, each under its own guard
        key = self._occurrence_key("stage", (*site, stage.spec().ref))
        what = f"an argument of stage {stage.name!r}"
        arg_templates = [self.template(a, what) for a in args]
        kwarg_templates = {k: self.template(v, what) for k, v in kwargs.items()}
        annotation = stage.output_annotation
        draft = Draft("stage", stage.name, where, self._scope_id(), annotation=annotation,
                      stage=stage)
        node_id = self._visit(key, draft, arg_templates, kwarg_templates)
        return Proxy(self, node_id, (), annotation, self.scope)

    def _check_one_stage_per_function(self, stage: Stage[Any, Any]) -> None:
        """A plan names a stage by its function: two @orla.stage wrappers of one
        function would become one stage, with the settings of the first."""
        ref = stage.spec().ref
        seen = self.stages_by_ref.setdefault(ref, stage)
        if seen is not stage and seen.spec() != stage.spec():
            raise self.refuse(
                f"function {ref} is wrapped by two @orla.stage declarations with different "
                f"settings (models {seen.model!r} and {stage.model!r}), and a plan names "
                "stages by their function. Fix: give each declaration a function of its own "
                "(a thin wrapper that calls the shared one).")

    def record_cond(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], choices: list[Any], annotation: Any) -> Proxy:
        site, where = self._call_site()
        key = self._occurrence_key("cond", site)
        ref = ref_of(fn)
        self.objects[ref] = fn
        what = f"an argument of orla.cond/switch({fn.__name__})"
        draft = Draft("branch", fn.__name__, where, self._scope_id(), annotation=annotation,
                      test=BranchTest(op="call", fn=ref),
                      choices=[json_choice(c) for c in choices], py_choices=list(choices))
        arg_templates = [self.template(a, what) for a in args]
        kwarg_templates = {k: self.template(v, what) for k, v in kwargs.items()}
        node_id = self._visit(key, draft, arg_templates, kwarg_templates,
                              preferred=f"branch:{fn.__name__}")
        return Proxy(self, node_id, (), annotation, self.scope)

    def record_is_none(self, value: Proxy) -> Proxy:
        """``orla.is_none(value)``: a branch, decided once per path like a value test."""
        tested = (f"is_none {value._orla_node}", value._orla_path)
        node_id = self.value_branches.get(tested)
        if node_id is not None:
            return Proxy(self, node_id, (), bool, self.scope)
        proxy = self.record_cond(value_is_none, (value,), {}, [True, False], bool)
        self.value_branches[tested] = proxy._orla_node
        return proxy

    def record_map(self, items: Proxy) -> Iterator[Proxy]:
        item = item_annotation(items._orla_type)
        if item is None:
            raise self.misuse(items, "is iterated over",
                              "only lists fan out; annotate the value as list[...] (a stage's "
                              "return type or a workflow input), or loop over range(N)")
        site, where = self._call_site()
        key = self._occurrence_key("map", site)
        label = items._orla_node + "".join(f".{p}" for p in items._orla_path)
        draft = Draft("map", label, where, self._scope_id(), annotation=item)
        node_id = self._visit(key, draft, [self.template(items, "the list being mapped")], {},
                              preferred=f"map:{label}")
        return self._map_iterator(node_id, item)

    def _map_iterator(self, node_id: str, item: Any) -> Iterator[Proxy]:
        self.scope = (*self.scope, node_id)
        yield Proxy(self, node_id, (), item, self.scope)
        self.scope = self.scope[:-1]

    def _scope_id(self) -> str | None:
        return self.scope[-1] if self.scope else None

    # ---- branching -----------------------------------------------------------------
    def concrete(self, proxy: Proxy, what: str) -> Any:
        """The value a finite-typed proxy has on the path being traced."""
        site, where = self._call_site()
        self._count_test(site)
        source = self.drafts[proxy._orla_node]
        if source.kind == "branch" and not proxy._orla_path:
            return self._decide(proxy._orla_node, site)
        choices = enumerate_values(proxy._orla_type)
        if choices is None:
            raise self.misuse(proxy, what, _BRANCH_FIX)
        branch_id = self._value_branch(proxy, choices, site, where)
        return self._decide(branch_id, site)

    def equals(self, proxy: Proxy, other: object, what: str) -> bool:
        """``proxy == other`` on this path; comparing with a value it never takes is a bug."""
        value = self.concrete(proxy, what)
        if not isinstance(other, Proxy):
            possible = self._possible_values(proxy)
            if other not in possible:
                raise self.misuse(proxy, f"is compared with {other!r}",
                                  f"compare with one of {possible}",
                                  why="that is not a value its type allows")
        return bool(value == other)

    def _possible_values(self, proxy: Proxy) -> list[Any]:
        source = self.drafts[proxy._orla_node]
        if source.kind == "branch" and not proxy._orla_path:
            return source.py_choices
        return enumerate_values(proxy._orla_type) or []

    def _value_branch(self, proxy: Proxy, choices: list[Any], site: PathKey,
                      where: str | None) -> str:
        """The branch node that switches on this proxy's value: one per site where the
        value is first tested on a path; later tests on the path reuse that decision.
        (One node for every site would be decided in a different order on different
        paths, and guards on it could then form a cycle.)"""
        value = (proxy._orla_node, proxy._orla_path)
        decided = self.value_branches.get(value)
        if decided is not None:
            return decided
        label = proxy._orla_node + "".join(f".{p}" for p in proxy._orla_path)
        draft = Draft("branch", label, where, self._scope_id(), annotation=proxy._orla_type,
                      test=BranchTest(op="value"), choices=[json_choice(c) for c in choices],
                      py_choices=choices)
        key = self._occurrence_key("branch", (*site, value))
        node_id = self._visit(key, draft, [self.template(proxy, "a branch")], {},
                              preferred=f"branch:{label}")
        self.value_branches[value] = node_id
        return node_id

    def _decide(self, branch_id: str, site: PathKey) -> Any:
        if branch_id in self.values:
            return self.values[branch_id]
        draft = self.drafts[branch_id]
        position = len(self.frontier.taken)
        index = 0
        if position < len(self.forced):
            expected, index = self.forced[position]
            if expected != branch_id:
                raise self._nondeterministic(expected, branch_id)
        self.frontier.taken.append((branch_id, index, len(draft.py_choices)))
        self.values[branch_id] = draft.py_choices[index]
        self.path.choices[branch_id] = draft.choices[index]
        place = site[1:]  # the call stack without the loop round: the same line every round
        self.loop_decisions[place] = self.loop_decisions.get(place, 0) + 1
        if self.loop_decisions[place] > MAX_LOOP_DECISIONS:
            raise self._unbounded_loop()
        return draft.py_choices[index]

    def _count_test(self, site: PathKey) -> None:
        place = site[1:]
        self.tests_at_site[place] = self.tests_at_site.get(place, 0) + 1
        if self.tests_at_site[place] > MAX_TESTS_PER_SITE:
            raise self._unbounded_loop()

    # ---- argument templates ----------------------------------------------------------
    def template(self, value: Any, what: str) -> Any:
        """Encode a value passed to a node as a JSON template (see ``orla_sdk.ir``)."""
        if isinstance(value, Proxy):
            return self._ref(value, what)
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, enum.Enum):
            return {"$enum": ref_of(type(value)), "value": value.value}
        if isinstance(value, BaseModel):
            return {"$model": ref_of(type(value)), "data": value.model_dump(mode="json")}
        if isinstance(value, list) and len(value) == 1 and self._is_closed(value[0]):
            return self._gather(value[0], what)
        if isinstance(value, (list, tuple)):
            items = [self.template(v, what) for v in value]
            return items if isinstance(value, list) else {"$tuple": items}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            encoded = {k: self.template(v, what) for k, v in value.items()}
            return {"$dict": encoded} if any(k.startswith("$") for k in value) else encoded
        raise self.refuse(
            f"{what} is a {type(value).__name__}, which a plan cannot carry. "
            "Fix: pass JSON-like values (str, numbers, lists, dicts), enums, pydantic models "
            "or stage outputs; build other objects inside the stage.")

    def _ref(self, proxy: Proxy, what: str) -> dict[str, Any]:
        if self._is_closed(proxy):
            raise self.misuse(proxy, f"is used as {what} outside the loop that produced it",
                              "collect per-item results in a list: "
                              "`results = [stage(item) for item in items]`")
        ref: dict[str, Any] = {"$ref": proxy._orla_node}
        if proxy._orla_path:
            ref["path"] = list(proxy._orla_path)
        return ref

    def _gather(self, proxy: Proxy, what: str) -> dict[str, Any]:
        scope = proxy._orla_scope
        if scope[:-1] != self.scope[: len(scope) - 1]:
            raise self.misuse(proxy, f"is used as {what} outside the loop that produced it",
                              "gather it in the scope right around its loop")
        ref: dict[str, Any] = {"$gather": proxy._orla_node, "map": scope[-1]}
        if proxy._orla_path:
            ref["path"] = list(proxy._orla_path)
        return ref

    def _is_closed(self, value: Any) -> bool:
        """A proxy made inside a loop body that has ended."""
        if not isinstance(value, Proxy):
            return False
        scope = value._orla_scope
        return self.scope[: len(scope)] != scope

    # ---- sites and errors ------------------------------------------------------------
    def _user_frames(self) -> Iterator[FrameType]:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if _is_user_code(frame.f_code.co_filename):
                yield frame
                if frame.f_code is self.workflow_code:
                    return
            frame = frame.f_back

    def _call_site(self) -> tuple[PathKey, str | None]:
        """A key for the call stack from the workflow down, and "module:line" of the caller.

        Each call counts as an event of the workflow function. When its instruction lies
        before the previous event's, a loop in the workflow went round again: the key then
        carries the round, so the k-th call at a site inside a branch of a loop is told
        apart by its round, the same on every path.
        """
        key: list[Any] = []
        where = None
        for frame in self._user_frames():
            if where is None:
                where = f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"
            key.append((frame.f_code.co_filename, frame.f_lasti))
            if frame.f_code is self.workflow_code:
                if frame.f_lasti < self.last_event:
                    self.round += 1
                self.last_event = frame.f_lasti
        return (self.round, *key), where

    def _where(self) -> str:
        for frame in self._user_frames():
            return line_of(frame)
        return f"workflow {self.workflow_name!r}"

    def refuse(self, why_and_fix: str, at: FrameType | None = None) -> TraceError:
        """An error at the workflow's current line (or ``at``'s). It is also kept, and
        raised when the path ends, in case the workflow's own `except` swallows it."""
        error = TraceError(f"{line_of(at) if at else self._where()}: {why_and_fix}")
        self.refusals.append(error)
        return error

    def misuse(self, proxy: Proxy, what: str, fix: str,
               why: str = "it has no value until the plan runs") -> TraceError:
        return self.refuse(f"the value {proxy._orla_describe()} {what} while workflow "
                           f"{self.workflow_name!r} is traced, but {why}. Fix: {fix}.")

    def _too_many_paths(self, max_paths: int) -> TraceError:
        branches = sorted({b for p in self.paths for b in p.choices})
        return TraceError(
            f"workflow {self.workflow_name!r} has more than {max_paths} paths through its "
            f"branches ({', '.join(branches)}). Fix: raise max_paths in orla.compile(...), "
            "fold related tests into one orla.switch(...), or bound loops with range(N).")

    def _nondeterministic(self, expected: str, found: str) -> TraceError:
        return self.refuse(
            f"workflow {self.workflow_name!r} took a different route on a "
            f"re-run with the same choices (expected to decide {expected!r}, reached "
            f"{found!r}). Fix: keep randomness, clocks and I/O out of the workflow function; "
            "do such work inside stages.")

    def _unbounded_loop(self) -> TraceError:
        return self.refuse(
            f"a loop in workflow {self.workflow_name!r} keeps testing stage "
            "outputs with no bound. Fix: loop over `range(N)` and `break` on the model's "
            "answer, so the plan has at most N rounds.")


_BRANCH_FIX = (
    "branch only on a bool, Literal or Enum output (or such a field of a pydantic output); "
    "for other predicates use orla.cond(predicate, value) or orla.switch(selector, value, "
    "cases=[...])")


def _is_traced_value(value: Any, called: bool) -> bool:
    """A proxy, or a stage that is called (the call returns a proxy)."""
    from orla_sdk.stage import Stage

    return isinstance(value, Proxy) or (called and isinstance(value, Stage))


def _raised_at(exc: BaseException) -> str:
    """"file:line" of the innermost frame of the traceback outside orla_sdk."""
    where = "?"
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(_EXAMPLES_DIR) or not filename.startswith(_PACKAGE_DIR):
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: treat as untyped
        return {}



def _drive(coro: Any, name: str) -> Any:
    """Run an async workflow body whose awaits are all stage proxies (they never suspend)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except RuntimeError as exc:
        if "event loop" not in str(exc):
            raise
    else:
        coro.close()
    raise TraceError(
        f"async workflow {name!r} awaited something other than a stage while traced "
        "(asyncio.gather, sleep, I/O). Fix: await stages directly; stages without a data "
        "dependency already run concurrently in the plan.")


# ---------------------------------------------------------------------------------
# Public tracing API
# ---------------------------------------------------------------------------------
def cond(predicate: Callable[..., bool], *args: Any, **kwargs: Any) -> bool:
    """A two-way branch on ``predicate(*args)``, for tests the tracer cannot enumerate."""
    tracer = active_tracer.get()
    if tracer is None:
        return bool(predicate(*args, **kwargs))
    return tracer.record_cond(predicate, args, kwargs, [True, False], bool)  # type: ignore[return-value]


def is_none(value: Any) -> bool:
    """``value is None``, as a branch the plan tests when it runs (``is`` itself cannot be
    traced): ``if orla.is_none(order.coupon): ...``."""
    tracer = active_tracer.get()
    if tracer is None or not isinstance(value, Proxy):
        return value is None
    return tracer.record_is_none(value)  # type: ignore[return-value]


def value_is_none(value: Any) -> bool:
    return value is None


def switch(selector: Callable[..., Any], *args: Any, cases: Sequence[Any],
           **kwargs: Any) -> Any:
    """A many-way branch: ``selector(*args)`` must return one of ``cases``."""
    if not cases:
        raise OrlaError("orla.switch needs at least one case; pass cases=[...].")
    tracer = active_tracer.get()
    if tracer is None:
        value = selector(*args, **kwargs)
        if value not in cases:
            raise OrlaError(f"orla.switch: {selector.__name__} returned {value!r}, "
                            f"which is not one of the cases {list(cases)}.")
        return value
    annotation = Literal.__getitem__(tuple(json_choice(c) for c in cases))
    return tracer.record_cond(selector, args, kwargs, list(cases), annotation)


def _is_user_code(filename: str) -> bool:
    """Whether a frame is the workflow's own, not orla's machinery or asyncio's."""
    return (filename.startswith(_EXAMPLES_DIR)
            or not filename.startswith((_PACKAGE_DIR, _ASYNCIO_DIR)))
