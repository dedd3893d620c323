"""`core.http_json`: JSON over HTTP against a real server on loopback: the answer, the server's own error message
with its status, a non-JSON error body, and nothing listening (status 0)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from core.http_json import HttpError, answers, request_json


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, b"") if self.path == "/empty" else self._send(503, b"<html>down</html>", "text/html")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("bad"):
            self._send(422, json.dumps({"error": "user_id must be an integer", "field": "user_id"}).encode())
        else:
            self._send(200, json.dumps({"echo": body, "type": self.headers["Content-Type"]}).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_post_sends_json_and_returns_the_decoded_answer(url: str) -> None:
    assert request_json(f"{url}/x", {"a": 1}) == {"echo": {"a": 1}, "type": "application/json"}
    assert request_json(f"{url}/empty") == {}
    assert answers(f"{url}/empty") and not answers(f"{url}/down")


def test_an_error_carries_the_servers_message_and_status(url: str) -> None:
    with pytest.raises(HttpError) as e:
        request_json(f"{url}/x", {"bad": True})
    assert (e.value.status, e.value.message) == (422, "user_id must be an integer")
    with pytest.raises(HttpError) as e:
        request_json(f"{url}/down")
    assert (e.value.status, e.value.message) == (503, "<html>down</html>")


def test_nothing_listening_is_status_zero() -> None:
    with pytest.raises(HttpError) as e:
        request_json("http://127.0.0.1:1/x", {"a": 1}, timeout=2)
    assert e.value.status == 0 and "refused" in e.value.message.lower()
