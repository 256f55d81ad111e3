"""The customer-support workflow of the Orla paper.

It ships inside the package, so that ``orla demo`` runs after a plain install; its source
is ``orla_sdk/examples/customer_support.py``. This module names it the way the other
examples are named: ``orla plan examples.customer_support:support``.
"""

from orla_sdk.examples.customer_support import (
    BACKENDS,
    MAPPING,
    POLICIES,
    SAMPLE_TICKET,
    TEAMS,
    URGENCY,
    Triage,
    acknowledge,
    classify,
    policy_check,
    read_policy_yaml,
    read_team_descriptions,
    reply,
    route_ticket,
    send_email,
    support,
)

__all__ = [
    "BACKENDS",
    "MAPPING",
    "POLICIES",
    "SAMPLE_TICKET",
    "TEAMS",
    "URGENCY",
    "Triage",
    "acknowledge",
    "classify",

    "policy_check",
    "read_policy_yaml",
    "read_team_descriptions",
    "reply",
    "route_ticket",
    "send_email",
    "support",
]
