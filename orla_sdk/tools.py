"""Describe plain Python functions as tools a model may call."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, create_model

from orla_sdk.errors import OrlaError
from orla_sdk.ir import ToolSpec
from orla_sdk.refs import ref_of


def tool_spec(fn: Callable[..., Any]) -> ToolSpec:
    """A tool's name, first docstring paragraph and JSON schema of its parameters."""
    if not callable(fn):
        raise OrlaError(f"tool {fn!r} is not callable; pass the function itself.")
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, str), default)
    args_model: type[BaseModel] = create_model(f"{fn.__name__}_args", **fields)
    schema = args_model.model_json_schema()
    schema.pop("title", None)
    doc = inspect.getdoc(fn) or ""
    return ToolSpec(name=fn.__name__, ref=ref_of(fn), description=doc.split("\n\n")[0],
                    parameters=schema)
