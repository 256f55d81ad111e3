"""orla-autogen: orla as the serving layer beneath AutoGen AgentChat teams.

Installed, it registers with orla, so ``orla.serve(team)``, ``orla.compile(team)`` and
``orla.render(team, path)`` take an AgentChat team; ``autogen_client()`` is a model client
to build agents with before their team is served.
"""

from orla_autogen.adapter import AutoGenAdapter
from orla_autogen.team import OrlaChatCompletionClient, ServedTeam, autogen_client, serve_team

__all__ = ["AutoGenAdapter", "OrlaChatCompletionClient", "ServedTeam", "autogen_client",
           "serve_team"]
