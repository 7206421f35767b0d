"""A live server on a free loopback port, in this process: the zoo pair at K = 4 on the CPU."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from specdec import SpeculationConfig, SpeculativeEngine, load_model  # noqa: E402
from specdec.serving import ServeConfig, create_app  # noqa: E402

MODEL = "zoo:tiny-code-target"


@dataclass
class Live:
    url: str  # http://127.0.0.1:PORT
    engine: SpeculativeEngine
    app: object

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="package")
def engine() -> SpeculativeEngine:
    target = load_model(MODEL, device="cpu", dtype="float32")
    return SpeculativeEngine(target, load_model("zoo:tiny-code-draft", device="cpu", dtype="float32"))


@pytest.fixture(scope="package")
def live(engine) -> Iterator[Live]:
    app = create_app(engine, SpeculationConfig(k=4), ServeConfig(model_name=MODEL, max_concurrency=4))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, app)
    server.should_exit = True
    thread.join(10)
