"""``specdec serve`` as a user starts it: it answers on the port it was given, and on SIGTERM lets a streaming
request finish before it exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from specdec import GenerationConfig, SpeculationConfig

pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_specdec_serve_answers_and_stops_on_sigterm(engine):
    port = free_port()
    command = [sys.executable, "-m", "specdec", "serve", "--target", "zoo:tiny-code-target"]
    command += ["--draft", "zoo:tiny-code-draft", "--k", "4", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "specdec serve did not come up"
            time.sleep(0.2)
        body = {"model": "zoo:tiny-code-target", "prompt": "def parse_args(", "max_tokens": 12, "temperature": 0}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).json()
        expected = engine.generate("def parse_args(", GenerationConfig(max_new_tokens=12), SpeculationConfig(k=4))
        assert answer["choices"][0]["text"] == expected.text
        # SIGTERM while a request streams: the server lets it finish, then exits
        started, lines = threading.Event(), []
        streaming = threading.Thread(target=_stream, args=(port, started, lines))
        streaming.start()
        assert started.wait(60), "the streamed request never started"
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    streaming.join(30)
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status is SIGTERM's
    assert server.returncode in (0, -signal.SIGTERM) and "Traceback" not in stderr, stderr
    assert "serving zoo:tiny-code-target" in stderr and f"127.0.0.1:{port}/v1" in stderr


def _stream(port: int, started: threading.Event, lines: list[str]) -> None:
    body = {"model": "zoo:tiny-code-target", "prompt": "import os\n", "max_tokens": 120, "temperature": 0}
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/v1/completions", json={**body, "stream": True}, timeout=60
    ) as sse:
        for line in sse.iter_lines():
            if line.startswith("data:"):
                lines.append(line)
                started.set()


def test_serve_without_the_extra_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "uvicorn.py"
    blocker.write_text("raise ImportError('blocked for this test', name='uvicorn')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "specdec", "serve", "--target", "zoo:tiny-code-target"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "pip install 'specdec[serve]'" in done.stderr
