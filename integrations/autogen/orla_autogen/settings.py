"""An agent's model settings: what its original model client sends with every call
(``max_tokens``, ``temperature``, ``stop``, ``seed``, ...), so that the orla client put in
its place sends the same.

- ``autogen_client(**create_args)`` keeps them in ``create_args``.
- autogen-ext's OpenAI clients (``OpenAIChatCompletionClient``,
  ``AzureOpenAIChatCompletionClient``) keep the create arguments they were built with in
  ``_create_args``, unexposed. Their ``model`` is left out (the plan's mapping chooses the
  model), and so is ``timeout``, the HTTP client's own deadline, which no engine receives.
- Any other client's settings cannot be read: serving it is refused, unless ``orla.serve``
  is given the agent's settings (``create_args={"agent": {...}}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autogen_core.models import ChatCompletionClient

from orla_autogen.client import RESERVED_ARGS, OrlaChatCompletionClient
from orla_sdk import OrlaError

# the classes that keep their create arguments in ``_create_args``: package and name
READABLE_CLIENTS = {("autogen_ext.models.openai", "BaseOpenAIChatCompletionClient")}
CLIENT_ONLY_ARGS = frozenset({"model", "timeout"})


def agent_settings(agent: str, client: ChatCompletionClient,
                   given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings of ``agent``'s calls: those its client holds, updated by ``given``
    (``orla.serve(create_args={agent: ...})``), which alone stand for a client whose
    settings cannot be read."""
    held = readable_settings(client)
    if held is None and given is None:
        raise OrlaError(
            f"agent {agent!r}: orla cannot read the settings (max_tokens, temperature, ...) "
            f"of its model client, a {_class_name(client)}, so serving it would drop them. "
            "Build the agent with orla_autogen.autogen_client(max_tokens=..., ...), or give "
            f"them to orla.serve(team, create_args={{{agent!r}: {{'max_tokens': ...}}}}).")
    settings = {**(held or {}), **(given or {})}
    reserved = sorted(RESERVED_ARGS & set(settings))
    if reserved:
        raise OrlaError(
            f"agent {agent!r}: its model client's settings {reserved} are orla's to set "
            "(the model from the plan's mapping, tools and output formats from each call); "
            "build the client without them (for JSON output, give the agent "
            "output_content_type=... instead of response_format).")
    return settings


def readable_settings(client: ChatCompletionClient) -> dict[str, Any] | None:
    """The create arguments ``client`` sends with every call; None where they cannot be
    read."""
    if isinstance(client, OrlaChatCompletionClient):
        return dict(client.create_args)
    if not _keeps_create_args(client):
        return None
    held = getattr(client, "_create_args", None)  # unexposed by autogen-ext
    if not isinstance(held, Mapping):
        return None
    return {k: v for k, v in held.items() if k not in CLIENT_ONLY_ARGS}


def _keeps_create_args(client: ChatCompletionClient) -> bool:
    """Whether ``client`` is one of ``READABLE_CLIENTS`` or a subclass, found by name:
    autogen-ext is not a dependency of orla-autogen."""
    return any((package, cls.__name__) in READABLE_CLIENTS
               for cls in type(client).__mro__
               for package in (cls.__module__, cls.__module__.rsplit(".", 1)[0]))


def _class_name(client: ChatCompletionClient) -> str:
    return f"{type(client).__module__}.{type(client).__qualname__}"
