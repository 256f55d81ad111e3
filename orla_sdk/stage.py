"""The ``@stage`` decorator: marks a function whose body talks to a model."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from orla_sdk.context import active_tracer
from orla_sdk.errors import OrlaError
from orla_sdk.ir import Param, PriorityRule, StageSpec
from orla_sdk.refs import ref_of
from orla_sdk.tools import tool_spec
from orla_sdk.typespec import return_spec, type_spec

P = ParamSpec("P")
R = TypeVar("R")

PriorityHint = int | PriorityRule | Callable[..., int] | None


class Stage(Generic[P, R]):
    """A function marked with ``@stage``.

    Outside a traced workflow, calling it simply calls the function. While a workflow is
    traced, calling it records a stage node and returns a proxy for its output.
    """

    def __init__(self, fn: Callable[P, R], *, model: str | None, cache: str | None,
                 tools: Sequence[Callable[..., Any]], priority: PriorityHint,
                 name: str | None, alternatives: Sequence[str] = (),
                 agent: str | None = None, blocking: bool = False) -> None:
        if not inspect.isfunction(fn):
            raise OrlaError(
                f"@orla.stage decorates functions, not {type(fn).__name__} objects. Fix: "
                "decorate a function that calls it, e.g. `@orla.stage(...) def ask(x): "
                "return obj(x)`; for a staticmethod, put @staticmethod above @orla.stage.")
        self.fn: Callable[P, R] = fn
        self.name = name or fn.__name__
        self.model = model
        self.cache = cache
        self.agent = agent
        self.tools = list(tools)
        self.priority = priority
        self.alternatives = list(alternatives)
        self.blocking = blocking
        self._spec: StageSpec | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        tracer = active_tracer.get()
        if tracer is None:
            return self.fn(*args, **kwargs)
        return tracer.record_stage(self, args, kwargs)  # type: ignore[return-value]

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        """A stage defined as a method (its first parameter is ``self``): plain calls get
        the instance; a plan cannot carry it. A stage merely stored on a class stays as is."""
        if instance is None or next(iter(inspect.signature(self.fn).parameters), "") != "self":
            return self
        return functools.partial(self._call_method, instance)

    def _call_method(self, instance: object, *args: Any, **kwargs: Any) -> Any:
        tracer = active_tracer.get()
        if tracer is not None:
            raise tracer.refuse(
                f"stage {self.name!r} is a method of {type(instance).__name__}, and a plan "
                "cannot carry `self`. Fix: define the stage as a function (or a "
                "@staticmethod above @orla.stage) and pass what it needs from the object "
                "as arguments.")
        return self.fn(instance, *args, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<orla stage {self.name} model={self.model!r}>"

    @functools.cached_property
    def output_annotation(self) -> Any:
        """The return annotation, resolved (``Any`` when absent or unresolvable)."""
        try:
            return typing.get_type_hints(self.fn).get("return", Any)
        except Exception:
            return Any

    def spec(self) -> StageSpec:
        """The serializable description the plan carries (computed once, on first use)."""
        if self._spec is None:
            self._spec = StageSpec(
                name=self.name, ref=ref_of(self.fn), is_async=inspect.iscoroutinefunction(self.fn),
                model=self.model, cache=self.cache, agent=self.agent,
                priority=_priority_value(self.priority),
                tools=[tool_spec(t) for t in self.tools], alternatives=self.alternatives,
                params=_params(self.fn),
                output=return_spec(self.fn), site=_definition_site(self.fn),
                doc=(inspect.getdoc(self.fn) or "").split("\n\n")[0],
            )
        return self._spec


@overload
def stage(fn: Callable[P, R], /) -> Stage[P, R]: ...


@overload
def stage(*, model: str | None = None, cache: str | None = None,
          tools: Sequence[Callable[..., Any]] = (), priority: PriorityHint = None,
          name: str | None = None, alternatives: Sequence[str] = (), agent: str | None = None,
          blocking: bool = False) -> Callable[[Callable[P, R]], Stage[P, R]]: ...


def stage(fn: Callable[P, R] | None = None, /, *, model: str | None = None,
          cache: str | None = None, tools: Sequence[Callable[..., Any]] = (),
          priority: PriorityHint = None, name: str | None = None,
          alternatives: Sequence[str] = (), agent: str | None = None, blocking: bool = False
          ) -> Stage[P, R] | Callable[[Callable[P, R]], Stage[P, R]]:
    """Mark a function as a stage of a workflow.

    model: logical model name, resolved by the plan's mapping ("light", "heavy", ...).
    cache: "preserve" or "flush" to override the cache-span pass for this stage.
    tools: plain functions the model may call while this stage runs.
    priority: 0..100 (higher is served first), a rule from ``priority_by``, or a
        function of the stage's arguments returning such a number at run time.
    alternatives: logical models to reroute to when the mapped backend's queue passes
        its ``queue_bound`` (see ``orla.Scheduling``).
    agent: the agent whose calls these are. The agent layer keys its observations by it
        (by the stage name where none is given), and a declared agent holds a llama.cpp
        slot of its own in each run instead of sharing the run's.
    blocking: the body of a plain ``def`` stage blocks (sleeps, waits on I/O outside
        orla): run it in a worker thread. Other sync bodies run on the event loop's thread
        between their model calls (see ``orla_sdk.runtime.bodies``).
    """

    def wrap(f: Callable[P, R]) -> Stage[P, R]:
        return Stage(f, model=model, cache=cache, tools=tools, priority=priority, name=name,
                     alternatives=alternatives, agent=agent, blocking=blocking)

    return wrap(fn) if fn is not None else wrap


def priority_by(arg: str, field: str = "", *, values: dict[str, int],
                default: int = 50) -> PriorityRule:
    """Priority looked up at run time from an argument (or a field of it).

    ``priority_by("t", "category", values={"billing": 90, "general": 20})`` runs billing
    tickets before general ones.
    """
    path = [p for p in field.split(".") if p]
    return PriorityRule(kind="field", arg=arg, path=path, values=values, default=default)


def _priority_value(priority: PriorityHint) -> int | PriorityRule | None:
    if priority is None or isinstance(priority, (int, PriorityRule)):
        return priority
    return PriorityRule(kind="call", fn=ref_of(priority))


def _params(fn: Callable[..., Any]) -> list[Param]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    return [
        Param(name=p.name, kind=p.kind.name.lower(),
              required=p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD),
              type=type_spec(hints.get(p.name, p.empty)))
        for p in inspect.signature(fn).parameters.values()
    ]


def _definition_site(fn: Callable[..., Any]) -> str | None:
    code = getattr(fn, "__code__", None)
    return f"{fn.__module__}:{code.co_firstlineno}" if code else None
