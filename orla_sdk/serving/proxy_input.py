"""What a request to the proxy says, read and checked: its JSON body, its tags (workflow,
stage, agent, priority) and the chat-completions fields the proxy acts on itself (``n``,
``stream``). Whatever is malformed or over a limit is an ``HttpError`` 400 naming the
field and what would be accepted, before any work starts.

Names are bounded (``MAX_NAME_CHARS``) and carry no control characters; a workflow id is
printable ASCII, since it is sent back in the ``X-Orla-Workflow`` response header.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orla_sdk.agents import fingerprint
from orla_sdk.backends.wire import as_integer, chat_request
from orla_sdk.serving.proxy_errors import HttpError

HINTS = ("workflow_id", "agent_id", "step_id", "parent_step_id")  # SGLang's agent hints
DEFAULT_PRIORITY = 50
MAX_PRIORITY = 100  # priorities run 0..MAX_PRIORITY, higher first
PRIORITY_TEXT = re.compile(r"[+-]?[0-9]{1,7}")  # a header's text: one sign at most
MAX_NAME_CHARS = 256  # a workflow id, a stage or an agent name
MAX_DEPTH = 64  # how deeply a body's arrays and objects may nest
MAX_CHOICES = 16  # ``n``: each choice is a model call of its own
# what a name may not hold: control characters, and line and paragraph separators (as a
# JSON Schema pattern, ECMA-262's, for /openapi.json), nor lone surrogates, which no UTF-8
# answer or file name can carry (JSON Schema cannot say so: its patterns see code points)
UNPRINTABLE = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
NAME_PATTERN = f"^[^{UNPRINTABLE}]*$"
HEADER_NAME_PATTERN = "^[ -~]*$"  # a name sent back in a header: printable ASCII
_UNPRINTABLE = re.compile(f"[{UNPRINTABLE}\\ud800-\\udfff]")
_NOT_HEADER_SAFE = re.compile("[^ -~]")


# ---- the body -----------------------------------------------------------------------
def parse_body(data: bytes | bytearray) -> dict[str, Any]:
    """The JSON object of a request body: numbers finite, nesting at most ``MAX_DEPTH``."""
    try:
        parsed = json.loads(data or b"{}", parse_constant=_no_constant,
                            parse_float=_finite_float)
    except RecursionError:
        raise HttpError(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise HttpError(400, "the body must be a JSON object")
    if nests_deeper(parsed, MAX_DEPTH):
        raise HttpError(400, f"the body nests deeper than {MAX_DEPTH} levels")
    return parsed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether parsed JSON's lists and dicts nest deeper than ``limit``: read a level at a
    time, without recursion, stopping at the first level past it."""
    level, depth = [value], 0
    while level:
        containers = [item for item in level if type(item) is dict or type(item) is list]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [child for item in containers
                 for child in (item.values() if type(item) is dict else item)]
    return False


def check_chat(body: dict[str, Any]) -> None:
    """The chat-completions fields orla reads, checked (messages, response_format, ...)."""
    try:
        chat_request(body)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def choices(body: dict[str, Any]) -> int:
    """``n``: how many choices the answer has (each a model call of its own)."""
    given = body.get("n")
    if given is None:
        return 1
    n = as_integer(given)
    if n is None or not 1 <= n <= MAX_CHOICES:
        raise HttpError(400, f"'n' must be an integer from 1 to {MAX_CHOICES}, not "
                        f"{given!r}"[:300], param="n")
    return n


def streamed(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise HttpError(400, f"'stream' must be true or false, not {stream!r}"[:300],
                        param="stream")
    return bool(stream)


def choice_bodies(body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The body of each choice's call: without ``n``; with a ``seed``, choice ``i`` gets
    ``seed + i`` so that the choices differ as an engine's own would."""
    one = {k: v for k, v in body.items() if k != "n"}
    seed = one.get("seed")
    if n == 1 or not isinstance(seed, int) or isinstance(seed, bool):
        return [one] * n
    return [{**one, "seed": seed + i} for i in range(n)]


# ---- tags ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tags:
    """Which workflow, stage and agent a call belongs to; ``workflow`` is "" for a call
    that named none."""

    workflow: str
    stage: str
    agent: str
    priority: int
    tenant: str = ""  # the name of the API token the call came with

    @property
    def tagged(self) -> bool:
        return bool(self.workflow)


def read_tags(headers: Mapping[str, str], body: dict[str, Any], tenant: str = "") -> Tags:
    """The call's tags from its headers, else from the agent hints in ``body`` (which are
    removed from it)."""
    hints = {name: body.pop(name) for name in HINTS if name in body}
    hinted_workflow = checked_name("workflow_id", hints.get("workflow_id"), header=True)
    hinted_agent = checked_name("agent_id", hints.get("agent_id"))
    workflow = (checked_name("X-Orla-Workflow", headers.get("X-Orla-Workflow"), header=True)
                or hinted_workflow)
    agent = checked_name("X-Orla-Agent", headers.get("X-Orla-Agent")) or hinted_agent
    stage = checked_name("X-Orla-Stage", headers.get("X-Orla-Stage")) or agent or "default"
    if not agent:
        agent = fingerprint(body["messages"])  # undeclared: named by its first message
    priority = read_priority(headers.get("X-Orla-Priority"), body.get("priority"))
    return Tags(workflow, stage, agent, priority, tenant)


def checked_name(where: str, value: Any, *, header: bool = False) -> str:
    """A workflow id, stage or agent name ("" when not given); one sent back in a
    ``header`` must be ASCII."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"{where} must be a string, not {value!r}"[:300], param=where)
    if len(value) > MAX_NAME_CHARS:
        raise HttpError(400, f"{where} is {len(value)} characters long; the limit is "
                        f"{MAX_NAME_CHARS}", param=where)
    if (_NOT_HEADER_SAFE if header else _UNPRINTABLE).search(value):
        allowed = "printable ASCII" if header else "no control characters or line breaks"
        raise HttpError(400, f"{where} {value!r} may hold {allowed}"[:400], param=where)
    return value


def read_priority(header: str | None, field_value: Any) -> int:
    """The call's priority, 0..100 (higher first): the header, else the body's field. Each
    given must be valid, the one that loses too."""
    field = _priority(field_value) if field_value is not None else None
    if header is not None:
        return _priority(header)
    return DEFAULT_PRIORITY if field is None else field


def _priority(value: Any) -> int:
    if isinstance(value, str) and PRIORITY_TEXT.fullmatch(value.strip()):
        value = int(value)
    priority = as_integer(value)
    if priority is None:
        raise HttpError(400, f"priority {value!r} is not an integer 0..{MAX_PRIORITY}"[:200],
                        param="priority")
    if not 0 <= priority <= MAX_PRIORITY:
        raise HttpError(400, f"priority {priority} is outside 0..{MAX_PRIORITY}"[:200],
                        param="priority")
    return priority
