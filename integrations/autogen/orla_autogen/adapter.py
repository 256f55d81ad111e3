"""The adapter that registers AutoGen AgentChat teams with orla (entry point
``orla_sdk.adapters``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orla_sdk import Plan

if TYPE_CHECKING:
    from orla_autogen.served import ServedTeam


class AutoGenAdapter:
    """AgentChat teams (``SelectorGroupChat``, ``RoundRobinGroupChat``, nested teams).

    Options besides orla's (``backends``, ``mapping``, ``models``, ``default_model``,
    ``name``, ``passes``; ``serve`` also ``prices``, ``tracer``, ``pool``):
    ``selector_model`` and ``selector_priority``, the logical model and queue priority of
    the team manager's calls; ``serve`` also ``create_args``, agents' settings by name.
    """

    name = "autogen"

    def accepts(self, app: object) -> bool:
        return type(app).__module__.split(".")[0] == "autogen_agentchat"

    def compile(self, app: Any, **options: Any) -> Plan:
        """The team's plan, as ``serve`` builds it; the team is left as it is."""
        from orla_autogen.plan import compile_team  # imports AutoGen: only once it is used

        return compile_team(app, **options)

    def serve(self, app: Any, **options: Any) -> ServedTeam:
        from orla_autogen.served import serve_team

        return serve_team(app, **options)
