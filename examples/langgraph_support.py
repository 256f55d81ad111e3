"""The customer-support workflow as an ordinary LangGraph app, served by orla.

The graph is plain LangGraph with LangChain's ``ChatOpenAI``: it runs as it is against
any OpenAI-compatible server (``graph.invoke``). ``orla.serve(graph)`` puts orla beneath
it without touching a node: the light nodes go to the edge engine and the heavy ones to
the datacenter engine (from each node's ``metadata={"orla": ...}``), every call is
queued with its node's priority and pinned to the thread's cache slot, and the report
says what each node and thread used.

    python -m examples.langgraph_support   # on two embedded llama.cpp engines
"""

from __future__ import annotations

import json
import os
from typing import Any, TypedDict

from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph

import orla_sdk as orla
from orla_sdk.examples.customer_support import (
    BACKENDS,
    MAPPING,
    POLICIES,
    SAMPLE_TICKET,
    TEAMS,
    Triage,
)

# where the graph's models live when it runs bare; orla.serve answers in their place
LLM_URL = os.environ.get("SUPPORT_LLM_URL", "http://127.0.0.1:8080/v1")
llm = ChatOpenAI(model="smollm2", base_url=LLM_URL, api_key="none", max_retries=1,
                 temperature=0, max_tokens=160)
FALLBACK = Triage(category="general", product="unknown", issue="unreadable triage",
                  customer_request="a human review", needs_escalation=True)


class Ticket(TypedDict, total=False):
    ticket: str
    triage: Triage
    policy: str
    team: str
    answer: str


def classify(state: Ticket) -> Ticket:
    """A structured triage of the ticket; one a person reviews if the model's is unusable."""
    triage = llm.with_structured_output(Triage, method="json_schema", include_raw=True)
    out: Any = triage.invoke(
        "Read the support ticket and fill in the triage: its category, the product, the "
        f"issue, what the customer asks for, and whether a human must take over.\n\n"
        f"{state['ticket']}")
    parsed = out.get("parsed") if isinstance(out, dict) else None
    return {"triage": parsed if isinstance(parsed, Triage) else FALLBACK}


def policy_check(state: Ticket) -> Ticket:
    t = state["triage"]
    policy = POLICIES.get(t.category, POLICIES["general"])
    reply = llm.invoke(f"Policy: {policy}\nIn one sentence, what does the policy allow for "
                       f"this {t.category} ticket about {t.product}: {t.issue}?")
    return {"policy": str(reply.content)}


def route_ticket(state: Ticket) -> Ticket:
    t = state["triage"]
    teams = "\n".join(f"{name}: {duty}" for name, duty in TEAMS.items())
    reply = llm.invoke(f"Teams:\n{teams}\nWhich team should own a {t.category} ticket about "
                       f"{t.product} ({t.issue})? Name one team.")
    return {"team": str(reply.content)}


def gather(state: Ticket) -> Ticket:
    return {}  # waits for both checks; the branch after it reads the triage


def escalate_or_reply(state: Ticket) -> str:
    return "acknowledge" if state["triage"].needs_escalation else "reply"


def reply(state: Ticket) -> Ticket:
    t = state["triage"]
    answer = llm.invoke(f"Write a short email that resolves this request: "
                        f"{t.customer_request}. Policy: {state['policy']}. "
                        f"Owner: {state['team']}.")
    return {"answer": str(answer.content)}


def acknowledge(state: Ticket) -> Ticket:
    t = state["triage"]
    answer = llm.invoke(f"Write two sentences telling the customer that the {state['team']} "
                        f"team now handles their {t.category} ticket about {t.product}.")
    return {"answer": str(answer.content)}


def build_graph() -> Any:
    graph = StateGraph(Ticket)
    graph.add_node("classify", classify, metadata={"orla": {"model": "light"}})
    graph.add_node("policy_check", policy_check, metadata={"orla": {"model": "heavy"}})
    graph.add_node("route_ticket", route_ticket, metadata={"orla": {"model": "heavy"}})
    graph.add_node("gather", gather)
    graph.add_node("reply", reply, metadata={"orla": {"model": "heavy"}})
    graph.add_node("acknowledge", acknowledge,
                   metadata={"orla": {"model": "light", "cache": "flush"}})
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "policy_check")
    graph.add_edge("classify", "route_ticket")
    graph.add_edge(["policy_check", "route_ticket"], "gather")
    graph.add_conditional_edges("gather", escalate_or_reply, ["acknowledge", "reply"])
    graph.add_edge("reply", END)
    graph.add_edge("acknowledge", END)
    # the checkpointer stores the Triage model in the thread's state; allow its module
    serde = JsonPlusSerializer(allowed_msgpack_modules=[(Triage.__module__, "Triage")])
    return graph.compile(checkpointer=InMemorySaver(serde=serde), name="langgraph_support")


def main(ticket: str = SAMPLE_TICKET) -> dict[str, Any]:
    """Serve the graph on the customer-support backends, answer one ticket, print the
    answer and the report; returns the report."""
    with orla.serve(build_graph(), backends=BACKENDS, mapping=MAPPING) as app:
        state = app.invoke({"ticket": ticket}, {"configurable": {"thread_id": "ticket-1"}})
        print(f"triage: {state['triage'].model_dump_json()}")
        print(f"answer: {state['answer']}")
        report: dict[str, Any] = app.report.to_json()
        print(json.dumps(report["by_node"], indent=2))
        return report


if __name__ == "__main__":
    main()
