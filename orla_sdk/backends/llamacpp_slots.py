"""llama.cpp's cache controls: per-slot erase, save and restore, and its own counters.

A llama.cpp server runs ``slots`` requests in parallel, each slot keeping the KV cache of
its last prompt. A request pinned to a slot (``"id_slot"`` in the request body) reuses
that cache for a shared prefix, and the response's ``usage.prompt_tokens_details.
cached_tokens`` says how many prompt tokens came from it. These calls are what the
memory manager turns its keep/flush decisions into.

Saved slots are files in the server's slot folder (``--slot-save-path``). llama.cpp has no
call that deletes one, so ``forget`` deletes the file itself where the folder is known: one
given here, or that of an engine orla started (``orla_sdk.backends.engine.slot_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orla_sdk.backends.control import control_request
from orla_sdk.backends.engine import slot_folder
from orla_sdk.backends.http1 import connection_pool
from orla_sdk.errors import BackendError, EngineError


class LlamaCppControl:
    """Slot and metrics endpoints of one llama.cpp server (``url`` without ``/v1``);
    ``slot_dir`` is its slot folder, where this process can reach it (else looked up);
    ``backend`` the name its errors give (else the url)."""

    def __init__(self, url: str, *, timeout: float = 30.0,
                 slot_dir: str | Path | None = None, backend: str | None = None) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.backend = backend or self.url
        self._http = connection_pool(self.url, timeout=timeout)
        self.slot_dir = Path(slot_dir) if slot_dir else None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        """Whether the server is up and its model loaded (it answers 503 while loading)."""
        try:
            await self._request("GET", "/health")
        except BackendError:  # down, loading, or failing
            return False
        return True

    async def slots(self) -> list[dict[str, Any]]:
        """Each slot's state: id, whether it is busy, tokens of its cached prompt."""
        result: list[dict[str, Any]] = await self._call("GET", "/slots")
        return result

    async def erase(self, slot: int) -> int:
        """Drop the slot's KV cache; returns how many cached tokens were erased."""
        result = await self._call("POST", f"/slots/{slot}?action=erase")
        return int(result.get("n_erased", 0))

    async def save(self, slot: int, filename: str) -> int:
        """Write the slot's KV cache to ``filename`` in the server's slot folder."""
        result = await self._call("POST", f"/slots/{slot}?action=save", {"filename": filename})
        return int(result.get("n_saved", 0))

    async def restore(self, slot: int, filename: str) -> int:
        """Load a saved KV cache into the slot; returns how many tokens it holds."""
        result = await self._call("POST", f"/slots/{slot}?action=restore",
                                  {"filename": filename})
        return int(result.get("n_restored", 0))

    async def forget(self, filename: str) -> bool:
        """Delete the saved slot ``filename`` from the server's slot folder; False where
        there is no such file, or the folder is unknown (a server orla did not start)."""
        folder = self.slot_dir or slot_folder(self.url)
        if folder is None:
            return False
        self.slot_dir = folder
        if Path(filename).name != filename:
            raise EngineError(f"{filename!r} is not a file name; slot files live directly in "
                              f"the slot folder {folder}")
        try:
            (folder / filename).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise EngineError(f"cannot delete the saved slot {folder / filename}: {exc}; "
                              "delete it by hand, and check the folder's permissions") from exc
        return True

    async def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters, without the ``llamacpp:`` prefix."""
        return parse_prometheus((await self._request("GET", "/metrics")).decode())

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(await self._request(method, path, body))

    async def _request(self, method: str, path: str,
                       body: dict[str, Any] | None = None) -> bytes:
        return await control_request(self._http, self.backend, "llama.cpp", method, path, body)


def parse_prometheus(text: str) -> dict[str, float]:
    """``name value`` lines of the Prometheus text format; comments and labels dropped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name.split("{")[0].removeprefix("llamacpp:")] = float(value)
        except ValueError:
            continue
    return values
