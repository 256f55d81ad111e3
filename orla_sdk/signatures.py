"""The pydantic model of the arguments a model may pass to a tool, read from the tool's
signature: tool specs (authoring) publish its JSON schema, tool calls (runtime) check and
coerce a model's arguments with it."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

IDEMPOTENCY_KEY = "idempotency_key"  # a parameter orla fills for tools with effects


@functools.cache
def arguments_model(fn: Callable[..., Any]) -> type[BaseModel]:
    """A model of ``fn``'s named parameters (unknown names refused), unannotated ones
    taken as strings."""
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name == IDEMPOTENCY_KEY:
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, str), default)
    # small models often send 7 for "7": numbers are taken for strings
    config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    return create_model(f"{fn.__name__}_args", __config__=config, **fields)
