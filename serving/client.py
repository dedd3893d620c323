"""Clients of the running graph (the CLI's `recsys recommend`); errors become one readable line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from recsys.errors import RecsysError
from recsys.settings import Settings
from serving.launcher import http_url


class ServingError(RecsysError):
    """The graph did not answer, or answered with an error."""


def recommend_http(settings: Settings, user_id: int, k: int = 10, include_copy: bool = True,
                   timeout: float = 10.0) -> dict[str, Any]:
    body = json.dumps({"user_id": user_id, "k": k, "include_copy": include_copy}).encode()
    url = f"{http_url(settings)}/recommend"
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            msg = e.reason
        raise ServingError(f"{url} answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServingError(f"no graph at {url} ({getattr(e, 'reason', e)}): start it with `recsys serve`") from None
