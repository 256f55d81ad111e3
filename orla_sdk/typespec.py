"""Turn Python annotations into ``TypeSpec`` values the plan can carry."""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from orla_sdk.ir import TypeSpec
from orla_sdk.refs import ref_of

_SCALARS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool",
                            type(None): "none"}


def type_spec(annotation: Any) -> TypeSpec:
    """Describe ``annotation``; anything orla cannot reason about becomes ``any``."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return TypeSpec(kind="any")
    if annotation in _SCALARS:
        return TypeSpec(kind=_SCALARS[annotation])
    origin = get_origin(annotation)
    if origin is Literal:
        return TypeSpec(kind="literal", values=list(get_args(annotation)))
    if origin in (typing.Union, types.UnionType):
        return _union_spec(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        args = get_args(annotation)
        return TypeSpec(kind="list", item=type_spec(args[0]) if args else None)
    if origin is dict or annotation is dict:
        return TypeSpec(kind="dict")
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return TypeSpec(kind="enum", ref=ref_of(annotation),
                        values=[member.value for member in annotation])
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return _model_spec(annotation)
    return TypeSpec(kind="any", ref=_safe_ref(annotation))


def _union_spec(annotation: Any) -> TypeSpec:
    members = [a for a in get_args(annotation) if a is not type(None)]
    if len(members) == 1 and len(get_args(annotation)) == 2:
        return type_spec(members[0]).model_copy(update={"nullable": True})
    return TypeSpec(kind="any")


def _model_spec(model: type[BaseModel]) -> TypeSpec:
    hints = _model_hints(model)
    fields = {name: type_spec(hints.get(name, Any)) for name in model.model_fields}
    return TypeSpec(kind="model", ref=ref_of(model), fields=fields)


def _safe_ref(annotation: Any) -> str | None:
    try:
        return ref_of(annotation)
    except Exception:
        return None


def return_spec(fn: Any) -> TypeSpec:
    """The output type of a function, from its return annotation."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = getattr(fn, "__annotations__", {})
    return type_spec(hints.get("return", inspect.Parameter.empty))


def enumerate_values(annotation: Any) -> list[Any] | None:
    """Every value ``annotation`` admits when that set is finite (bool, Literal, Enum)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            return None
        inner = enumerate_values(members[0])
        nullable = len(get_args(annotation)) == 2
        return [*inner, None] if inner is not None and nullable else None
    if annotation is bool:
        return [True, False]
    if origin is Literal:
        return list(get_args(annotation))
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return list(annotation)
    return None


def field_annotation(annotation: Any, name: str) -> Any:
    """The annotation of field ``name`` of a pydantic model annotation, or raise KeyError."""
    model = _strip_optional(annotation)
    if inspect.isclass(model) and issubclass(model, BaseModel) and name in model.model_fields:
        return _model_hints(model).get(name, Any)
    raise KeyError(name)


@functools.lru_cache(maxsize=1024)
def _model_hints(model: type[BaseModel]) -> dict[str, Any]:
    return typing.get_type_hints(model)


def item_annotation(annotation: Any) -> Any | None:
    """The item annotation of ``list[X]``-like annotations, else None."""
    ann = _strip_optional(annotation)
    if get_origin(ann) in (list, tuple, set, frozenset):
        args = get_args(ann)
        return args[0] if args else Any
    return Any if ann in (list, tuple) else None


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def json_choice(value: Any) -> Any:
    """A branch choice as it appears in the plan's JSON (enum members by value)."""
    return value.value if isinstance(value, enum.Enum) else value


def type_name(annotation: Any) -> str:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "untyped value"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
