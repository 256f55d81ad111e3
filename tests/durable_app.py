"""A checkout workflow for the durable-run tests, run as a script so a test can kill it:

    python durable_app.py DB CHARGES_FILE DIE_AT

DIE_AT: "answer" (SIGKILL while the model answers, right after charge_card ran),
"notify" (SIGKILL as the second stage starts) or "never". The run continues from DB when
DB already holds it. Prints the output and what this process asked of the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from pydantic import BaseModel

import orla_sdk as orla
from orla_sdk.backends.base import ChatRequest, ChatResult
from orla_sdk.ir import BackendSpec, Capabilities

RUN_ID = "order-7"


class Receipt(BaseModel):
    order: str
    message: str


@orla.tool(effect=True)
def charge_card(amount: int, idempotency_key: str = "") -> str:
    """Charge the customer's card."""
    with open(os.environ["CHARGES"], "a") as charges:
        charges.write(f"{amount} {idempotency_key}\n")
    return f"charged {amount}"


@orla.stage(model="m", tools=[charge_card])
def checkout(order: str) -> Receipt:
    message = orla.generate(f"Charge order {order} and confirm.")
    return Receipt(order=order, message=message)


@orla.stage(model="m")
def notify(receipt: Receipt) -> str:
    if os.environ.get("DIE_AT") == "notify":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"mailed {receipt.order}: {receipt.message}"


@orla.workflow
def purchase(order: str) -> str:
    return notify(checkout(order))


class Cashier:
    """A model that calls charge_card once, then answers (tools emulated as JSON)."""

    def __init__(self) -> None:
        self.spec = BackendSpec(name="cashier", kind="openai", url="http://127.0.0.1:9/v1",
                                capabilities=Capabilities(tool_calling=False))
        self.requests = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests += 1
        answered = any("Result of charge_card" in str(m.get("content")) for m in request.messages)
        if answered and os.environ.get("DIE_AT") == "answer":
            os.kill(os.getpid(), signal.SIGKILL)
        reply = ({"answer": "paid"} if answered
                 else {"tool": "charge_card", "arguments": {"amount": 5}})
        return ChatResult(content=json.dumps(reply), tool_calls=[], finish_reason="stop",
                          prompt_tokens=10, completion_tokens=5, cached_tokens=0, ttft_s=0.0,
                          duration_s=0.0)

    async def aclose(self) -> None:
        pass


def main(db: str) -> None:
    cashier = Cashier()
    plan = orla.compile(purchase, backends=[cashier.spec], mapping={"m": "cashier/m"})

    async def go() -> orla.RunResult:
        async with orla.BackendPool(plan.backends, clients={"cashier": cashier}) as pool:
            if orla.runtime.SQLiteCheckpoints(db).run(RUN_ID) is not None:
                return await orla.aresume(plan, RUN_ID, checkpoint=db, pool=pool)
            return await orla.arun(plan, pool=pool, run_id=RUN_ID, checkpoint=db, order="7")

    result = asyncio.run(go())
    print(json.dumps({"output": result.output, "error": result.error,
                      "requests": cashier.requests,
                      "restored": [r.node for r in result.stages if r.restored]}))


if __name__ == "__main__":
    os.environ["CHARGES"], os.environ["DIE_AT"] = sys.argv[2], sys.argv[3]
    main(sys.argv[1])
