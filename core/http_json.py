"""JSON over HTTP with the standard library, one way for every client of ours (Triton's HTTP API, the Feast
feature server, the Serve API): a failure is one `HttpError` whose message is the server's own `error` field
when it sent one, so callers can turn it into their one readable line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HttpError(Exception):
    """`status` 0: nothing answered (refused, timed out, unreachable); else the HTTP status with its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def request_json(url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None) -> Any:
    """GET (`body` None) or POST `body` as JSON; the decoded answer ({} for an empty one)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={**({"Content-Type": "application/json"} if data is not None else {}),
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        text = e.read()[:2000]
        try:
            msg = json.loads(text).get("error") or e.reason
        except (ValueError, AttributeError):
            msg = text.decode(errors="replace").strip()[:200] or e.reason
        raise HttpError(e.code, str(msg)) from None
    except (urllib.error.URLError, OSError) as e:
        raise HttpError(0, str(getattr(e, "reason", e))) from None
    return json.loads(raw) if raw else {}


def answers(url: str, timeout: float = 2.0) -> bool:
    """A GET of `url` answers 200 (health and readiness probes)."""
    try:
        request_json(url, timeout=timeout)
        return True
    except (HttpError, ValueError):
        return False
