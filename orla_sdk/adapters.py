"""Adapters: how orla compiles, draws and serves another framework's app objects.

An adapter teaches orla one framework. Its distribution registers it under the entry-point
group ``orla_sdk.adapters`` (``orla-langgraph`` and ``orla-autogen`` do), and
``orla.compile(app)``, ``orla.render(app, path)`` and ``orla.serve(app)`` ask each
registered adapter, in name order, whether it ``accepts`` the object they were given::

    [project.entry-points."orla_sdk.adapters"]
    myframework = "orla_myframework:Adapter"

The core never imports an adapter's framework; it only dispatches to the adapter.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from orla_sdk.errors import AdapterNotFound
from orla_sdk.ir import Plan

ENTRY_POINT_GROUP = "orla_sdk.adapters"
# the distribution to install for an app object from these top-level modules (for errors)
KNOWN_DISTRIBUTIONS = {"langgraph": "orla-langgraph", "autogen_agentchat": "orla-autogen",
                       "autogen_core": "orla-autogen"}


@runtime_checkable
class Adapter(Protocol):
    """One framework's app objects, as orla plans and served apps.

    ``compile`` and ``serve`` take orla's keyword options (``backends``, ``mapping``,
    ``models``, ``default_model``, ``name``, ``passes``; ``serve`` also ``prices``,
    ``tracer`` and ``pool``) and the adapter's own; an option an adapter does not know is
    a ``TypeError``. ``compile`` returns a plan configured and annotated by
    ``orla.compile(plan, ...)``; ``serve`` returns an object used like the app.
    """

    name: str

    def accepts(self, app: object) -> bool: ...

    def compile(self, app: Any, **options: Any) -> Plan: ...

    def serve(self, app: Any, **options: Any) -> Any: ...


_registered: dict[str, Adapter] = {}
_loaded = False
_lock = threading.Lock()


def register(adapter: Adapter) -> None:
    """Register an adapter by hand (entry points register installed ones by themselves)."""
    with _lock:
        _registered[adapter.name] = adapter


def adapters() -> list[Adapter]:
    """Every registered adapter, entry points loaded on the first call."""
    global _loaded
    with _lock:
        if not _loaded:
            for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
                loaded = point.load()
                adapter = loaded() if isinstance(loaded, type) else loaded
                _registered.setdefault(adapter.name, adapter)
            _loaded = True
        return list(_registered.values())


def adapter_for(app: object) -> Adapter | None:
    """The first registered adapter that accepts ``app``, if any."""
    return next((adapter for adapter in adapters() if adapter.accepts(app)), None)


def find_adapter(app: object, verb: str) -> Adapter:
    """The adapter that accepts ``app``, or an ``AdapterNotFound`` naming what to install."""
    adapter = adapter_for(app)
    if adapter is None:
        raise AdapterNotFound(_missing_message(app, verb))
    return adapter


def _missing_message(app: object, verb: str) -> str:
    module = type(app).__module__
    distribution = KNOWN_DISTRIBUTIONS.get(module.split(".")[0])
    what = f"{type(app).__name__} from {module}"
    if distribution is not None:
        return (f"{verb} got a {what}, and no installed adapter serves it; install the "
                f"adapter with `pip install {distribution}`.")
    installed = ", ".join(a.name for a in adapters()) or "none"
    if verb == "orla.serve":
        return (f"orla.serve takes an app object that an installed adapter accepts "
                f"(installed: {installed}), not a {what}; for an orla workflow use "
                "orla.compile and orla.run.")
    return (f"{verb} takes an @orla.workflow, an orla.Plan or an app object that an installed "
            f"adapter accepts (installed: {installed}), not a {what}.")
