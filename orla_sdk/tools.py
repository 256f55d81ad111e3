"""Describe plain Python functions as tools a model may call."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from orla_sdk.errors import OrlaError
from orla_sdk.ir import ToolSpec
from orla_sdk.refs import ref_of
from orla_sdk.signatures import arguments_model

F = TypeVar("F", bound=Callable[..., Any])


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(*, effect: bool = False, pure: bool = False,
         ttl: float | None = None) -> Callable[[F], F]: ...


def tool(fn: F | None = None, /, *, effect: bool = False, pure: bool = False,
         ttl: float | None = None) -> F | Callable[[F], F]:
    """Mark a function as a tool; it stays a plain function.

    pure=True: equal arguments give an equal result, so the agent layer's memoization
    (``orla_sdk.agents.MemoizeTools``) may give an earlier call's result again; ``ttl``
    (seconds) also makes it pure, for that long (a price, a stock level).

    effect=True: calling it changes the world (charges a card, sends an e-mail). Each call
    a model makes gets a key from (run, stage, model conversation, turn, call index, tool);
    in a durable run (``checkpoint=``) its result is recorded before the model sees it, and
    the resumed run gets the recorded result instead of calling it again. A call past its
    deadline is not made again with the same arguments. A tool that declares a parameter
    ``idempotency_key`` receives the key (to pass on to a payment API, say).
    """

    if effect and (pure or ttl is not None):
        raise OrlaError("a tool with effects cannot be pure: its calls change the world, so "
                        "an earlier result is no answer to a new call. Fix: drop pure/ttl, or "
                        "effect=True.")

    def mark(f: F) -> F:
        f.__orla_effect__ = effect  # type: ignore[attr-defined]
        f.__orla_pure__ = pure or ttl is not None  # type: ignore[attr-defined]
        f.__orla_ttl__ = ttl  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def has_effect(fn: Callable[..., Any]) -> bool:
    return bool(getattr(fn, "__orla_effect__", False))


def tool_spec(fn: Callable[..., Any]) -> ToolSpec:
    """A tool's name, first docstring paragraph and JSON schema of its parameters."""
    if not callable(fn):
        raise OrlaError(f"tool {fn!r} is not callable; pass the function itself.")
    schema = arguments_model(fn).model_json_schema()
    schema.pop("title", None)
    schema.pop("additionalProperties", None)
    doc = inspect.getdoc(fn) or ""
    return ToolSpec(name=fn.__name__, ref=ref_of(fn), description=doc.split("\n\n")[0],
                    parameters=schema, effect=has_effect(fn),
                    pure=bool(getattr(fn, "__orla_pure__", False)),
                    ttl_s=getattr(fn, "__orla_ttl__", None))
