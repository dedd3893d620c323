"""The demo's closing commands name real things: the proto's service, a body the contract accepts, the ports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from rich.console import Console

from core.settings import load_settings
from recsys.demo import where_next
from serving.contracts import RecommendRequest

ROOT = Path(__file__).resolve().parents[2]


def _lines(**env: str) -> dict[str, str]:
    s = load_settings(environ={"RECSYS_PROFILE": "dev", **env})
    console = Console(record=True, width=400)
    where_next(s, console, 42)
    out = {}
    for line in console.export_text().splitlines():
        if ": " in line and line.startswith("  "):
            label, how = line.strip().split(": ", 1)
            out[label] = how
    return out


def test_commands_follow_the_settings_and_the_contracts() -> None:
    lines = _lines(RECSYS_SERVE_HTTP_PORT="8123", RECSYS_SERVE_GRPC_PORT="9123")
    curl = shlex.split(lines["HTTP"])
    assert "http://127.0.0.1:8123/recommend" in curl
    assert RecommendRequest.model_validate(json.loads(curl[curl.index("-d") + 1])).user_id == 42

    grpc = shlex.split(lines["gRPC (grpcurl)"])
    proto = ROOT / grpc[grpc.index("-import-path") + 1] / grpc[grpc.index("-proto") + 1]
    package = re.search(r"^package ([\w.]+);", proto.read_text(), re.M).group(1)
    service, method = grpc[-1].rsplit("/", 1)
    assert service == f"{package}.Recommender" and re.search(rf"rpc {method}\(", proto.read_text())
    assert grpc[-2] == "127.0.0.1:9123"
    assert lines["MLflow UI (runs, metrics, registry)"].endswith(load_settings(environ={}).tracking_uri)
