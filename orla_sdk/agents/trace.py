"""Multi-agent traces: one model call a line, in JSON (``docs/agents.md``, "Traces").

    {"workload": "chatdev", "session": "run-7", "agent": "Programmer", "step": 3,
     "time": 41.0, "segments": [["chatdev/system/Programmer", 420],
                                ["run-7/Coding/history", 800]], "completion_tokens": 120}

A call's prompt is given either as ``messages`` (chat messages with their real text) or
as ``segments``: ``[id, tokens]`` pairs whose concatenation is the prompt. Equal ids stand
for equal text, and a segment is a prefix of any longer segment with its id, so a
conversation's history is one id whose length grows call by call. ``step`` orders the
calls of a session; ``time`` (seconds since the session began) is optional, as is
``completion_tokens`` (the reply's length, when the log recorded it).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from orla_sdk.errors import OrlaError


class TraceError(OrlaError):
    """A trace line that does not follow the format; the message names the line."""


@dataclass(frozen=True)
class TraceCall:
    workload: str
    session: str
    agent: str
    step: int
    messages: list[dict[str, Any]] | None = None
    segments: list[tuple[str, int]] | None = None
    completion_tokens: int | None = None
    time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"workload": self.workload, "session": self.session,
                                "agent": self.agent, "step": self.step}
        if self.time is not None:
            line["time"] = self.time
        if self.messages is not None:
            line["messages"] = self.messages
        if self.segments is not None:
            line["segments"] = [list(segment) for segment in self.segments]
        if self.completion_tokens is not None:
            line["completion_tokens"] = self.completion_tokens
        return {**line, **self.extra}


_KNOWN = {"workload", "session", "agent", "step", "time", "messages", "segments",
          "completion_tokens"}


def parse_call(data: Any, where: str = "the call") -> TraceCall:
    """One trace line, checked; a wrong line raises ``TraceError`` naming ``where``."""
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [name for name in ("workload", "session", "agent", "step") if name not in data]
    if missing:
        raise TraceError(f"{where}: missing {', '.join(missing)}; every call names its "
                         "workload, session, agent and step")
    if ("messages" in data) == ("segments" in data):
        raise TraceError(f"{where}: give the prompt as either `messages` or `segments`, "
                         "exactly one of them")
    try:
        return TraceCall(
            workload=str(data["workload"]), session=str(data["session"]),
            agent=str(data["agent"]), step=int(data["step"]),
            messages=_messages(data.get("messages")), segments=_segments(data.get("segments")),
            completion_tokens=_optional_int(data.get("completion_tokens")),
            time=None if data.get("time") is None else float(data["time"]),
            extra={k: v for k, v in data.items() if k not in _KNOWN})
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{where}: {exc}") from None


def _messages(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError("`messages` must be a list of chat messages (objects)")
    return value


def _segments(value: Any) -> list[tuple[str, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("`segments` must be a list of [id, tokens] pairs")
    segments = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2 and int(item[1]) >= 0):
            raise ValueError(f"segment {item!r} is not an [id, tokens] pair with tokens >= 0")
        segments.append((str(item[0]), int(item[1])))
    return segments


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _open(path: str | Path, mode: Literal["r", "w"]) -> TextIO:
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def read_trace(path: str | Path) -> list[TraceCall]:
    """Every call of a JSONL trace (``.gz`` read as gzip); blank lines are skipped."""
    with _open(path, "r") as lines:
        return list(_parse_lines(lines, str(path)))


def _parse_lines(lines: Iterable[str], name: str) -> Iterator[TraceCall]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{name}:{number}: not JSON ({exc.msg})") from None
        yield parse_call(data, f"{name}:{number}")


def write_trace(path: str | Path, calls: Iterable[TraceCall]) -> int:
    """Write calls as JSONL (gzip when ``path`` ends in ``.gz``); returns how many."""
    count = 0
    with _open(path, "w") as out:
        for call in calls:
            out.write(json.dumps(call.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def sessions(calls: Iterable[TraceCall]) -> dict[str, list[TraceCall]]:
    """The calls of each session in step order, sessions in order of first appearance."""
    grouped: dict[str, list[TraceCall]] = {}
    for call in calls:
        grouped.setdefault(call.session, []).append(call)
    return {name: sorted(group, key=lambda c: c.step) for name, group in grouped.items()}
