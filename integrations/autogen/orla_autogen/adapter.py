"""The adapter that registers AutoGen AgentChat teams with orla (entry point
``orla_sdk.adapters``)."""

from __future__ import annotations

from typing import Any

from orla_sdk import Plan

from orla_autogen.team import ServedTeam, serve_team


class AutoGenAdapter:
    """AgentChat teams (``SelectorGroupChat``, ``RoundRobinGroupChat``, nested teams)."""

    name = "autogen"

    def accepts(self, app: object) -> bool:
        return type(app).__module__.split(".")[0] == "autogen_agentchat"

    def compile(self, app: Any, **options: Any) -> Plan:
        raise NotImplementedError  # replaced below

    def serve(self, app: Any, **options: Any) -> ServedTeam:
        return serve_team(app, **options)
