"""The catalogue upsert's item embedder, in a Ray actor of its own that ends when idle.

An upsert embeds its items with torch and the sentence-transformers model (`core.content`). Loaded in the Feedback
replica they stayed for the replica's whole life: its RSS went from 0.28 to 0.78 GiB at the first upsert, the
largest share of the serving stack after the copy model, for a write that comes in bursts (an admin import).
Here the model lives in an actor started by the first upsert of a burst and killed after `embedder_idle_s`
without one, which gives the memory back to the machine (a process that imported torch never gives it back).
The next burst's first upsert pays the start again (a worker, the imports, the model: seconds, as the first
upsert always did).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import ray


@ray.remote(num_cpus=0)  # scheduled beside its caller; it runs only while an upsert waits on it
class ItemEmbedder:
    def embed(self, items: pd.DataFrame, model_name: str) -> np.ndarray:
        from core.content import embed_items

        return embed_items(items, model_name)


class IdleEmbedder:
    """`embed` has `core.content.embed_items`'s signature (blocking; the writer's thread calls it); `reap`, called
    from the replica's periodic loop, ends the actor once it has been idle for `idle_s`."""

    def __init__(self, idle_s: float, timeout_s: float) -> None:
        self.idle_s, self.timeout_s = idle_s, timeout_s
        self._actor = None
        self._busy = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def _take(self):
        with self._lock:
            if self._actor is None:
                self._actor = ItemEmbedder.remote()
            self._busy += 1
            return self._actor

    def _release(self) -> None:
        with self._lock:
            self._busy -= 1
            self._last = time.monotonic()

    def embed(self, items: pd.DataFrame, model_name: str) -> np.ndarray:
        actor = self._take()
        try:
            return ray.get(actor.embed.remote(items, model_name), timeout=self.timeout_s)
        except ray.exceptions.RayActorError:  # killed or lost (its node): the next upsert starts a new one
            with self._lock:
                if self._actor is actor:
                    self._actor = None
            raise
        finally:
            self._release()

    @property
    def alive(self) -> bool:
        return self._actor is not None

    def reap(self) -> bool:
        """End the actor if no upsert used it for `idle_s`; True if it ended it."""
        with self._lock:
            if self._actor is None or self._busy or time.monotonic() - self._last < self.idle_s:
                return False
            actor, self._actor = self._actor, None
        ray.kill(actor)
        return True
