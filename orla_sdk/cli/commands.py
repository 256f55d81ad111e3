"""The ``orla`` console command.

    orla plan MODULE:WORKFLOW [--summary]    print the compiled plan (JSON, or a table)
    orla render MODULE:WORKFLOW -o FILE      draw it (.svg, .png, .pdf or .dot)
    orla run MODULE:WORKFLOW [NAME=VALUE ...] run it on its engines and report each stage
    orla run ... --run-id ID --checkpoint FILE a durable run (see orla runs)
    orla runs list|show|resume               the durable runs of a checkpoint store
    orla engine start|stop|status            the embedded llama.cpp engine
    orla demo [--ticket TEXT] [--backend llamacpp|sim] [--light URL] [--heavy URL]
                                             the customer-support workflow, live
    orla serve [--host H] [--port P] [--token T] [--tenant-token NAME=T] [--admin NAME]
               [--budget FIELDS] [--max-workflows N] [--light [KIND:]URL] ...
               [--backend NAME=[KIND:]URL --map NAME=BACKEND/MODEL ...]
               [--kind openai|llamacpp|vllm|sglang] [--concurrency N]
                                             an OpenAI-compatible proxy (docs/proxy.md)

MODULE:WORKFLOW names a ``@workflow`` (compiled with its own defaults), a ``Plan``, or a
function that returns a ``Plan``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Sequence
from typing import Any

if typing.TYPE_CHECKING:
    from rich.console import Console

from orla_sdk.agents.budgets import budget_from_text
from orla_sdk.backends import (
    DEFAULT_LOCAL_MODEL,
    engine,
    llamacpp,
    openai_compatible,
    sglang,
    simulator,
    vllm,
)
from orla_sdk.backends.declare import checked_url
from orla_sdk.cli.runs import add_runs_parser, runs_command
from orla_sdk.compile import compile
from orla_sdk.errors import OrlaError, require_extra
from orla_sdk.ir import BackendSpec, Plan, Target, cache_of, mapping_of, priority_of
from orla_sdk.refs import load_ref
from orla_sdk.render import plan_size, render_plan
from orla_sdk.runtime import RunResult, run, tune_gc_for_serving
from orla_sdk.serving.proxy import ProxyServer
from orla_sdk.workflow import Workflow

DEMO_WORKFLOW = "orla_sdk.examples.customer_support:support"
DEMO_SAMPLE = "orla_sdk.examples.customer_support:SAMPLE_TICKET"
TENANT_NAME = re.compile(r"[A-Za-z_][\w-]*")
SIM_PROFILES = {"light": "smollm2-135m", "heavy": "qwen3-8b"}  # logical model -> simulated
ENGINE_KINDS = ("openai", "llamacpp", "vllm", "sglang")  # what `orla serve` declares


def load_plan(target: str) -> Plan:
    if ":" not in target:
        raise OrlaError(f"{target!r} is not MODULE:WORKFLOW, "
                        "e.g. orla_sdk.examples.customer_support:support")
    obj = _load(target)
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


def _load(target: str) -> Any:
    if "" not in sys.path:  # a console script does not look in the working directory
        sys.path.insert(0, "")
    return load_ref(target)


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
        state = _start_engine(engine.EngineConfig(port=port, slots=slots))
        return f"engine running at {state['url']} ({state['slots']} slots, pid {state['pid']})"
    if action == "stop":
        return "engine stopped" if engine.stop_background() else "no engine was running"
    state = engine.status()
    if state.get("alive"):
        return (f"engine starting at {state['url']} (pid {state['pid']}), not answering yet; "
                f"its log: {state['log']}; `orla engine stop` stops it")
    if not state["running"]:
        return "engine not running" + (f" (last seen at {state['url']})" if "url" in state else "")
    return f"engine running at {state['url']} ({state['slots']} slots, pid {state['pid']})"


def _start_engine(config: engine.EngineConfig) -> dict[str, Any]:
    """``orla engine start``: Ctrl-C, or a SIGTERM (``timeout``, ``kill``), while the engine
    starts stops it; nothing is left running, or recorded."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return engine.start_background(config)
    except KeyboardInterrupt:
        raise OrlaError("interrupted while the engine was starting; it was stopped") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


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
        rows.append((r.node if r.item is None else f"{r.node}[{r.item}]",
                     "restored" if r.restored else r.status,
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
        mapping, priority, cache = mapping_of(node), priority_of(node), cache_of(node)
        if mapping is not None and mapping.routed:
            runs_on = "routed: " + " | ".join(c.logical for c in mapping.candidates or [])
        else:
            runs_on = mapping.target_key() or "" if mapping else ""
        prio = path = ""
        if priority is not None:
            prio = "rule" if priority.source == "runtime" else str(priority.value)
            path = str(priority.critical_path)
        cache_text = ""
        if cache is not None:
            cache_text = cache.decision + (f" [{cache.span}]" if cache.span else "")
        rows.append((node.id, node.kind, runs_on, prio, path, cache_text))
    lines = _table(rows)
    header = f"plan {plan.name}: {plan_size(plan)}"
    return "\n".join([header, *lines])


# ---- orla demo ------------------------------------------------------------------------
def demo_moves(flow: Workflow[..., Any], backend: str,
               endpoints: dict[str, tuple[str, str]]) -> dict[str, BackendSpec]:
    """Logical model -> the backend it moves to, named like the one it leaves: the
    simulator's for ``backend == "sim"``, then an endpoint's for each of ``endpoints``
    (logical model -> (url, model))."""
    moves: dict[str, BackendSpec] = {}
    if backend == "sim":
        for logical, profile in SIM_PROFILES.items():
            moves[logical] = simulator(_target(flow, logical).backend, profile)
    for logical, (url, model) in endpoints.items():
        moves[logical] = openai_compatible(_target(flow, logical).backend,
                                           checked_url(url, f"--{logical}"), [model])
    return moves


def demo_plan(flow: Workflow[..., Any], moves: dict[str, BackendSpec]) -> Plan:
    """``flow`` compiled with some logical models moved onto other backends. The mapping
    keeps its logical names and parameters; only the backends and targets change."""
    mapping = dict(flow.mapping or {})
    specs = {spec.name: spec for spec in flow.backends or []}
    for logical, spec in moves.items():
        old = _target(flow, logical)
        model = spec.models[0] if spec.models else old.model
        mapping[logical] = Target(backend=spec.name, model=model, params=old.params)
        specs[spec.name] = spec
    return compile(flow, backends=list(specs.values()), mapping=mapping)


def _target(flow: Workflow[..., Any], logical: str) -> Target:
    value = (flow.mapping or {}).get(logical)
    if isinstance(value, str) and "/" in value:
        backend, _, model = value.partition("/")
        return Target(backend=backend, model=model)
    if isinstance(value, Target):
        return value
    raise OrlaError(f"workflow {flow.name!r} maps {logical!r} to {value!r}, not to one "
                    "backend/model")


def demo_ticket(given: str | None, sample: str) -> str:
    """The ticket to run: ``given``, else typed at the prompt when stdin is a terminal
    (Enter takes the sample), else the sample without asking."""
    if given is not None:
        return given.strip() or sample
    if not sys.stdin.isatty():
        return sample
    try:
        typed = input("Ticket (Enter for the sample): ")
    except EOFError:
        typed = ""
    return typed.strip() or sample


def demo(args: argparse.Namespace) -> int:
    """Run the demo; every failure ends with one line on stderr and exit code 1."""
    try:
        result = _demo_run(args)
        if result.error is not None:
            raise OrlaError(result.error)
    except BrokenPipeError:
        raise
    except (OrlaError, OSError) as exc:
        print(f"orla: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("orla: interrupted", file=sys.stderr)
        return 130
    return 0


def _demo_run(args: argparse.Namespace) -> RunResult:
    flow = _load(DEMO_WORKFLOW)
    if not isinstance(flow, Workflow):
        raise OrlaError(f"{DEMO_WORKFLOW} is not a @orla.workflow")
    endpoints = {name: (url, model) for name, url, model in (
        ("light", args.light, args.light_model), ("heavy", args.heavy, args.heavy_model))
        if url is not None}
    plan = demo_plan(flow, demo_moves(flow, args.backend, endpoints))
    ticket = demo_ticket(args.ticket, str(_load(DEMO_SAMPLE)))
    require_extra("rich", "demo", "the live demo view")
    from orla_sdk.cli.demo import show_run  # the live view needs rich, an extra

    return show_run(plan, _demo_console(), ticket=ticket)


def _demo_console() -> Console:
    """The terminal, or a console 120 columns wide when the output goes elsewhere."""
    from rich.console import Console

    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=120)


def _add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo_cmd = commands.add_parser(
        "demo", help="run the customer-support workflow with a live view of every stage")
    demo_cmd.add_argument("--ticket", help="the ticket (default: ask on a terminal, Enter "
                          "takes the sample; the sample when stdin is not a terminal)")
    demo_cmd.add_argument("--backend", choices=["llamacpp", "sim"], default="llamacpp",
                          help="llamacpp: the example's two embedded llama.cpp engines "
                          "(default); sim: orla's in-process engine simulator")
    for logical in ("light", "heavy"):
        demo_cmd.add_argument(f"--{logical}", metavar="URL", help=f"serve the {logical} "
                              "model at this OpenAI-compatible endpoint")
        demo_cmd.add_argument(f"--{logical}-model", default=DEFAULT_LOCAL_MODEL,
                              help=f"model id at --{logical} (default: %(default)s)")


# ---- orla serve -----------------------------------------------------------------------
def serve_config(args: argparse.Namespace) -> tuple[list[BackendSpec], dict[str, str]]:
    """The proxy's backends and mapping: the embedded llama.cpp engine serving "light" and
    "heavy" unless backends are given (``--light``/``--heavy`` URL: a backend of that name,
    serving the logical name of that name)."""
    urls = parse_inputs(args.backend)
    mapping = parse_inputs(args.map)
    for logical in ("light", "heavy"):
        url = getattr(args, logical)
        if url is not None:
            urls[logical] = url
            mapping.setdefault(logical, f"{logical}/{DEFAULT_LOCAL_MODEL}")
    if not urls:
        default = f"local/{DEFAULT_LOCAL_MODEL}"
        return [llamacpp("local")], {"light": default, "heavy": default, **mapping}
    if not mapping:
        raise OrlaError("name the logical models the backends serve: --map NAME=BACKEND/MODEL")
    return [engine_backend(name, url, args.kind, args.concurrency)
            for name, url in urls.items()], mapping


def engine_backend(name: str, given: str, kind: str, concurrency: int | None) -> BackendSpec:
    """The backend ``name`` at ``given`` (``[KIND:]URL``; ``kind`` where it names none).
    ``concurrency`` is the requests orla keeps in flight there; llama.cpp's is its slots,
    read from the engine."""
    prefix, sep, rest = given.partition(":")
    if sep and prefix in ENGINE_KINDS:
        kind, given = prefix, rest
    url = checked_url(given, f"--backend {name}")
    if kind == "llamacpp":
        return llamacpp(name, url)
    if kind == "vllm":
        return vllm(name, url, concurrency=concurrency)
    if kind == "sglang":
        return sglang(name, url, concurrency=concurrency)
    return openai_compatible(name, url, concurrency=concurrency)


def serve(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    token = args.token or os.environ.get("ORLA_PROXY_TOKEN") or None
    tokens = tenant_tokens(args.tenant_token)
    specs, mapping = serve_config(args)
    budgets = [budget_from_text(text) for text in args.budget]
    proxy = ProxyServer(specs, mapping, host=args.host, port=args.port, token=token,
                        tokens=tokens, admins=args.admin, max_body=args.max_body,
                        workflow_idle_s=args.workflow_idle_s,
                        max_workflows=args.max_workflows,
                        policies=[*budgets, *args.policy])
    try:
        url = proxy.start()
    except OSError as exc:
        raise OrlaError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    tune_gc_for_serving()
    print(f"orla proxy at {url}/v1 serving {', '.join(sorted(proxy.targets))}", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        proxy.stop()
    return 0


def tenant_tokens(given: list[str]) -> dict[str, str]:
    """``--tenant-token NAME=SECRET``, repeatable: each tenant's bearer token."""
    tokens: dict[str, str] = {}
    for text in given:
        name, sep, secret = text.partition("=")
        if not sep or not TENANT_NAME.fullmatch(name) or not secret:
            raise OrlaError(f"--tenant-token {text!r} is not NAME=SECRET (NAME: letters, "
                            "digits, '_' and '-'; SECRET: not empty)")
        if name in tokens:
            raise OrlaError(f"--tenant-token names tenant {name!r} twice")
        tokens[name] = secret
    return tokens


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = commands.add_parser("serve", help="an OpenAI-compatible proxy in front of orla's "
                              "backends (default: the embedded llama.cpp engine)")
    cmd.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    cmd.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0: free")
    cmd.add_argument("--token", help="bearer token clients must send (default: "
                     "$ORLA_PROXY_TOKEN); required off loopback")
    cmd.add_argument("--tenant-token", action="append", default=[], metavar="NAME=SECRET",
                     help="a tenant's bearer token; a tenant reads and completes only its own "
                     "workflows, and budgets may name it (repeatable)")
    cmd.add_argument("--admin", action="append", default=[], metavar="NAME",
                     help="a tenant (of --tenant-token) whose /v1/orla/report shows every "
                     "tenant's workflows (repeatable)")
    cmd.add_argument("--budget", action="append", default=[], metavar="FIELDS",
                     help="a budget, e.g. 'tenants=alice,tokens=50000,cost=2,"
                     "price_per_mtok=0.6' (fields: per (default: tenant), tokens, cost, "
                     "price_per_mtok, agents, tenants; lists a|b; repeatable)")
    cmd.add_argument("--max-body", type=int, default=1 << 20, help="bytes (default: 1 MiB)")
    cmd.add_argument("--workflow-idle-s", type=_positive(float), default=3600.0,
                     metavar="SECONDS", help="complete a workflow (dropping its cache) after "
                     "this long without a call (default: %(default)s)")
    cmd.add_argument("--max-workflows", type=_positive(int), default=10_000, metavar="N",
                     help="open workflows per token; one more is refused with 429 "
                     "(default: %(default)s)")
    for logical in ("light", "heavy"):
        cmd.add_argument(f"--{logical}", metavar="[KIND:]URL", help=f"serve {logical!r} at "
                         "this OpenAI-compatible endpoint")
    cmd.add_argument("--backend", action="append", default=[], metavar="NAME=[KIND:]URL",
                     help="a backend at URL, e.g. gpu=vllm:http://10.0.0.5:8000/v1 "
                     "(repeatable)")
    cmd.add_argument("--kind", choices=ENGINE_KINDS, default="openai",
                     help="what the URLs given without a KIND: are (default: %(default)s)")
    cmd.add_argument("--concurrency", type=_positive(int), metavar="N",
                     help="requests in flight at each vllm, sglang or openai backend "
                     "(default: vLLM's 256, what SGLang reports, else 8); llama.cpp's are "
                     "its slots")
    cmd.add_argument("--map", action="append", default=[], metavar="NAME=BACKEND/MODEL",
                     help="serve logical model NAME on BACKEND's MODEL (repeatable)")
    cmd.add_argument("--policy", action="append", default=[], metavar="NAME",
                     help="an agent policy: cachesage, lru, memo, fair, pin or module:Class "
                     "(repeatable, in order of precedence; default: lru)")


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number of ``kind`` above 0."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
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
    run_cmd.add_argument("--run-id", help="the run's id (needed to resume it)")
    run_cmd.add_argument("--checkpoint", metavar="FILE",
                         help="a SQLite file: the run is durable, `orla runs resume` continues it")
    engine_cmd = commands.add_parser("engine", help="the embedded llama.cpp engine")
    engine_cmd.add_argument("action", choices=["start", "stop", "status"])
    engine_cmd.add_argument("--port", type=int, default=0, help="default: a free port")
    engine_cmd.add_argument("--slots", type=int, default=4, help="parallel requests")
    _add_demo_parser(commands)
    _add_serve_parser(commands)
    add_runs_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "runs":
            return runs_command(args, load_plan, run_report)
        if args.command == "engine":
            print(engine_command(args.action, args.port, args.slots))
            return 0
        plan = load_plan(args.target)
        if args.command == "run":
            inputs: dict[str, Any] = parse_inputs(args.inputs)
            result = run(plan, run_id=args.run_id, checkpoint=args.checkpoint, **inputs)
            print(run_report(result))
            return 0 if result.ok else 1
        if args.command == "plan":
            print(summary(plan) if args.summary else plan.to_json().rstrip("\n"))
        else:
            print(render_plan(plan, args.output))
    except OrlaError as exc:
        print(f"orla: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (e.g. `| head`) went away; that is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
