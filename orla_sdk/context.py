"""The context variables that carry the active trace; orla's only ambient state."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orla_sdk.trace import Tracer

active_tracer: ContextVar[Tracer | None] = ContextVar("orla_active_tracer", default=None)
