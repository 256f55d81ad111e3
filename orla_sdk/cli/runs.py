"""``orla runs``: the durable runs a checkpoint store holds.

    orla runs list [--checkpoint FILE]                    the newest runs, one a line
    orla runs show RUN_ID [--checkpoint FILE]             a run and its completed stages
    orla runs resume RUN_ID MODULE:WORKFLOW [--checkpoint FILE]
                                                          continue it from its checkpoints
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from typing import Any

from orla_sdk.errors import OrlaError
from orla_sdk.ir import Plan
from orla_sdk.runtime import RunResult, SQLiteCheckpoints, resume
from orla_sdk.runtime.checkpoint import StoredRun, decode_record

DEFAULT_STORE = "runs.db"


def add_runs_parser(commands: Any) -> None:
    cmd = commands.add_parser("runs", help="durable runs in a checkpoint store")
    cmd.add_argument("action", choices=["list", "show", "resume"])
    cmd.add_argument("run_id", nargs="?", help="the run (show, resume)")
    cmd.add_argument("target", nargs="?", help="MODULE:WORKFLOW (resume)")
    cmd.add_argument("--checkpoint", default=DEFAULT_STORE,
                     help="the SQLite checkpoint file (default: %(default)s)")


def runs_command(args: argparse.Namespace, load_plan: Callable[[str], Plan],
                 report: Callable[[RunResult], str]) -> int:
    store = SQLiteCheckpoints(args.checkpoint, create=False)
    if args.action == "list":
        print("\n".join(_line(r) for r in store.runs()) or "no runs")
        return 0
    if not args.run_id:
        raise OrlaError(f"orla runs {args.action} needs a RUN_ID; `orla runs list` shows them.")
    stored = store.run(args.run_id)
    if stored is None:
        raise OrlaError(f"{args.checkpoint} has no run {args.run_id!r}; `orla runs list` "
                        "shows the runs it has.")
    if args.action == "show":
        print(_line(stored))
        for key, (value, record) in sorted(store.stages(args.run_id).items(), key=_natural):
            seconds = decode_record(record).duration_s
            print(f"  {key:<28} {seconds:7.2f} s  {_short(value)}")
        return 0
    if not args.target:
        raise OrlaError("orla runs resume needs the workflow too: "
                        "orla runs resume RUN_ID MODULE:WORKFLOW")
    result = resume(load_plan(args.target), args.run_id, checkpoint=args.checkpoint)
    print(report(result))
    return 0 if result.ok else 1


def _line(run: StoredRun) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
    outcome = run.error or (_short(run.output) if run.output else "")
    return f"{run.run_id:<20} {run.workflow:<20} {run.status:<8} {started}  {outcome}"


def _natural(item: tuple[str, Any]) -> list[Any]:
    """``answer[2]`` before ``answer[10]``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", item[0])]


def _short(text: str, width: int = 60) -> str:
    data = json.loads(text)
    if isinstance(data, dict) and set(data) == {"$pickle"}:
        return "(a pickled value)"
    flat = json.dumps(data)
    return flat if len(flat) <= width else flat[: width - 3] + "..."
