"""Real and synthetic multi-agent workloads as orla traces (``orla_sdk.agents.trace``).

    python -m benchmarks.agent_traces [NAME ...] [--out DIR]

writes each named trace (default: all four) to ``DIR/NAME.jsonl.gz`` (default DIR
``benchmarks/results/traces``) and prints one summary line per trace. The traces:

- ``whowhen-hand``, ``whowhen-algo``: the Who&When failure-attribution logs (Magentic-One
  and CaptainAgent group chats), prompts as real chat ``messages`` (``whowhen``);
- ``chatdev``: ChatDev v1's logged API calls with their real token counts, prompts as
  ``segments`` (``chatdev``);
- ``selector``: a synthetic AutoGen SelectorGroupChat-shaped workload (``selector``).

The source files and their licences are described in ``benchmarks/data/multiagent/``.
Each converter states its assumptions in its docstring.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import math
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from orla_sdk.agents.trace import TraceCall, write_trace
from orla_sdk.backends.sim.tokens import render_prompt, tokenize

DATA = Path(__file__).resolve().parent / "data" / "multiagent"
TRACE_NAMES = ("whowhen-hand", "whowhen-algo", "chatdev", "selector")
DEFAULT_OUT = Path("benchmarks") / "results" / "traces"

_T = TypeVar("_T")
Subset = Literal["hand-crafted", "algorithm-generated"]

# ---------------------------------------------------------------------------------------
# Who&When
# ---------------------------------------------------------------------------------------

WHOWHEN_MAX_CHARS = 4_000
"""Default cap on one Who&When message's characters (WebSurfer page dumps reach 88,000)."""

_WORKLOAD = {"hand-crafted": "whowhen-hand", "algorithm-generated": "whowhen-algo"}

# Speakers that are never a model call: the user, and the code executors.
_NOT_LLM_SPEAKERS = frozenset({"human", "Computer_terminal", "ComputerTerminal"})

# Magentic-One labels a speaker `Agent (detail)`: `Orchestrator (thought)`, `(-> WebSurfer)`.
_LABEL_DETAIL = re.compile(r"\s*\(.*\)\s*$")

# Orchestrator log lines written by its code, not by the model: the speaker it picked from
# the ledger, its stall and replan counters, and the end of the task.
_ORCHESTRATOR_STATUS = re.compile(
    r"(Next speaker \w+|Stalled\.|Request satisfied\.|Replan counter exceeded)")


@dataclass(frozen=True)
class _Message:
    label: str  # the speaker as the log writes it, e.g. `Orchestrator (-> WebSurfer)`
    agent: str  # the agent behind it, e.g. `Orchestrator`
    text: str  # the content, capped


def whowhen(path: str | Path, subset: Subset, *, limit: int | None = None,
            max_chars: int = WHOWHEN_MAX_CHARS) -> list[TraceCall]:
    """The Who&When logs of one subset, one session per task log, prompts as ``messages``.

    Workload ``whowhen-hand`` (``hand-crafted``: Magentic-One) or ``whowhen-algo``
    (``algorithm-generated``: CaptainAgent group chats); the session is the log's
    ``task_id``. Each message of ``history`` that a model wrote in its own call becomes one
    call by its agent; ``step`` is the message's index in ``history`` (so it lines up with
    the benchmark's ``mistake_step``). Assumptions:

    - Shared transcript: as in a group chat, a call sees the whole thread: its prompt is the
      agent's system message followed by every earlier message of the log, skipped ones
      included. The agent's own earlier messages are ``assistant`` messages; everyone
      else's are ``user`` messages prefixed ``"<speaker label>: "``. So a later call of the
      same agent extends an earlier one's prompt.
    - Speakers: a Magentic-One label ``Agent (detail)`` is the agent ``Agent``
      (``Orchestrator (thought)``, ``Orchestrator (-> WebSurfer)`` are ``Orchestrator``).
    - Not model calls (they stay in later prompts but make no call): the user (``human``);
      the code executors ``ComputerTerminal`` and ``Computer_terminal``; CaptainAgent's
      first message (the task and the manager's plan, filled into a fixed template); and
      the Orchestrator's log lines that its code writes: ``(termination condition)``, the
      ``(thought)`` lines ``Next speaker X``, ``Stalled.... Replanning...``, ``Request
      satisfied.``, ``Replan counter exceeded...``, and the ``(-> X)`` instructions, which
      repeat the ``instruction_or_question`` of the ledger call just before them (686 of
      the 689 do so verbatim; the rest follow a ledger whose JSON was cut off). The
      Orchestrator's calls are thus its ``Initial plan``, ``Updated Ledger`` and ``New
      plan`` thoughts (Magentic-One makes the facts and the plan as two calls; each counts
      as one here).
    - System messages: algorithm-generated logs carry each agent's ``system_prompt``, used
      as is. Hand-crafted logs carry none, so the system message is the one line
      ``You are <agent>, an agent of a Magentic-One team.`` (far shorter than the real
      ones).
    - Cap: each message's content is cut to its first ``max_chars`` characters (default
      4,000) before it enters any prompt. WebSurfer and FileSurfer messages carry page
      text; without a cap one hand-crafted log alone yields prompts of millions of
      characters. ``completion_tokens`` is the simulator tokenizer's count
      (``orla_sdk.backends.sim.tokens.tokenize``) of the capped message, so for the web and
      file agents it counts the tool output they report as well.

    ``limit`` converts only the first ``limit`` logs of the subset.
    """
    calls: list[TraceCall] = []
    for log in _first(_whowhen_logs(path, subset), limit):
        calls.extend(_whowhen_session(log, subset, max_chars))
    return calls


def _whowhen_logs(path: str | Path, subset: Subset) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                log = json.loads(line)
                if log["source"] == subset:
                    yield log


def _history(value: Any) -> list[dict[str, Any]]:
    """``history`` as a list: the file stores a list, some copies a Python-literal string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = ast.literal_eval(value)
    if not isinstance(value, list):
        raise ValueError(f"history is a {type(value).__name__}, not a list of messages")
    return value


def _agent_of(label: str) -> str:
    return _LABEL_DETAIL.sub("", label) or label


def _whowhen_session(log: dict[str, Any], subset: Subset, max_chars: int) -> list[TraceCall]:
    history = [_Message(label, _agent_of(label), str(m.get("content") or "")[:max_chars])
               for m in _history(log["history"]) for label in [str(m["speaker"])]]
    system_prompts: dict[str, str] = log.get("system_prompt") or {}
    calls = []
    for index, message in enumerate(history):
        if not _is_model_call(message, index, subset):
            continue
        system = system_prompts.get(message.agent) or _one_line_system(message.agent)
        calls.append(TraceCall(
            workload=_WORKLOAD[subset], session=str(log["task_id"]), agent=message.agent,
            step=index, messages=_prompt(system, history[:index], message.agent),
            completion_tokens=len(tokenize(message.text))))
    return calls


def _is_model_call(message: _Message, index: int, subset: Subset) -> bool:
    if message.label in _NOT_LLM_SPEAKERS or message.agent in _NOT_LLM_SPEAKERS:
        return False
    if subset == "algorithm-generated":
        return index > 0  # the first message is the task, handed to the chat
    if message.agent != "Orchestrator":
        return True
    return (message.label == "Orchestrator (thought)"
            and _ORCHESTRATOR_STATUS.match(message.text) is None)


def _one_line_system(agent: str) -> str:
    return f"You are {agent}, an agent of a Magentic-One team."


def _prompt(system: str, transcript: Sequence[_Message], agent: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for earlier in transcript:
        if earlier.agent == agent:
            messages.append({"role": "assistant", "content": earlier.text})
        else:
            messages.append({"role": "user", "content": f"{earlier.label}: {earlier.text}"})
    return messages


# ---------------------------------------------------------------------------------------
# ChatDev
# ---------------------------------------------------------------------------------------

TOKENS_PER_WORD = 1.3
CHATDEV_DEFAULT_SYSTEM_TOKENS = 250
"""System-prompt size assumed for a ChatDev role whose prompt text is not known."""

# Words of each role's system prompt in ChatDev v1 (`CompanyConfig/Default/RoleConfig.json`
# with its `{chatdev_prompt}` company background filled in; the customer's `{task}` left
# out, since its length differs per run and is not logged). The Prompt Engineer is the
# one-sentence role of the `SelfTaskImprove` step (`chatdev/chat_chain.py`).
_CHATDEV_ROLE_WORDS = {
    "Chief Executive Officer": 156, "Chief Product Officer": 155, "Counselor": 119,
    "Chief Technology Officer": 137, "Programmer": 140, "Code Reviewer": 124,
    "Software Test Engineer": 141, "Prompt Engineer": 19,
}


def chatdev_system_tokens(speaker: str) -> int:
    """Estimated tokens of a ChatDev role's system prompt (words x 1.3, or 250 if unknown)."""
    words = _CHATDEV_ROLE_WORDS.get(speaker)
    return CHATDEV_DEFAULT_SYSTEM_TOKENS if words is None else round(words * TOKENS_PER_WORD)


def chatdev(path: str | Path, *, limit: int | None = None) -> list[TraceCall]:
    """ChatDev v1's logged LLM calls, one session per run, prompts as ``segments``.

    Workload ``chatdev``; session = ``run``; calls in ``call_index`` order, ``step`` = the
    call's position in the run; ``agent`` = ``speaker``; ``completion_tokens`` as logged;
    ``time`` = seconds from the run's first ``timestamp`` to this call's ``timestamp``
    (the time the response was logged, one-second resolution; the request went out
    earlier by the call's latency). Each prompt is two segments summing to the logged
    ``prompt_tokens`` (OpenAI tokens, not the simulator's):
    ``[("chatdev/system/<speaker>", S), ("<run>/<chat>/<speaker>", prompt_tokens - S)]``.
    Assumptions:

    - S is the role's system-prompt size, estimated from the word count of ChatDev's role
      prompt at 1.3 tokens a word (``chatdev_system_tokens``: 155 to 203 tokens for the
      company roles, 25 for the Prompt Engineer, 250 for a role not known), and at most
      ``prompt_tokens``. The real system prompt also holds the run's task in its middle;
      that part lands in the history segment, and the shared id treats the role prompt as
      the same text in every run.
    - A chat (``<chat>`` = ``<index>-<phase>``, the index counting chats in the run) is a
      consecutive stretch of calls with the same phase, assistant role and user role. Each
      side keeps its own copy of the conversation (its own roles differ), so the history
      id names the speaker; within a chat a side's history only grows. Where it shrinks
      (two chats of one phase back to back, or a trimmed history), the side starts a new
      history id ``<run>/<chat>/<speaker>#2``, ``#3``, ...

    ``limit`` converts only the first ``limit`` runs (in file order).
    """
    calls: list[TraceCall] = []
    for run, rows in _first(_chatdev_runs(path).items(), limit):
        calls.extend(_chatdev_session(run, rows))
    return calls


def _chatdev_runs(path: str | Path) -> dict[str, list[dict[str, str]]]:
    runs: dict[str, list[dict[str, str]]] = {}
    with open(path, encoding="utf-8", newline="") as rows:
        for row in csv.DictReader(rows):
            runs.setdefault(row["run"], []).append(row)
    return {run: sorted(rows, key=lambda row: int(row["call_index"]))
            for run, rows in runs.items()}


def _chatdev_session(run: str, rows: list[dict[str, str]]) -> list[TraceCall]:
    start = min(_timestamp(row) for row in rows)
    histories = _HistoryIds()
    calls = []
    for step, (chat, row) in enumerate(zip(_chat_names(rows), rows, strict=True)):
        speaker, prompt = row["speaker"], int(row["prompt_tokens"])
        system = min(chatdev_system_tokens(speaker), prompt)
        history = histories.id_for(f"{run}/{chat}/{speaker}", prompt - system)
        calls.append(TraceCall(
            workload="chatdev", session=run, agent=speaker, step=step,
            segments=[(f"chatdev/system/{speaker}", system), (history, prompt - system)],
            completion_tokens=int(row["completion_tokens"]),
            time=(_timestamp(row) - start).total_seconds()))
    return calls


def _timestamp(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S")


def _chat_names(rows: Iterable[dict[str, str]]) -> Iterator[str]:
    """``<index>-<phase>`` of each call's chat: a new chat where phase or roles change."""
    index, previous = -1, None
    for row in rows:
        key = (row["phase"], row["assistant_role"], row["user_role"])
        if key != previous:
            index, previous = index + 1, key
        yield f"{index:02d}-{row['phase']}"


class _HistoryIds:
    """A segment id per conversation copy that moves to ``#2``, ``#3`` when it shrinks."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}  # base id -> (generation, length)

    def id_for(self, base: str, length: int) -> str:
        generation, last_length = self._last.get(base, (1, 0))
        if length < last_length:
            generation += 1
        self._last[base] = (generation, length)
        return base if generation == 1 else f"{base}#{generation}"


# ---------------------------------------------------------------------------------------
# Synthetic SelectorGroupChat
# ---------------------------------------------------------------------------------------

SELECTOR = "selector"
_ROLES = ("planner", "researcher", "coder", "reviewer", "tester", "writer")

# Where each role tends to hand over (weights before the seeded jitter). No role follows
# itself: SelectorGroupChat forbids a repeated speaker by default.
_HANDOVERS: dict[str, dict[str, float]] = {
    "planner": {"coder": 0.45, "researcher": 0.35, "writer": 0.10, "tester": 0.05},
    "researcher": {"planner": 0.40, "coder": 0.30, "writer": 0.20},
    "coder": {"reviewer": 0.65, "tester": 0.20, "planner": 0.05},
    "reviewer": {"coder": 0.55, "planner": 0.30, "tester": 0.10},
    "tester": {"coder": 0.55, "planner": 0.25, "reviewer": 0.10},
    "writer": {"planner": 0.50, "reviewer": 0.30, "researcher": 0.10},
}
_BACKGROUND_WEIGHT = 0.02  # every other non-repeating handover stays possible
_MESSAGE_MEDIAN, _MESSAGE_SIGMA, _MESSAGE_CAP = 150, 0.9, 1_500
_SYSTEM_RANGE = (300, 900)
_SELECTOR_REPLY = (3, 7)


def selector(sessions: int = 200, agents: int = 6, turns: tuple[int, int] = (8, 24),
             seed: int = 0) -> list[TraceCall]:
    """A synthetic AutoGen SelectorGroupChat workload (``selector``), as ``segments``.

    Each session starts with a task message in the thread; each of its ``turns`` (drawn
    uniformly from the inclusive range) is two calls: the ``selector`` agent (its system
    prompt + the thread; a reply of 3 to 7 tokens naming the next speaker), then the
    chosen agent (its system prompt + the thread; its reply joins the thread, the
    selector's does not). Prompts: ``[("selector/system/<agent>", S_agent),
    ("<session>/thread", thread_tokens)]``; one thread id per session, since every agent
    sees the same thread (AutoGen's own-versus-others role labels are ignored).
    Assumptions, all drawn from ``random.Random(seed)``:

    - Agents: ``planner``, ``researcher``, ``coder``, ``reviewer``, ``tester``, ``writer``
      (the first ``agents`` of them; ``specialist7``, ... beyond six). The first speaker is
      the planner.
    - Speakers follow a fixed Markov chain: the structured handover weights of
      ``_HANDOVERS`` (coder -> reviewer 0.65, reviewer -> coder 0.55 or planner 0.30,
      planner -> coder/researcher, ...), each times a seeded factor in [0.5, 1.5], plus
      0.02 on every other agent, no self-handover; agents beyond six get random skewed
      rows.
    - System prompts: 300 to 900 tokens per agent, the selector included.
    - Messages (the task and each reply): lognormal, median 150 tokens, sigma 0.9, capped
      at 1,500, at least 1.
    """
    rng = random.Random(seed)
    names = _agent_names(agents)
    matrix = _transition_matrix(names, rng)
    system = {name: rng.randint(*_SYSTEM_RANGE) for name in (SELECTOR, *names)}
    calls: list[TraceCall] = []
    for index in range(sessions):
        calls.extend(_selector_session(f"selector-{index}", names, matrix, system,
                                       rng.randint(*turns), rng))
    return calls


def _agent_names(agents: int) -> list[str]:
    if agents < 2:
        raise ValueError("a selector group chat needs at least 2 agents")
    return [*_ROLES[:agents], *(f"specialist{i}" for i in range(len(_ROLES) + 1, agents + 1))]


def _transition_matrix(names: list[str], rng: random.Random) -> dict[str, list[float]]:
    """Each agent's probabilities of handing over to each agent of ``names``."""
    matrix = {}
    for source in names:
        preferred = _HANDOVERS.get(source)
        weights = [0.0 if target == source else
                   _handover_weight(preferred, target, rng) for target in names]
        total = sum(weights)
        matrix[source] = [weight / total for weight in weights]
    return matrix


def _handover_weight(preferred: dict[str, float] | None, target: str,
                     rng: random.Random) -> float:
    if preferred is None:  # an agent beyond the six roles: a random, skewed row
        return rng.paretovariate(1.5) - 1 + _BACKGROUND_WEIGHT
    return preferred.get(target, 0.0) * rng.uniform(0.5, 1.5) + _BACKGROUND_WEIGHT


def _selector_session(session: str, names: list[str], matrix: dict[str, list[float]],
                      system: dict[str, int], turns: int,
                      rng: random.Random) -> list[TraceCall]:
    thread_id, thread = f"{session}/thread", _message_tokens(rng)
    speaker: str | None = None
    calls = []
    for turn in range(turns):
        speaker = names[0] if speaker is None else rng.choices(names, matrix[speaker])[0]
        reply = _message_tokens(rng)
        for offset, (agent, completion) in enumerate(
                [(SELECTOR, rng.randint(*_SELECTOR_REPLY)), (speaker, reply)]):
            calls.append(TraceCall(
                workload="selector", session=session, agent=agent, step=2 * turn + offset,
                segments=[(f"selector/system/{agent}", system[agent]), (thread_id, thread)],
                completion_tokens=completion))
        thread += reply
    return calls


def _message_tokens(rng: random.Random) -> int:
    tokens = round(rng.lognormvariate(math.log(_MESSAGE_MEDIAN), _MESSAGE_SIGMA))
    return max(1, min(_MESSAGE_CAP, tokens))


# ---------------------------------------------------------------------------------------
# Loading, summaries, command line
# ---------------------------------------------------------------------------------------

def load(name: str) -> list[TraceCall]:
    """A named trace from the copies in ``benchmarks/data/multiagent/`` (or generated)."""
    if name == "whowhen-hand":
        return whowhen(DATA / "whowhen.jsonl.gz", "hand-crafted")
    if name == "whowhen-algo":
        return whowhen(DATA / "whowhen.jsonl.gz", "algorithm-generated")
    if name == "chatdev":
        return chatdev(DATA / "chatdev_calls.csv")
    if name == "selector":
        return selector()
    raise ValueError(f"unknown trace {name!r}; known: {', '.join(TRACE_NAMES)}")


def prompt_tokens(call: TraceCall) -> int:
    """A call's prompt length: the segments' sum, or the rendered chat's simulator tokens."""
    if call.segments is not None:
        return sum(tokens for _, tokens in call.segments)
    return len(render_prompt(call.messages or []))


def summary(calls: Sequence[TraceCall]) -> dict[str, Any]:
    """Sessions, calls, distinct agents, mean prompt tokens, and ``same_agent_share``: the
    share of all calls whose agent is that of the call before it in its session (a
    session's first call never counts as one)."""
    previous: dict[str, TraceCall] = {}
    repeats = 0
    for call in sorted(calls, key=lambda c: c.step):
        before = previous.get(call.session)
        repeats += before is not None and before.agent == call.agent
        previous[call.session] = call
    count = len(calls)
    return {"sessions": len({call.session for call in calls}), "calls": count,
            "agents": len({call.agent for call in calls}),
            "mean_prompt_tokens": sum(map(prompt_tokens, calls)) / count if count else 0.0,
            "same_agent_share": repeats / count if count else 0.0}


def summary_line(name: str, calls: Sequence[TraceCall]) -> str:
    numbers = summary(calls)
    return (f"{name}: {numbers['sessions']} sessions, {numbers['calls']} calls, "
            f"{numbers['agents']} agents, mean prompt {numbers['mean_prompt_tokens']:.0f} "
            f"tokens, same agent as previous call {numbers['same_agent_share']:.1%}")


def _first(items: Iterable[_T], limit: int | None) -> Iterator[_T]:
    for count, item in enumerate(items):
        if limit is not None and count >= limit:
            return
        yield item


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"traces to write (default: all of {', '.join(TRACE_NAMES)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in TRACE_NAMES]
    if unknown:
        parser.error(f"unknown trace {', '.join(unknown)}; known: {', '.join(TRACE_NAMES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or TRACE_NAMES:
        started = time.perf_counter()
        calls = load(name)
        converted = time.perf_counter()
        write_trace(args.out / f"{name}.jsonl.gz", calls)
        written = time.perf_counter()
        line = summary_line(name, calls)
        print(f"{line} (convert {converted - started:.1f} s, write {written - converted:.1f} s,"
              f" summarise {time.perf_counter() - written:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
