"""Dotted references ("package.module:qualname") that let a plan name live objects."""

from __future__ import annotations

import importlib
from typing import Any

from orla_sdk.errors import RefError


def ref_of(obj: Any) -> str:
    """Return the "module:qualname" reference of a function or class."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname:
        raise RefError(f"{obj!r} has no __module__/__qualname__; define it at module level.")
    return f"{module}:{qualname}"


def is_importable(ref: str) -> bool:
    """True when ``ref`` names a module-level object (no ``<locals>`` or ``<lambda>``).
    Objects of ``__main__`` count: they resolve in the process that defined them."""
    return "<" not in ref


def load_ref(ref: str) -> Any:
    """Import the object named by ``ref``."""
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise RefError(f"{ref!r} is not a reference; write it as 'package.module:name'.")
    if not is_importable(ref):
        raise RefError(f"{ref!r} is defined inside a function; move it to module level.")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise RefError(f"cannot import module {module_name!r} for {ref!r}: "
                       f"{type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise RefError(f"module {module_name!r} has no {qualname!r} (from {ref!r})") from exc
    return obj
