"""The ``orla`` console command.

    orla plan MODULE:WORKFLOW [--summary]    print the compiled plan (JSON, or a table)
    orla render MODULE:WORKFLOW -o FILE      draw it (.svg, .png, .pdf or .dot)
    orla run MODULE:WORKFLOW [NAME=VALUE ...] run it on its engines and report each stage
    orla engine start|stop|status            the embedded llama.cpp engine

MODULE:WORKFLOW names a ``@workflow`` (compiled with its own defaults), a ``Plan``, or a
function that returns a ``Plan``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

from orla_sdk.backends import engine
from orla_sdk.compile import compile
from orla_sdk.errors import OrlaError
from orla_sdk.ir import Plan
from orla_sdk.refs import load_ref
from orla_sdk.render import plan_size
from orla_sdk.runtime import RunResult, run
from orla_sdk.workflow import Workflow


def load_plan(target: str) -> Plan:
    if ":" not in target:
        raise OrlaError(f"{target!r} is not MODULE:WORKFLOW, "
                        "e.g. examples.customer_support:support")
    if "" not in sys.path:  # a console script does not look in the working directory
        sys.path.insert(0, "")
    obj = load_ref(target)
    if isinstance(obj, Plan):
        return obj
    if isinstance(obj, Workflow):
        return compile(obj)
    if _plan_factory(obj):
        try:
            made = obj()
        except OrlaError:
            raise
        except Exception as exc:
            raise OrlaError(f"{target}() raised {type(exc).__name__}: {exc}") from exc
        if isinstance(made, Plan):
            return made
    raise OrlaError(f"{target} is a {type(obj).__name__}; name a @orla.workflow, a Plan, or a "
                    "function annotated `-> orla.Plan` that takes no arguments.")


def _plan_factory(obj: object) -> bool:
    """A function declared to return a Plan and callable without arguments."""
    if not inspect.isfunction(obj):
        return False
    try:
        returns = typing.get_type_hints(obj).get("return")
    except Exception:  # unresolvable annotations: not a factory we can trust
        return False
    required = [p for p in inspect.signature(obj).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return not required and returns is Plan


def engine_command(action: str, port: int, slots: int) -> str:
    if action == "start":
        state = engine.start_background(engine.EngineConfig(port=port, slots=slots))
        return f"engine running at {state['url']} ({state['slots']} slots, pid {state['pid']})"
    if action == "stop":
        return "engine stopped" if engine.stop_background() else "no engine was running"
    state = engine.status()
    if not state["running"]:
        return "engine not running" + (f" (last seen at {state['url']})" if "url" in state else "")
    return f"engine running at {state['url']} ({state['slots']} slots, pid {state['pid']})"


def parse_inputs(pairs: list[str]) -> dict[str, str]:
    inputs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise OrlaError(f"input {pair!r} is not NAME=VALUE")
        inputs[name] = value
    return inputs


def run_report(result: RunResult) -> str:
    """Per-stage table, branches, cache actions and the output of one run."""
    rows = [("stage", "status", "backend", "calls", "prompt", "cached", "completion", "wait s",
             "ttft s", "total s", "cache action")]
    for r in result.stages:
        rows.append((r.node if r.item is None else f"{r.node}[{r.item}]", r.status,
                     r.backend or "", str(len(r.calls)), str(r.prompt_tokens), str(r.cached_tokens),
                     str(r.completion_tokens), f"{r.queue_wait_s:.2f}",
                     f"{r.ttft_s:.2f}" if r.ttft_s is not None else "", f"{r.duration_s:.2f}",
                     r.cache_action))
    lines = [f"run {result.run_id} of {result.workflow}: {'ok' if result.ok else 'FAILED'}",
             *_table(rows)]
    lines += [f"branch {name} took {choice!r}" for name, choice in result.branches.items()]
    lines += [f"end of run: {e['action']} on {e['backend']}" for e in result.cache_log
              if e["node"] is None]
    lines.append(f"error: {result.error}" if result.error else f"output: {result.output!r}")
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def summary(plan: Plan) -> str:
    rows = [("node", "kind", "runs on", "priority", "path", "cache")]
    for node in plan.nodes:
        mapping = node.meta.get("mapping", {})
        if mapping.get("routed"):
            runs_on = "routed: " + " | ".join(c["logical"] for c in mapping["candidates"])
        else:
            runs_on = f"{mapping['backend']}/{mapping['model']}" if mapping else ""
        priority = node.meta.get("priority", {})
        prio = str(priority.get("value", "")) if priority.get("source") != "runtime" else "rule"
        path = str(priority.get("critical_path", ""))
        cache = node.meta.get("cache", {})
        cache_text = cache.get("decision", "") + (f" [{cache['span']}]" if "span" in cache else "")
        rows.append((node.id, node.kind, runs_on, prio, path, cache_text))
    lines = _table(rows)
    header = f"plan {plan.name}: {plan_size(plan)}"
    return "\n".join([header, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orla", description="orla_sdk command line")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_cmd = commands.add_parser("plan", help="print a workflow's compiled plan as JSON")
    plan_cmd.add_argument("target", help="MODULE:WORKFLOW")
    plan_cmd.add_argument("--summary", action="store_true", help="a table instead of JSON")
    render_cmd = commands.add_parser("render", help="draw a workflow's compiled plan")
    render_cmd.add_argument("target", help="MODULE:WORKFLOW")
    render_cmd.add_argument("-o", "--output", required=True, help="FILE.svg|png|pdf|dot")
    run_cmd = commands.add_parser("run", help="run a workflow and report each stage")
    run_cmd.add_argument("target", help="MODULE:WORKFLOW")
    run_cmd.add_argument("inputs", nargs="*", help="NAME=VALUE workflow inputs")
    engine_cmd = commands.add_parser("engine", help="the embedded llama.cpp engine")
    engine_cmd.add_argument("action", choices=["start", "stop", "status"])
    engine_cmd.add_argument("--port", type=int, default=0, help="default: a free port")
    engine_cmd.add_argument("--slots", type=int, default=4, help="parallel requests")
    args = parser.parse_args(argv)
    try:
        if args.command == "engine":
            print(engine_command(args.action, args.port, args.slots))
            return 0
        plan = load_plan(args.target)
        if args.command == "run":
            inputs: dict[str, Any] = parse_inputs(args.inputs)
            result = run(plan, **inputs)
            print(run_report(result))
            return 0 if result.ok else 1
        if args.command == "plan":
            print(summary(plan) if args.summary else plan.to_json().rstrip("\n"))
        else:
            print(plan.render(args.output))
    except OrlaError as exc:
        print(f"orla: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (e.g. `| head`) went away; that is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
