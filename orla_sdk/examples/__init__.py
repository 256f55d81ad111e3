"""Workflows that ship with orla: the customer-support workflow ``orla demo`` runs.

They are user code written with orla's public API, as a user's would be; the tracer
treats them so.
"""
