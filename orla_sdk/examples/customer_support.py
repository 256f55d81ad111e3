"""The customer-support workflow of the Orla paper.

A light model classifies the ticket into a structured triage. On a heavy model, the
policy check and the routing run concurrently, each with its own tool, their priority
taken from the ticket's category. Then the escalation flag picks the reply: a full
resolution email, or an acknowledgement while a human team takes over.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
    product: str = Field(max_length=40)
    issue: str = Field(max_length=120)
    customer_request: str = Field(max_length=120)
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


SAMPLE_TICKET = ("Hi, I was charged twice for my Pro subscription this month (order 4471). "
                 "Please refund the duplicate charge. - Dana, dana@example.com")


@orla.stage(model="light")
def classify(ticket: str) -> Triage:
    """Turn a free-form ticket into a structured triage."""
    return orla.generate(
        "Read the support ticket and fill in the triage: its category, the product, the "
        f"issue, what the customer asks for, and whether a human must take over.\n\n{ticket}",
        output=Triage, max_tokens=300, temperature=0)


@orla.stage(model="heavy", tools=[read_policy_yaml], priority=URGENCY)
def policy_check(t: Triage, ticket: str) -> str:
    """Check the ticket against the support policy of its category."""
    return orla.generate(
        f"A {t.category} ticket about {t.product}: {t.issue}. Look up the policy for its "
        f"category, then say in one sentence what the policy allows.\n\n{ticket}",
        max_tokens=120, max_turns=2)


@orla.stage(model="heavy", tools=[read_team_descriptions], priority=URGENCY)
def route_ticket(t: Triage) -> str:
    """Pick the team that should own the ticket."""
    return orla.generate(
        f"Which support team should own a {t.category} ticket about {t.product} "
        f"({t.issue})? Look at the team descriptions, then name one team.",
        max_tokens=80, max_turns=2)


@orla.stage(model="heavy", tools=[send_email])
def reply(t: Triage, policy: str, team: str) -> str:
    """Write and send a full resolution email."""
    return orla.generate(
        f"Write and send a short email that resolves this request: {t.customer_request}. "
        f"Policy: {policy}. Owner: {team}.", max_tokens=160, max_turns=2)


@orla.stage(model="light", cache="flush")
def acknowledge(t: Triage, team: str) -> str:
    """Acknowledge the ticket while a human team takes it over."""
    return orla.generate(
        f"Write two sentences telling the customer that the {team} team now handles their "
        f"{t.category} ticket about {t.product}.", max_tokens=80)


BACKENDS = [orla.backends.llamacpp("edge"), orla.backends.llamacpp("datacenter")]
MAPPING = {
    "light": orla.Target(backend="edge", model=orla.backends.DEFAULT_LOCAL_MODEL,
                         params={"temperature": 0.0}),
    "heavy": orla.Target(backend="datacenter", model=orla.backends.DEFAULT_LOCAL_MODEL,
                         params={"temperature": 0.2, "max_tokens": 512}),
}


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def support(ticket: str = SAMPLE_TICKET) -> str:
    t = classify(ticket)
    policy = policy_check(t, ticket)
    team = route_ticket(t)
    if t.needs_escalation:
        return acknowledge(t, team)
    return reply(t, policy, team)
