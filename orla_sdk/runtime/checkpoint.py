"""Durable runs: each completed stage's value, and each side-effecting tool call's
result, stored under a deterministic key as it completes, so a run killed at any point
continues without doing completed work again.

Keys: a stage's node id, with its item indices inside maps (``answer[2]``); a tool call
with effects: the stage's key, the model call, the tool turn and the call's index
(``answer[2]/g0/t1/c0/refund``), which, after the run id, is also the idempotency key
the tool may receive.

``CheckpointStore`` is the protocol a store implements (a Postgres store can follow);
``SQLiteCheckpoints`` is the one orla ships (``checkpoint="runs.db"``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import pickle
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import TypeAdapter

from orla_sdk.errors import OrlaError
from orla_sdk.ir import Plan
from orla_sdk.runtime.records import CallRecord, StageRecord

RunStatus = Literal["running", "done", "failed"]


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    workflow: str
    plan_hash: str
    inputs: str  # encoded, see ``encode``
    status: RunStatus
    output: str | None
    error: str | None
    started_at: float
    updated_at: float


@runtime_checkable
class CheckpointStore(Protocol):
    def begin(self, run_id: str, workflow: str, plan_hash: str, inputs: str) -> StoredRun:
        """The run's row, created as "running" unless it exists."""
        ...

    def finish(self, run_id: str, status: RunStatus, output: str | None,
               error: str | None) -> None: ...

    def run(self, run_id: str) -> StoredRun | None: ...

    def runs(self, limit: int = 100) -> list[StoredRun]: ...

    def stages(self, run_id: str) -> dict[str, tuple[str, str]]:
        """Stage key -> (encoded value, its record as JSON)."""
        ...

    def save_stage(self, run_id: str, key: str, value: str, record: str) -> None: ...

    def effect(self, run_id: str, key: str) -> tuple[str, str] | None:
        """The (arguments, result) recorded for a call of a tool with effects."""
        ...

    def save_effect(self, run_id: str, key: str, arguments: str, result: str) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, plan_hash TEXT NOT NULL,
    inputs TEXT NOT NULL, status TEXT NOT NULL, output TEXT, error TEXT,
    started_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (run_id, key));
CREATE TABLE IF NOT EXISTS effects (
    run_id TEXT NOT NULL, key TEXT NOT NULL, arguments TEXT NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (run_id, key));
"""


class SQLiteCheckpoints:
    """A checkpoint store in one SQLite file; every write is committed before it returns,
    so what a killed process completed is on disk."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise OrlaError(f"there is no checkpoint store at {self.path}; pass the file "
                            "that durable runs were given (--checkpoint FILE).")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable past a process kill
        self._db.executescript(_SCHEMA)

    def _write(self, sql: str, *args: Any) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def begin(self, run_id: str, workflow: str, plan_hash: str, inputs: str) -> StoredRun:
        now = time.time()
        self._write("INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, 'running', NULL, NULL, ?, ?)",
                    run_id, workflow, plan_hash, inputs, now, now)
        self._write("UPDATE runs SET status = 'running', updated_at = ? WHERE run_id = ?",
                    now, run_id)
        stored = self.run(run_id)
        assert stored is not None
        return stored

    def finish(self, run_id: str, status: RunStatus, output: str | None,
               error: str | None) -> None:
        self._write("UPDATE runs SET status = ?, output = ?, error = ?, updated_at = ? "
                    "WHERE run_id = ?", status, output, error, time.time(), run_id)

    def run(self, run_id: str) -> StoredRun | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", run_id)
        return StoredRun(*rows[0]) if rows else None

    def runs(self, limit: int = 100) -> list[StoredRun]:
        return [StoredRun(*row) for row in self._rows(
            "SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", limit)]

    def stages(self, run_id: str) -> dict[str, tuple[str, str]]:
        return {key: (value, record) for key, value, record in self._rows(
            "SELECT key, value, record FROM stages WHERE run_id = ?", run_id)}

    def save_stage(self, run_id: str, key: str, value: str, record: str) -> None:
        self._write("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?)", run_id, key, value,
                    record)

    def effect(self, run_id: str, key: str) -> tuple[str, str] | None:
        rows = self._rows("SELECT arguments, result FROM effects WHERE run_id = ? AND key = ?",
                          run_id, key)
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def save_effect(self, run_id: str, key: str, arguments: str, result: str) -> None:
        self._write("INSERT OR REPLACE INTO effects VALUES (?, ?, ?, ?)", run_id, key,
                    arguments, result)

    def close(self) -> None:
        with self._lock:
            self._db.close()


_open_stores: dict[Path, SQLiteCheckpoints] = {}
_open_lock = threading.Lock()


def open_store(checkpoint: str | Path | CheckpointStore) -> CheckpointStore:
    """The store a run's ``checkpoint=`` names: one open SQLite store per file in a
    process (its connection shared by the runs), or the store object itself."""
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint).resolve()
        with _open_lock:
            if path not in _open_stores:
                _open_stores[path] = SQLiteCheckpoints(path)
            return _open_stores[path]
    if isinstance(checkpoint, CheckpointStore):
        return checkpoint
    raise OrlaError(f"checkpoint={checkpoint!r} is neither a file path nor a CheckpointStore; "
                    'pass checkpoint="runs.db" or an object with the store\'s methods.')


# ---- values --------------------------------------------------------------------------------
def encode(value: Any, annotation: Any = Any) -> str:
    """JSON by the value's declared type where that gives the value back exactly (same
    type, equal), else a pickle (tagged). Raises ``ValueError`` when neither works."""
    try:
        text = (TypeAdapter(annotation).dump_json(value, warnings="error").decode()
                if annotation is not Any else json.dumps(value) if _plain_json(value) else None)
        if text is not None and _same(decode(text, annotation), value):
            return text
    except Exception:
        pass  # not JSON by its type: pickled below
    try:
        return json.dumps({"$pickle": base64.b64encode(pickle.dumps(value)).decode()})
    except Exception as exc:
        raise ValueError(f"it is neither JSON by its type nor picklable ({exc})") from exc


def _same(decoded: Any, value: Any) -> bool:
    return type(decoded) is type(value) and bool(decoded == value)


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only (so JSON gives it back as is)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def decode(text: str, annotation: Any = Any) -> Any:
    data = json.loads(text)
    if isinstance(data, dict) and set(data) == {"$pickle"}:
        return pickle.loads(base64.b64decode(data["$pickle"]))
    return TypeAdapter(annotation).validate_json(text) if annotation is not Any else data


def encode_record(record: StageRecord) -> str:
    return json.dumps(dataclasses.asdict(record))


def decode_record(text: str) -> StageRecord:
    data = json.loads(text)
    data["calls"] = [CallRecord(**c) for c in data.get("calls", [])]
    return dataclasses.replace(StageRecord(**data), restored=True)


def plan_hash(plan: Plan) -> str:
    """What decides which keys a run writes and what they hold: its nodes, arguments,
    guards and output types (not the passes' notes, so a resumed run may be served by
    other backends)."""
    shape = [(n.id, n.kind, n.stage, n.args, n.kwargs, n.output.model_dump(),
              [[c.model_dump() for c in g] for g in n.guards])
             for n in plan.nodes]
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_of(store: CheckpointStore, run_id: str) -> dict[str, Any]:
    stored = store.run(run_id)
    if stored is None:
        raise OrlaError(f"the checkpoint store has no run {run_id!r}; `orla runs list` shows "
                        "the runs it has.")
    value = decode(stored.inputs)
    assert isinstance(value, dict)
    return value


class Durable:
    """One run's view of its checkpoint store."""

    def __init__(self, store: CheckpointStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.saved = store.stages(run_id)

    @classmethod
    def begin(cls, store: CheckpointStore, plan: Plan, run_id: str,
              inputs: dict[str, Any]) -> Durable:
        shape = plan_hash(plan)
        stored = store.begin(run_id, plan.name, shape, encode(inputs))
        if stored.plan_hash != shape:
            raise OrlaError(
                f"run {run_id!r} in the checkpoint store was started by another version of "
                f"workflow {stored.workflow!r} (its nodes or output types differ), so its "
                "saved stages may not fit this plan. Fix: resume it with the plan that "
                "started it, or give this run a new run_id.")
        if not _same(decode(stored.inputs), inputs):
            raise OrlaError(
                f"run {run_id!r} in the checkpoint store was started with other inputs. Fix: "
                "resume it with orla.resume(plan, run_id, checkpoint=...), which reads its "
                "inputs from the store, or give this run a new run_id.")
        return cls(store, run_id)

    def stage(self, key: str, annotation: Any) -> tuple[Any, StageRecord] | None:
        saved = self.saved.get(key)
        if saved is None:
            return None
        try:
            return decode(saved[0], annotation), decode_record(saved[1])
        except Exception as exc:
            raise OrlaError(
                f"the checkpoint of {key!r} in run {self.run_id!r} cannot be read back "
                f"({type(exc).__name__}: {exc}). Fix: resume it with the code that started "
                "it, or give the run a new run_id.") from exc

    def save_stage(self, key: str, value: Any, record: StageRecord, annotation: Any) -> None:
        try:
            encoded = encode(value, annotation)
        except ValueError as exc:
            raise OrlaError(
                f"the value of {key!r} cannot be checkpointed: {exc}. Fix: return JSON-like "
                "values, pydantic models or picklable objects from stages of durable runs."
            ) from exc
        self.store.save_stage(self.run_id, key, encoded, encode_record(record))

    def effect(self, key: str) -> tuple[str, str] | None:
        return self.store.effect(self.run_id, key)

    def save_effect(self, key: str, arguments: str, result: str) -> None:
        self.store.save_effect(self.run_id, key, arguments, result)

    def finish(self, output: Any, error: str | None) -> str | None:
        """Record how the run ended; a warning when its output cannot be stored."""
        warning = None
        try:
            encoded = None if error else encode(output)
        except ValueError as exc:
            encoded, warning = None, f"the run's output was not checkpointed: {exc}"
        self.store.finish(self.run_id, "failed" if error else "done", encoded, error)
        return warning
