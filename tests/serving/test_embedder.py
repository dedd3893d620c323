"""The catalogue's item embedder runs in a Ray actor that ends when idle (`serving.embedder`): the same vectors as
embedding in process, and after `reap` the actor (and the model's memory) is gone; the next upsert starts another."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ray

from core.content import embed_items
from serving.embedder import IdleEmbedder

pytestmark = pytest.mark.slow  # a local Ray and the sentence-transformers model in a worker (~20 s)

ITEMS = pd.DataFrame({"title": ["Heat (1995)", "Fargo (1996)"], "genres": [["Action", "Crime"], ["Crime"]],
                      "tags": [[], ["snow"]]})


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_the_embedder_actor_gives_the_in_process_vectors_and_ends_when_idle(local_ray) -> None:
    emb = IdleEmbedder(idle_s=3600.0, timeout_s=120.0)
    assert not emb.alive
    got = emb.embed(ITEMS, "all-MiniLM-L6-v2")
    np.testing.assert_allclose(got, embed_items(ITEMS, "all-MiniLM-L6-v2"), atol=1e-5)
    assert emb.alive
    assert not emb.reap()  # used just now: kept for the rest of the burst
    first = emb._actor

    emb.idle_s = 0.0
    assert emb.reap() and not emb.alive
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(first.embed.remote(ITEMS, "all-MiniLM-L6-v2"), timeout=60)

    again = emb.embed(ITEMS.iloc[:1], "all-MiniLM-L6-v2")  # the next burst starts a new actor
    assert again.shape == (1, 384) and emb.alive and emb._actor is not first
    emb.reap()
