"""The ranker on Triton over gRPC (KServe v2 protocol): async client, typed inputs, explicit version.

Separate from anything importing `kserve`: tritonclient.grpc and kserve register the same protobuf symbols.
"""

from __future__ import annotations

import asyncio

import numpy as np

from core.ranking_inputs import INPUTS

_DTYPES = {"history": "INT64", "item": "INT64", "item_dense": "FP32", "item_content": "FP32",
           "user_dense": "FP32", "recall_score": "FP32"}


class RankerClient:
    """One gRPC channel per replica; `score` returns p(click) per row."""

    def __init__(self, url: str, model: str = "ranker") -> None:
        import tritonclient.grpc.aio as grpcclient

        self._mod = grpcclient
        self.url = url
        self.model = model
        self._client = None

    @property
    def client(self):
        """Created on first use, inside the running event loop (a grpc.aio channel is bound to its loop)."""
        if self._client is None:
            self._client = self._mod.InferenceServerClient(self.url)
        return self._client

    async def ready(self, version: str = "") -> bool:
        client = self.client
        try:
            return await client.is_model_ready(self.model, version, client_timeout=2.0)
        except Exception:  # unreachable server: not ready, and the caller says so
            self._drop(client)
            return False

    async def score(self, inputs: dict[str, np.ndarray], version: str, timeout_s: float) -> np.ndarray:
        tensors = []
        for name in INPUTS:
            arr = np.ascontiguousarray(inputs[name])
            t = self._mod.InferInput(name, list(arr.shape), _DTYPES[name])
            t.set_data_from_numpy(arr)
            tensors.append(t)
        client = self.client
        try:
            res = await client.infer(self.model, tensors, model_version=version,
                                     outputs=[self._mod.InferRequestedOutput("p_click")], client_timeout=timeout_s)
        except Exception:  # not on cancellation: one request given up must not close the channel under the others
            self._drop(client)
            raise
        return res.as_numpy("p_click")[:, 0]

    def _drop(self, client) -> None:
        """A fresh channel next time: a channel that saw the server die backs off for up to minutes."""
        if self._client is client:
            self._client = None
            asyncio.get_running_loop().create_task(client.close())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
