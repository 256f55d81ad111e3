"""``orla serve`` under generated input: schemathesis against its own ``/openapi.json``,
and hypothesis bodies and headers sent to the chat endpoint. Whatever comes in, the proxy
answers, within a timeout, with a status below 500 (OpenAI's error envelope for any
refusal), and a stream it starts ends with ``[DONE]``. The backend is the scripted one of
``tests/test_proxy.py``, which never fails: a 5xx could only be the proxy's own."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from orla_sdk.serving.proxy import ProxyServer
from orla_sdk.serving.proxy_openapi import openapi_schema
from tests.test_proxy import Scripted

TIMEOUT_S = 10.0  # no answer within this is a hang
MODELS = ["light", "heavy"]


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[ProxyServer]:
    backend = Scripted()
    with ProxyServer([backend.spec], {"light": "scripted/tiny", "heavy": "scripted/big"},
                     clients={"scripted": backend}, max_body=1 << 16) as server:
        yield server


# ---- schemathesis ------------------------------------------------------------------------
OPERATIONS = [result.ok().label for result in schemathesis.openapi.from_dict(
    openapi_schema(MODELS, secured=False)).get_all_operations()]


@pytest.fixture(scope="module")
def described(fuzzed: ProxyServer) -> Any:
    """The description the proxy serves at ``/openapi.json``, as schemathesis reads it."""
    return schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")


@pytest.mark.parametrize(("label", "mode"), [
    *((label, GenerationMode.POSITIVE) for label in OPERATIONS),
    ("POST /v1/chat/completions", GenerationMode.NEGATIVE)])  # the others take any input
def test_the_openapi_description_holds(described: Any, fuzzed: ProxyServer, label: str,
                                       mode: GenerationMode) -> None:
    """Valid requests as described are served, invalid ones refused with a 4xx; every
    answer matches the description (statuses, content types, schemas); never a 5xx."""
    operation = described.find_operation_by_label(label)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        case.call_and_validate(timeout=TIMEOUT_S)

    call()


# ---- hypothesis: bodies and headers --------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
any_type = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]) | json_values},
    optional={"content": st.text(max_size=40) | json_values}), min_size=1, max_size=3)
chat_fields = st.fixed_dictionaries({
    "model": st.sampled_from(MODELS) | json_values, "messages": messages | json_values},
    optional={name: st.one_of(strategy, any_type) for name, strategy in {
        "stream": st.booleans(), "n": st.integers(0, 20),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | any_type}),
        "response_format": st.fixed_dictionaries({"type": st.sampled_from(
            ["text", "json_object", "json_schema", "xml"])}, optional={
            "json_schema": st.fixed_dictionaries({}, optional={
                "name": st.text(max_size=4) | any_type, "schema": json_values})}),
        "max_tokens": st.integers(-2, 10**20), "temperature": st.floats(-1, 3),
        "seed": st.integers(), "priority": st.integers(-5, 105),
        "workflow_id": st.text(max_size=12), "agent_id": st.text(max_size=12),
        "tools": st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=2),
                          max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
    }.items()})
header_text = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]),
                      max_size=12).map(lambda text: text.strip(" \t"))
orla_headers = st.dictionaries(
    st.sampled_from(["X-Orla-Workflow", "X-Orla-Stage", "X-Orla-Agent", "X-Orla-Priority",
                     "Authorization"]),
    header_text | st.integers(-3, 300).map(str) | st.just("w" * 300), max_size=4)


def send(proxy: ProxyServer, content: bytes, headers: dict[str, str]) -> httpx.Response:
    encoded = {name: value.encode("latin-1") for name, value in headers.items()}
    return httpx.post(proxy.url + "/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json", **encoded},
                      timeout=TIMEOUT_S)


def check_answer(answer: httpx.Response) -> None:
    """Below 500; a refusal in OpenAI's envelope; a stream ended by ``[DONE]``."""
    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        assert answer.json()["error"]["type"] == "invalid_request_error"
    elif answer.headers["content-type"].startswith("text/event-stream"):
        assert answer.text.endswith("data: [DONE]\n\n"), answer.text[-300:]
    else:
        assert answer.json()["object"] == "chat.completion"
    assert "\n" not in answer.headers.get("x-orla-workflow", "")


@given(body=chat_fields, headers=orla_headers)
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_bodies_and_headers_never_fail_the_proxy(
        fuzzed: ProxyServer, body: dict[str, Any], headers: dict[str, str]) -> None:
    check_answer(send(fuzzed, json.dumps(body).encode(), headers))


@given(raw=st.binary(max_size=200) | st.text(string.printable, max_size=200).map(str.encode))
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_raw_bodies_are_refused_cleanly(fuzzed: ProxyServer, raw: bytes) -> None:
    check_answer(send(fuzzed, raw, {}))
