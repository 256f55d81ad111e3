"""A fan-out/fan-in research workflow over a list output.

A light model plans a few search queries for a topic. For each query, a light stage
searches the notes with a tool and summarizes what it found; these run concurrently as
one map. A heavy model synthesizes all summaries into a report, a light reviewer
returns a typed verdict, and its ``approved`` flag decides between publishing the
report and revising it on the heavy model.
"""

from __future__ import annotations

from pydantic import BaseModel

import orla_sdk as orla

NOTES = {
    "kv cache": "Prefix caching reuses the KV cache of a shared prompt prefix across requests.",
    "scheduling": "Serving engines batch requests; priorities decide who waits in the queue.",
    "routing": "Small models answer easy requests; hard ones go to a larger model.",
    "agents": "Agent workflows chain many model calls with tool use between them.",
}


class Review(BaseModel):
    approved: bool
    missing: list[str]
    comments: str


def search_notes(query: str) -> str:
    """Search the research notes; returns every note whose topic the query mentions."""
    hits = [text for topic, text in NOTES.items() if topic in query.lower()]
    return "\n".join(hits) or "no notes found"


@orla.stage(model="light")
def plan_queries(topic: str) -> list[str]:
    """Break a research topic into three to five search queries."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light", tools=[search_notes])
def search_and_summarize(query: str) -> str:
    """Search the notes for one query and summarize what they say."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy")
def synthesize(topic: str, summaries: list[str]) -> str:
    """Write a report on the topic from the per-query summaries."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light")
def review(topic: str, report: str) -> Review:
    """Check the report against the topic and list what it misses."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="heavy")
def revise(report: str, feedback: Review) -> str:
    """Rewrite the report to address the reviewer's feedback."""
    raise NotImplementedError("runs on an engine")


@orla.stage(model="light")
def publish(topic: str, report: str) -> str:
    """Format the approved report with a title and a short abstract."""
    raise NotImplementedError("runs on an engine")


BACKENDS = [
    orla.backends.llamacpp("laptop"),
    orla.backends.vllm("gpu-server", "http://127.0.0.1:8000/v1", models=["Qwen/Qwen3-32B"]),
]
MAPPING = {
    "light": orla.Target(backend="laptop", model=orla.backends.DEFAULT_LOCAL_MODEL),
    "heavy": orla.Target(backend="gpu-server", model="Qwen/Qwen3-32B",
                         params={"max_tokens": 2048}),
}


@orla.workflow(backends=BACKENDS, mapping=MAPPING)
def research(topic: str) -> str:
    queries = plan_queries(topic)
    summaries = [search_and_summarize(q) for q in queries]
    report = synthesize(topic, summaries)
    verdict = review(topic, report)
    if verdict.approved:
        return publish(topic, report)
    return revise(report, verdict)
