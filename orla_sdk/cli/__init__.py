"""The ``orla`` command (``main``), its live demo view and the demo's workflow."""

from orla_sdk.cli.commands import main

__all__ = ["main"]
