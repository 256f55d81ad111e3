"""What a served app's model calls cost and how they were served, by node, thread or agent.

Each unit of work (a graph task, an agent's turn) adds its ``StageRecord`` with labels
(``graph``, ``thread_id``, ``node``, ``step``; or ``team``, ``agent``). ``by("node")``
sums the records per label value; ``by("agent")`` groups by the agent that made the
calls (its label, else the record's declared agent, else its stage); ``to_json()`` gives
the groups a report is read by; ``export_spans(tracer)`` writes them as OpenTelemetry
spans, one per unit with a child span per model call, named and attributed after
OpenTelemetry's GenAI conventions (``gen_ai.agent.name`` for the agent).
``Report.of_runs(results)`` reads the runs of a compiled plan (``orla.run``) the same way.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orla_sdk.errors import require_extra
from orla_sdk.runtime.records import CallRecord, RunResult, StageRecord

Labels = Mapping[str, Any]
NS = 1_000_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens on one backend; cached prompt tokens cost
    ``cached_input`` (the full ``input`` price when not given)."""

    input: float
    output: float
    cached_input: float | None = None

    def of(self, call: CallRecord) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = call.prompt_tokens - call.cached_tokens
        return (fresh * self.input + call.cached_tokens * cached_rate
                + call.completion_tokens * self.output) / 1_000_000


@dataclass(frozen=True)
class Row:
    record: StageRecord
    labels: dict[str, Any]


class Report:
    """The records of a served app, kept until ``clear()``."""

    def __init__(self, prices: Mapping[str, Price] | None = None,
                 groups: Sequence[str] = ("node", "thread_id", "agent")) -> None:
        self.prices = dict(prices or {})  # by backend name; backends not named are free
        self.groups = tuple(groups)
        self._rows: list[Row] = []
        self._lock = threading.Lock()

    @classmethod
    def of_runs(cls, results: Iterable[RunResult], prices: Mapping[str, Price] | None = None
                ) -> Report:
        """The stages of plan runs, labelled ``workflow``, ``run_id``, ``node``, ``stage``
        and ``agent``."""
        report = cls(prices, groups=("stage", "agent"))
        for result in results:
            for record in result.stages:
                report.add(record, {"workflow": result.workflow, "run_id": result.run_id,
                                    "node": record.node, "stage": record.stage,
                                    "agent": agent_of(record)})
        return report

    def add(self, record: StageRecord, labels: Labels) -> None:
        with self._lock:
            self._rows.append(Row(record, dict(labels)))

    def rows(self, **match: Any) -> list[Row]:
        """The rows whose labels equal every ``match`` item."""
        with self._lock:
            rows = list(self._rows)
        return [row for row in rows if _matches(row, match)]

    def discard(self, **match: Any) -> None:
        """Drop the rows whose labels equal every ``match`` item; the rest keep their order."""
        with self._lock:
            self._rows = [row for row in self._rows if not _matches(row, match)]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def by(self, label: str, **match: Any) -> dict[str, dict[str, Any]]:
        """Totals per value of ``label`` (rows without it are left out)."""
        return self.grouped(label, self.rows(**match))

    def grouped(self, label: str, rows: Iterable[Row]) -> dict[str, dict[str, Any]]:
        """The totals of ``rows`` per value of ``label`` (rows without it are left out)."""
        groups: dict[str, list[Row]] = {}
        for row in rows:
            value = _label(row, label)
            if value is not None:
                groups.setdefault(str(value), []).append(row)
        return {key: self.row_totals(rows) for key, rows in groups.items()}

    def row_totals(self, rows: list[Row]) -> dict[str, Any]:
        """The calls' totals, and the tool calls: run, answered from memory, refused."""
        records = [row.record for row in rows]
        return {**self.totals(c for r in records for c in r.calls),
                "tool_calls": sum(r.tool_calls for r in records),
                "tools_reused": sum(r.tools_reused for r in records),
                "tools_refused": sum(r.refused for r in records)}

    def totals(self, calls: Iterable[CallRecord]) -> dict[str, Any]:
        calls = list(calls)
        ttfts = [c.ttft_s for c in calls if c.ttft_s is not None]  # the streamed calls
        return {
            "calls": len(calls),
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "cached_tokens": sum(c.cached_tokens for c in calls),
            "cost_usd": round(sum(self._cost(c) for c in calls), 8),
            "ttft_s_median": statistics.median(ttfts) if ttfts else None,
            "queue_wait_s": sum(c.queue_wait_s for c in calls),
            "engine_s": sum(c.duration_s for c in calls),
        }

    def _cost(self, call: CallRecord) -> float:
        price = self.prices.get(call.backend)
        return price.of(call) if price is not None else 0.0

    def to_json(self, **match: Any) -> dict[str, Any]:
        """``{"total": ..., "by_<group>": {value: totals}}`` for each of the report's
        groups, over the rows matching ``match``."""
        data: dict[str, Any] = {"total": self.row_totals(self.rows(**match))}
        for group in self.groups:
            data[f"by_{group}"] = self.by(group, **match)
        return data

    # ---- OpenTelemetry ----------------------------------------------------------------
    def export_spans(self, tracer: Any, **match: Any) -> int:
        """Write the matching rows as spans with ``tracer`` (an OpenTelemetry ``Tracer``);
        returns how many unit spans were written. Units that made no call are skipped."""
        require_extra("opentelemetry", "otel", "OpenTelemetry spans")
        from opentelemetry import trace

        written = 0
        for row in self.rows(**match):
            calls = row.record.calls
            if not calls:
                continue
            start = min(c.started_at for c in calls)
            end = max(_end(c) for c in calls)
            unit = tracer.start_span(
                f"orla.unit {row.record.node}", start_time=int(start * NS),
                attributes=self._unit_attributes(row))
            context = trace.set_span_in_context(unit)
            name = str(_label(row, "agent"))
            agent = {"gen_ai.agent.name": name, "orla.agent": name}
            for call in calls:
                span = tracer.start_span(f"chat {call.model}", context=context,
                                         start_time=int(call.started_at * NS),
                                         attributes={**self._call_attributes(call), **agent})
                span.end(end_time=int(_end(call) * NS))
            unit.end(end_time=int(end * NS))
            written += 1
        return written

    def _unit_attributes(self, row: Row) -> dict[str, Any]:
        attributes = {f"orla.{k}": _attribute(v) for k, v in row.labels.items()
                      if v is not None}
        totals = self.totals(row.record.calls)
        attributes.update({f"orla.{k}": v for k, v in totals.items() if v is not None})
        attributes["orla.stage"] = row.record.stage
        attributes["orla.agent"] = attributes["gen_ai.agent.name"] = str(_label(row, "agent"))
        return attributes

    def _call_attributes(self, call: CallRecord) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": call.model,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "orla.backend": call.backend,
            "orla.cached_tokens": call.cached_tokens,
            "orla.queue_wait_s": call.queue_wait_s,
            "orla.engine_s": call.duration_s,
            "orla.cost_usd": self._cost(call),
        }
        if call.ttft_s is not None:
            attributes["orla.ttft_s"] = call.ttft_s
        if call.slot is not None:
            attributes["orla.slot"] = call.slot
        return attributes


def agent_of(record: StageRecord) -> str:
    """The agent whose calls ``record`` holds: the declared one, else the stage."""
    return record.agent or record.stage


def _label(row: Row, label: str) -> Any:
    """The row's value of ``label``; for ``agent``, the record's agent where no label
    names one."""
    value = row.labels.get(label)
    return agent_of(row.record) if value is None and label == "agent" else value


def _matches(row: Row, match: Mapping[str, Any]) -> bool:
    return all(row.labels.get(key) == value for key, value in match.items())


def _end(call: CallRecord) -> float:
    return call.started_at + call.queue_wait_s + call.duration_s


def _attribute(value: Any) -> Any:
    return value if isinstance(value, (str, bool, int, float)) else str(value)
