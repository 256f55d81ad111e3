"""The customer-support workflow of the Orla paper.

A light model classifies the ticket into a structured triage. On a heavy model, the
policy check and the routing run concurrently, each with its own tool, their priority
taken from the ticket's category. Then the escalation flag picks the reply: a full
resolution email, or an acknowledgement while a human team takes over.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

import orla_sdk as orla

POLICIES = {
    "billing": "Refund duplicate charges within 5 business days; no refunds after 60 days.",
    "technical": "Collect device, version and steps to reproduce; known outages get a link.",
    "general": "Answer from the FAQ; offer a call-back for anything account-specific.",
}
TEAMS = {
    "payments": "Card disputes, refunds, invoices.",
    "platform": "Outages, bugs, performance, integrations.",
    "customer-care": "Accounts, onboarding, everything else.",
}


class Triage(BaseModel):
    category: Literal["billing", "technical", "general"]
    product: str
    issue: str
    customer_request: str
    needs_escalation: bool


def read_policy_yaml(category: str) -> str:
    """Read the support policy for a ticket category."""
    return POLICIES.get(category, POLICIES["general"])


def read_team_descriptions() -> str:
    """List the support teams and what each one handles."""
    return "\n".join(f"{name}: {duty}" for name, duty in TEAMS.items())


def send_email(to: str, subject: str, body: str) -> str:
    """Send an email to the customer; returns a delivery receipt."""
    return f"queued email to {to}: {subject}"


URGENCY = orla.priority_by("t", "category",
                           values={"billing": 90, "technical": 80, "general": 20}, default=50)


@orla.stage(model="light")
def classify(ticket: str) -> Triage:
    """Turn a free-form ticket into a structured triage."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy", tools=[read_policy_yaml], priority=URGENCY)
def policy_check(t: Triage, ticket: str) -> str:
    """Check the ticket against the support policy of its category."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy", tools=[read_team_descriptions], priority=URGENCY)
def route_ticket(t: Triage) -> str:
    """Pick the team that should own the ticket."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy", tools=[send_email])
def reply(t: Triage, policy: str, team: str) -> str:
    """Write and send a full resolution email."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light", cache="flush")
def acknowledge(t: Triage, team: str) -> str:
    """Acknowledge the ticket while a human team takes it over."""
    raise NotImplementedError("runs on an engine")


BACKENDS = [orla.backends.llamacpp("edge"), orla.backends.llamacpp("datacenter")]
MAPPING = {
    "light": orla.Target(backend="edge", model=orla.backends.DEFAULT_LOCAL_MODEL,
                         params={"temperature": 0.0}),
    "heavy": orla.Target(backend="datacenter", model=orla.backends.DEFAULT_LOCAL_MODEL,
                         params={"temperature": 0.2, "max_tokens": 512}),
}


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def support(ticket: str) -> str:
    t = classify(ticket)
    policy = policy_check(t, ticket)
    team = route_ticket(t)
    if t.needs_escalation:
        return acknowledge(t, team)
    return reply(t, policy, team)
