"""The customer-support workflow of the Orla paper.

It ships inside the package, so that ``orla demo`` runs after a plain install; its source
is ``orla_sdk/examples/customer_support.py``. This module names it the way the other
examples are named: ``orla plan examples.customer_support:support``.
"""

from orla_sdk.examples.customer_support import (
    BACKENDS,
    MAPPING,
    SAMPLE_TICKET,
    Triage,
    acknowledge,
    classify,
    policy_check,
    reply,
    route_ticket,
    support,
)

__all__ = ["BACKENDS", "MAPPING", "SAMPLE_TICKET", "Triage", "acknowledge", "classify",
           "policy_check", "reply", "route_ticket", "support"]
