"""What a serving case (``engine: openai``) sends its requests to: an OpenAI-compatible ``endpoint`` given by the
suite, or a ``specdec serve`` subprocess the plugin starts on a free loopback port (``serve:``).

Servers are started lazily, one per distinct :class:`ServeSpec`, reused by every case that shares it, and stopped
when the session ends. Each one's stdout and stderr go to a log file that failure messages name.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pytest_specdec.load import TRANSPORT_ERRORS

if TYPE_CHECKING:
    from pytest_specdec.suite import DraftChoice

START_TIMEOUT_S = 180.0  # from starting `specdec serve` to its /health answering (loading models included)
STOP_TIMEOUT_S = 15.0  # after SIGTERM, before SIGKILL
LOG_TAIL_LINES = 20  # of a server's log, in a failure message
LOOPBACK = "127.0.0.1"


class EndpointError(Exception):
    """A server that did not start, died, or an endpoint that does not answer: the message says which and why."""


@dataclass(frozen=True)
class ServeSpec:
    """How to start ``python -m specdec serve`` (the suite's ``serve:`` mapping)."""

    target: str  # resolved model name, as the suite's `target`
    drafting: DraftChoice | None  # None: autoregressive server
    k: int  # tokens drafted per step (ignored without a draft)
    device: str
    dtype: str  # "float32", ...
    threads: int | None  # OMP_NUM_THREADS of the server process (None: inherited)

    def without_draft(self) -> ServeSpec:
        """The autoregressive server a speculative one is measured against (same target, device and dtype)."""
        return dataclasses.replace(self, drafting=None, k=0)

    def command(self, port: int) -> list[str]:
        command = [sys.executable, "-m", "specdec", "serve", "--target", self.target, "--host", LOOPBACK]
        command += ["--port", str(port), "--device", self.device, "--dtype", self.dtype, "--max-concurrency", "1024"]
        drafting = self.drafting
        if drafting is not None:
            command += ["--k", str(self.k), "--draft-method", drafting.method]
            if drafting.model is not None:
                command += ["--draft", drafting.model]
            defaults = type(drafting.options)()
            for field in dataclasses.fields(drafting.options):
                value = getattr(drafting.options, field.name)
                if value != getattr(defaults, field.name):  # only what the suite set
                    command += ["--draft-option", f"{field.name}={_option_text(value)}"]
        return command

    def definition(self) -> dict[str, Any]:
        """What the case digest keeps of it."""
        drafting = self.drafting
        return {
            "target": self.target.rsplit("/", 1)[-1] if self.target.startswith("/") else self.target,
            "draft": None
            if drafting is None
            else {"method": drafting.method, "model": drafting.model and drafting.model.rsplit("/", 1)[-1]}
            | drafting.options_dict(),
            "k": self.k,
            "device": self.device,
            "dtype": self.dtype,
        }

    def label(self) -> str:
        return f"specdec serve --target {self.target}" + (
            f" --draft-method {self.drafting.method} --k {self.k}" if self.drafting else ""
        )


def _option_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Serving:
    """A serving case's load: where it sends requests and how many, how fast."""

    endpoint: str | None  # http://HOST:PORT/v1 given by the suite; None with `serve`
    serve: ServeSpec | None  # the server the plugin starts; None with `endpoint`
    concurrency: int  # requests in flight at most
    request_rate: float | None  # requests/s, Poisson arrivals; None: all at once (as concurrency allows)
    requests: int  # requests per round (the prompts, cycled)
    request_timeout_s: float  # one request, from sending to its last chunk
    case_timeout_s: float  # one round of all requests

    def definition(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "serve": self.serve.definition() if self.serve else None,
            "concurrency": self.concurrency,
            "request_rate": self.request_rate,
            "requests": self.requests,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Server:
    spec: ServeSpec
    url: str  # http://127.0.0.1:PORT/v1
    process: subprocess.Popen[bytes]
    log: Path

    def died(self) -> str | None:
        """Why the server is not running (None while it runs)."""
        code = self.process.poll()
        if code is None:
            return None
        return (
            f"`{self.spec.label()}` exited with status {code}; the last lines of its log {self.log}:\n"
            f"{log_tail(self.log)}"
        )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


class ServerPool:
    """The session's ``specdec serve`` processes, one per :class:`ServeSpec`, started on first use."""

    def __init__(self, log_folder: Callable[[], Path], start_timeout_s: float = START_TIMEOUT_S) -> None:
        self._log_folder = log_folder
        self._start_timeout_s = start_timeout_s
        self._servers: dict[ServeSpec, Server] = {}
        self._failed: dict[ServeSpec, str] = {}  # a server that did not start is not started again

    def url(self, spec: ServeSpec) -> tuple[str, Server]:
        """The running server's base URL (``http://127.0.0.1:PORT/v1``); raises :class:`EndpointError`."""
        if spec in self._failed:
            raise EndpointError(self._failed[spec])
        server = self._servers.get(spec)
        if server is None:
            try:
                server = self._servers[spec] = self._start(spec)
            except EndpointError as error:
                self._failed[spec] = str(error)
                raise
        why = server.died()
        if why is not None:
            raise EndpointError(why)
        return server.url, server

    def _start(self, spec: ServeSpec) -> Server:
        folder = self._log_folder()
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = folder / f"serve-{len(self._servers) + len(self._failed) + 1}-port{port}.log"
        env = dict(os.environ)
        if spec.threads is not None:
            env["OMP_NUM_THREADS"] = str(spec.threads)
        command = spec.command(port)
        with log.open("wb") as out:
            out.write(("$ " + " ".join(command) + "\n").encode())
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = Server(spec, f"http://{LOOPBACK}:{port}/v1", process, log)
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            why = server.died()
            if why is not None:
                raise EndpointError(f"the server did not start: {why}")
            try:
                if httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2.0).status_code == 200:
                    return server
            except TRANSPORT_ERRORS:  # not listening yet
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise EndpointError(
                    f"`{spec.label()}` did not answer /health within {self._start_timeout_s:g} s; the last lines of "
                    f"its log {log}:\n{log_tail(log)}"
                )
            time.sleep(0.2)

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
