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
and results as orla's requests and back), ``emulation`` (tool calls on engines that
cannot make them), ``client`` (the model client), ``settings`` (an agent's settings, read
from the client it was built with), ``runs`` (the runs and turns of a served team),
``stopping`` (cancelled runs and closing) and ``served`` (``ServedTeam`` and
``serve_team``).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orla_autogen.adapter import AutoGenAdapter
    from orla_autogen.client import OrlaChatCompletionClient, autogen_client
    from orla_autogen.plan import compile_team
    from orla_autogen.served import ServedTeam, serve_team

# orla loads every installed adapter to ask which takes an app object: AutoGen itself is
# imported only once one of these names is used
_HOMES = {"AutoGenAdapter": "adapter", "OrlaChatCompletionClient": "client",
          "autogen_client": "client", "compile_team": "plan", "ServedTeam": "served",
          "serve_team": "served"}

__all__ = ["AutoGenAdapter", "OrlaChatCompletionClient", "ServedTeam", "autogen_client",
           "compile_team", "serve_team"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'orla_autogen' has no attribute {name!r}")
    return getattr(importlib.import_module(f"orla_autogen.{_HOMES[name]}"), name)
