"""orla-autogen: orla as the serving layer beneath AutoGen AgentChat teams.

Installed, it registers with orla, so ``orla.serve(team)``, ``orla.compile(team)`` and
``orla.render(team, path)`` take an AgentChat team; ``autogen_client()`` is a model client
to build agents with before their team is served::

    from orla_autogen import autogen_client

    team = SelectorGroupChat([triage, writer], model_client=autogen_client(),
                             termination_condition=MaxMessageTermination(4))
    served = orla.serve(team, backends=[...], mapping={"light": ..., "heavy": ...},
                        models={"writer": "heavy"}, selector_model="light")
    result = await served.run(task="My card was charged twice.")
    served.report.to_json()["by_agent"]

The modules: ``plan`` (the team as an orla plan), ``messages`` (AutoGen's messages, tools
and results as orla's requests and back), ``client`` (the model client), ``runs`` (the
runs and turns of a served team) and ``served`` (``ServedTeam`` and ``serve_team``).
"""

from orla_autogen.adapter import AutoGenAdapter
from orla_autogen.client import OrlaChatCompletionClient, autogen_client
from orla_autogen.plan import compile_team
from orla_autogen.served import ServedTeam, serve_team

__all__ = ["AutoGenAdapter", "OrlaChatCompletionClient", "ServedTeam", "autogen_client",
           "compile_team", "serve_team"]
