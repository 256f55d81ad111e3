"""What running a workflow on proxies cannot see, found in the workflow's source.

Two Python constructs never reach a proxy while a workflow is traced, so the tracer would
silently drop the path they guard:

- ``x is None`` / ``x is not None``: ``is`` cannot be overloaded, and a proxy is never
  None, so the branch where a stage returned None would vanish from the plan;
- ``try: ... except ...:`` around a stage: no stage raises while traced, so the handler
  (often a fallback stage) would never be traced.

Both are refused with the line and the fix.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import linecache
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from orla_sdk.errors import TraceError


@dataclass(frozen=True)
class SourceFacts:
    """Where a function's source has the two constructs (absolute line numbers)."""

    guarded_lines: frozenset[int]  # lines inside the body of a `try` that has `except`
    none_tests: dict[int, list[ast.expr]]  # line -> operands compared with `is None`


NO_FACTS = SourceFacts(frozenset(), {})


@functools.cache
def facts_of(code: CodeType) -> SourceFacts:
    try:
        lines, start = inspect.getsourcelines(code)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return NO_FACTS  # no source (a REPL, exec): nothing to check
    ast.increment_lineno(tree, max(start, 1) - 1)
    return SourceFacts(frozenset(_try_body_lines(tree)), _none_tests(tree))


def _try_body_lines(tree: ast.AST) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Try, ast.TryStar)) and node.handlers:
            for statement in node.body:
                yield from range(statement.lineno, (statement.end_lineno or 0) + 1)


def _none_tests(tree: ast.AST) -> dict[int, list[ast.expr]]:
    found: dict[int, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, (left, right) in zip(node.ops, itertools.pairwise(operands), strict=True):
            if isinstance(op, (ast.Is, ast.IsNot)):
                for side, other in ((left, right), (right, left)):
                    if _is_none(other) and not _is_none(side):
                        found.setdefault(node.lineno, []).append(side)
    return found


def _is_none(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and expr.value is None


def try_refusal(stage: str) -> str:
    return (f"stage {stage!r} is called inside `try:` with an `except` clause, but stages "
            "do not run while the workflow is traced, so the plan would never take the "
            "handler. Fix: catch the failure inside a stage (a stage may call orla.generate "
            "again, or another model, as its fallback), or let the run fail and retry it.")


@contextmanager
def none_tests_refused(code: CodeType, is_output: Callable[[Any], bool]) -> Iterator[None]:
    """While the block runs, refuse `x is None` in ``code`` where ``x`` is a stage output
    or a workflow input (``is_output`` tells)."""
    tests = facts_of(code).none_tests
    if not tests:
        yield
        return
    found: list[TraceError] = []

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and not found:
            for operand in tests.get(frame.f_lineno, []):
                if is_output(_peek(operand, frame)):
                    found.append(_none_test_error(frame, operand))
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return on_line if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
    if found:
        raise found[0]


_UNKNOWN = object()


def _peek(expr: ast.expr, frame: FrameType) -> Any:
    """The value of a name, or of the object an attribute/item/call chain starts from,
    read without running anything (``_UNKNOWN`` when it cannot be)."""
    if isinstance(expr, ast.Name):
        for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if expr.id in scope:
                return scope[expr.id]
        return _UNKNOWN
    if isinstance(expr, (ast.Attribute, ast.Subscript, ast.Await)):
        return _peek(expr.value, frame)
    if isinstance(expr, ast.Call):
        return _peek(expr.func, frame)
    return _UNKNOWN


def _none_test_error(frame: FrameType, operand: ast.expr) -> TraceError:
    name = ast.unparse(operand)
    return TraceError(
        f"{line_of(frame)}: `{name}` is compared with None by `is`, but it is a stage output or "
        "a workflow input, which is never None while the workflow is traced, so the plan "
        f"would drop one side of the test. Fix: write `orla.is_none({name})`, which the "
        "plan tests when it runs, or branch on a bool or Literal field of the output.")


def line_of(frame: FrameType) -> str:
    """"file:line: `source`" of where ``frame`` is."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}: `{line}`"
