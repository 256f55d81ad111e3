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
import itertools
import linecache
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from orla_sdk.errors import TraceError


@dataclass(frozen=True)
class SourceFacts:
    """Where a source file has the two constructs, by line."""

    guarded_lines: frozenset[int]  # lines in the body of a `try` with `except`, or of a
    #                                `with suppress(...)`
    none_tests: dict[int, list[ast.expr]]  # line -> operands compared with `is None`


NO_FACTS = SourceFacts(frozenset(), {})


@functools.cache
def facts_of(filename: str) -> SourceFacts:
    """The facts of a file (a whole module: comprehensions and helpers included)."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return NO_FACTS
    return SourceFacts(frozenset(_guarded_lines(tree)), _none_tests(tree))


def _guarded_lines(tree: ast.AST) -> Iterator[int]:
    for node in ast.walk(tree):
        if ((isinstance(node, (ast.Try, ast.TryStar)) and node.handlers)
                or (isinstance(node, ast.With) and _suppresses(node))):
            for statement in node.body:
                yield from range(statement.lineno, (statement.end_lineno or 0) + 1)


def _suppresses(node: ast.With) -> bool:
    """`with suppress(...)` / `with contextlib.suppress(...)`: an `except` in disguise."""
    return any(isinstance(item.context_expr, ast.Call)
               and ast.unparse(item.context_expr.func).split(".")[-1] == "suppress"
               for item in node.items)


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
    return (f"stage {stage!r} is called inside `try:` with an `except` clause (or `with "
            "suppress(...)`), but stages do not run while the workflow is traced, so the "
            "plan would never take the handler. Fix: catch the failure inside a stage (a "
            "stage may call orla.generate again, or another model, as its fallback), or let "
            "the run fail and retry or resume it.")


Peeked = tuple[Any, bool]  # (the value an operand starts from, whether through a call)


@contextmanager
def none_tests_refused(workflow_file: str, is_user_file: Callable[[str], bool],
                       is_output: Callable[[Any, bool], bool]) -> Iterator[None]:
    """While the block runs, refuse `x is None` in user code (``is_user_file``) where
    ``x`` is a stage output or a workflow input (``is_output`` tells, from ``_peek``).
    Line tracing costs as much as tracing itself, so it is on only where the workflow's
    module has such a test; and it is skipped under a debugger or coverage tool, whose
    tracing it would replace."""
    if not facts_of(workflow_file).none_tests or sys.gettrace() is not None:
        yield
        return
    found: list[TraceError] = []

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and not found:
            tests = facts_of(frame.f_code.co_filename).none_tests
            for operand in tests.get(frame.f_lineno, []):
                if is_output(*_peek(operand, frame)):
                    found.append(_none_test_error(frame, operand))
        return on_line

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        return on_line if is_user_file(filename) and facts_of(filename).none_tests else None

    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(None)
    if found:
        raise found[0]


_UNKNOWN = object()


def _peek(expr: ast.expr, frame: FrameType) -> Peeked:
    """The value of a name, or of the object an attribute/item/call chain starts from,
    read without running anything (``_UNKNOWN`` when it cannot be), and whether the chain
    calls it."""
    if isinstance(expr, ast.Name):
        for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if expr.id in scope:
                return scope[expr.id], False
        return _UNKNOWN, False
    if isinstance(expr, (ast.Attribute, ast.Subscript, ast.Await, ast.NamedExpr)):
        return _peek(expr.value, frame)
    if isinstance(expr, ast.Call):
        return _peek(expr.func, frame)[0], True
    return _UNKNOWN, False


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
