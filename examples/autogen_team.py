"""A support ticket answered by an AutoGen team that orla serves.

A ``SelectorGroupChat`` of two agents: ``triage`` sorts the ticket and ``writer`` answers
the customer; the selector picks who speaks next. The team is built as usual, with
``orla_autogen.autogen_client`` placeholders as model clients (``pip install
orla-autogen``), and ``orla.serve`` puts orla beneath it: each agent's calls go to the
backend its logical model maps to (with no backends given, all of them to an embedded
llama.cpp engine that orla starts), queued with its priority (the selector's at 90, ahead
of the agents'), on the run's cache slot. At the end the messages are printed, then what
each agent's calls cost.

    python -m examples.autogen_team [--ticket TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import BaseChatMessage
from autogen_agentchat.teams import SelectorGroupChat
from orla_autogen import autogen_client

import orla_sdk as orla
from orla_sdk.ir import BackendSpec

SAMPLE_TICKET = "I was charged twice for my subscription this month. Please refund one charge."
REPORT_MARKER = "per-agent report:"


def build_team() -> SelectorGroupChat:
    triage = AssistantAgent(
        "triage", model_client=autogen_client(model="light", max_tokens=64),
        description="Sorts a support ticket: billing, technical or general, and how urgent.",
        system_message="You triage support tickets. Say the category (billing, technical "
                       "or general) and the urgency in one short sentence.")
    writer = AssistantAgent(
        "writer", model_client=autogen_client(model="heavy", max_tokens=96),
        description="Writes the reply to the customer once the ticket is triaged.",
        system_message="You write short, polite replies to customers, using the triage.")
    return SelectorGroupChat(
        [triage, writer], model_client=autogen_client(max_tokens=8),
        termination_condition=MaxMessageTermination(4))


async def answer(ticket: str, *, backends: Sequence[BackendSpec] | None = None,
                 mapping: Mapping[str, Any] | None = None
                 ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The team's messages (source, text) and the per-agent report of its run."""
    served = orla.serve(build_team(), backends=backends, mapping=mapping,
                        selector_model="light")
    async with served:
        result = await served.run(task=ticket)
    messages = [(m.source, m.to_text()) for m in result.messages
                if isinstance(m, BaseChatMessage)]
    by_agent: dict[str, Any] = served.report.to_json()["by_agent"]
    return messages, by_agent


def main(argv: Sequence[str] | None = None, *,
         backends: Sequence[BackendSpec] | None = None,
         mapping: Mapping[str, Any] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticket", default=SAMPLE_TICKET)
    args = parser.parse_args(argv)
    messages, by_agent = asyncio.run(answer(args.ticket, backends=backends, mapping=mapping))
    for source, text in messages:
        print(f"[{source}] {' '.join(text.split())}")
    print(REPORT_MARKER)
    print(json.dumps(by_agent, indent=2))


if __name__ == "__main__":
    main()
