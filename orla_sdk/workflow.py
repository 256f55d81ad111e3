"""The ``@workflow`` decorator: a plain function that calls stages."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from orla_sdk.ir import BackendSpec

P = ParamSpec("P")
R = TypeVar("R")


class Workflow(Generic[P, R]):
    """A function whose stage calls ``orla.compile`` traces into a plan.

    Calling it directly runs it as plain Python, stages and all. ``backends`` and
    ``mapping`` given to the decorator are the defaults ``orla.compile`` uses.
    """

    def __init__(self, fn: Callable[P, R], *, name: str | None,
                 backends: Sequence[BackendSpec] | None, mapping: Mapping[str, Any] | None,
                 default_model: str | None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.backends = list(backends) if backends is not None else None
        self.mapping = dict(mapping) if mapping is not None else None
        self.default_model = default_model
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<orla workflow {self.name}>"


@overload
def workflow(fn: Callable[P, R], /) -> Workflow[P, R]: ...


@overload
def workflow(*, name: str | None = None, backends: Sequence[BackendSpec] | None = None,
             mapping: Mapping[str, Any] | None = None,
             default_model: str | None = None) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...


def workflow(fn: Callable[P, R] | None = None, /, *, name: str | None = None,
             backends: Sequence[BackendSpec] | None = None,
             mapping: Mapping[str, Any] | None = None,
             default_model: str | None = None,
             ) -> Workflow[P, R] | Callable[[Callable[P, R]], Workflow[P, R]]:
    """Mark a function as a workflow that ``orla.compile`` can trace into a plan."""

    def wrap(f: Callable[P, R]) -> Workflow[P, R]:
        return Workflow(f, name=name, backends=backends, mapping=mapping,
                        default_model=default_model)

    return wrap(fn) if fn is not None else wrap
