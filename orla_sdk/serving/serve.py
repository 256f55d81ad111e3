"""``orla.serve(app)``: another framework's app, served by orla through its adapter."""

from __future__ import annotations

from typing import Any

from orla_sdk.adapters import find_adapter


def serve(app: Any, **options: Any) -> Any:
    """``app`` served by orla, used like the app itself: a compiled LangGraph graph gives a
    ``ServedGraph`` (``pip install orla-langgraph``), an AutoGen team a ``ServedTeam``
    (``pip install orla-autogen``); any framework whose adapter is installed works.

    Options every adapter takes: ``backends``, ``mapping`` and ``default_model`` (as in
    ``orla.compile``; with neither backends nor mapping every logical model maps to an
    embedded llama.cpp engine), ``models`` (node or agent name -> logical model),
    ``prices`` (by backend name, for the report's cost), ``tracer`` (receives each run's
    OpenTelemetry spans), ``pool`` (a ``BackendPool`` of the caller's), ``name`` and
    ``passes``; an adapter documents its own.
    """
    return find_adapter(app, "orla.serve").serve(app, **options)
