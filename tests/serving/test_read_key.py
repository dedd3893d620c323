"""`read_requires_key`: /recommend answers 401 without a valid key, before the body is parsed; the CLI sends it.

The gate is the Ingress's real ASGI middleware (`serving.gate`) driven with real ASGI messages (the graph behind
it is replaced by an app that records whether the request got through); the client test runs a real HTTP
server on loopback.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import gate


@pytest.fixture
def gate_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    keys_file = tmp_path / "keys"
    keys_file.write_text("rotated-key\n")
    for name, value in {"RECSYS_PROFILE": "ci", "RECSYS_HOME": str(tmp_path / "home"),
                        "RECSYS_READ_REQUIRES_KEY": "true", "RECSYS_API_KEYS": "[reader-key]",
                        "RECSYS_API_KEYS_FILE": str(keys_file)}.items():
        monkeypatch.setenv(name, value)
    gate.replica_settings.cache_clear()
    yield keys_file
    gate.replica_settings.cache_clear()


def through_gate(path: str, headers: dict[str, str], body: bytes = b'{"user_id": 1}') -> tuple[int, dict, bool]:
    """(status, JSON body, whether the app behind the gate was called) for one POST."""
    reached = []

    async def app(scope, receive, send) -> None:
        reached.append(path)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "http_version": "1.1",
             "headers": [(k.lower().encode(), v.encode()) for k, v in
                         {"content-length": str(len(body)), **headers}.items()]}
    asyncio.run(gate.Gate(app)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload), bool(reached)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "reader-key"},
                                     {"Authorization": "Basic reader-key"}])
def test_a_read_without_a_valid_key_is_401_and_never_reaches_the_graph(gate_settings, headers):
    status, body, reached = through_gate("/recommend", headers, body=b"{not even json")
    assert (status, reached) == (401, False)  # 401 before the body is looked at: not a 400
    assert "API key" in body["error"] and "reader-key" not in json.dumps(body)


@pytest.mark.parametrize("key", ["reader-key", "rotated-key"])
def test_a_settings_key_or_a_keys_file_key_lets_the_read_through(gate_settings, key):
    assert through_gate("/recommend", {"Authorization": f"Bearer {key}"})[::2] == (200, True)


def test_health_stays_open_and_a_rotated_keys_file_applies_without_restart(gate_settings):
    assert through_gate("/readyz", {})[::2] == (200, True)  # probes carry no key
    gate_settings.write_text("new-key\n")
    assert through_gate("/recommend", {"Authorization": "Bearer rotated-key"})[0] == 401
    assert through_gate("/recommend", {"Authorization": "Bearer new-key"})[0] == 200


def test_reads_are_open_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_PROFILE", "ci")
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("RECSYS_READ_REQUIRES_KEY", raising=False)
    gate.replica_settings.cache_clear()
    try:
        assert through_gate("/recommend", {})[::2] == (200, True)
        assert gate.read_refused(None) is None
    finally:
        gate.replica_settings.cache_clear()


def test_the_cli_client_sends_its_key_on_reads(tmp_path):
    """`recsys recommend` (serving.client) carries settings.api_key, so a keyed deployment answers it."""
    from core.settings import load_settings
    from serving.client import recommend_http

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            out = b'{"items": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"RECSYS_PROFILE": "ci", "RECSYS_HOME": str(tmp_path), "RECSYS_SERVE_HOST": "127.0.0.1",
               "RECSYS_SERVE_HTTP_PORT": str(server.server_port)}
        assert recommend_http(load_settings(environ={**env, "RECSYS_API_KEY": "reader-key"}), 1) == {"items": []}
        recommend_http(load_settings(environ={**env, "RECSYS_API_KEY": ""}), 1)  # no key here: none sent
    finally:
        server.shutdown()
    assert seen == ["Bearer reader-key", None]


def _chunked(path: str, chunks: list[bytes]) -> tuple[int, bytes | None, int]:
    """(status, the body the app behind the gate received) for a POST sent in chunks without Content-Length."""
    got: list[bytes] = []

    async def app(scope, receive, send) -> None:
        message = await receive()
        got.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    served = iter(messages)
    read = [0]

    async def receive() -> dict:
        read[0] += 1
        return next(served, {"type": "http.disconnect"})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "http_version": "1.1",
             "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(gate.Gate(app)(scope, receive, send))
    status = next(m for m in sent if m["type"] == "http.response.start")["status"]
    return status, (got[0] if got else None), read[0]


def test_a_chunked_body_over_the_limit_is_413_before_it_is_read_whole(monkeypatch, tmp_path):
    """Transfer-Encoding: chunked has no Content-Length: the gate counts while the body streams in and stops at
    the limit (a 20 MB body had reached the impression log whole)."""
    monkeypatch.setenv("RECSYS_PROFILE", "ci")
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.setenv("RECSYS_MAX_REQUEST_BYTES", "1000")
    gate.replica_settings.cache_clear()
    try:
        status, body, reads = _chunked("/feedback", [b"x" * 400] * 50)
        assert (status, body) == (413, None) and reads == 3  # stopped at 1,200 of 20,000 bytes
        status, body, _ = _chunked("/recommend", [b'{"user_id"', b": 1}"])
        assert (status, body) == (200, b'{"user_id": 1}')  # under the limit: the app gets the whole body once
    finally:
        gate.replica_settings.cache_clear()
