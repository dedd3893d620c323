"""A line per training epoch on the driver's console while `trainer.fit()` blocks: the metric and an ETA.

The workers' own output is not forwarded (`log_to_driver=False`: Ray's worker logs drown the CLI), and a log
without a TTY showed nothing for minutes. Rank 0 already writes every epoch's metrics to the run in MLflow; a
thread here reads the run's latest values and prints one plain line when the epoch moves on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

SHOWN = (("epoch_val_ndcg_at_10", "val NDCG@10"), ("train_loss", "loss"))


class EpochLines:
    def __init__(self, job: str, spec: dict[str, str] | None, total: int, say: Callable[[str], None] = print,
                 every_s: float = 2.0) -> None:
        self.job, self.spec, self.total, self.say, self.every_s = job, spec, total, say, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown = 0

    def __enter__(self) -> EpochLines:
        if self.spec:
            self._thread = threading.Thread(target=self._run, name=f"{self.job}-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._poll()  # the last epoch, if it ended between two polls

    def _poll(self) -> None:
        from mlflow import MlflowClient

        with contextlib.suppress(Exception):  # a progress line is never worth failing or slowing training for
            self.show(MlflowClient(tracking_uri=self.spec["uri"]).get_run(self.spec["run_id"]).data.metrics)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._poll()

    def show(self, m: dict[str, float]) -> None:
        """Print a line if the run reports an epoch not shown yet."""
        epoch = int(m.get("epoch", 0))
        if epoch <= self.shown:
            return
        self.shown = epoch
        parts = [f"{label} {m[key]:.4f}" for key, label in SHOWN if key in m]
        per = m.get("epoch_seconds")
        if per:
            left = max(0, self.total - epoch) * per
            parts.append(f"{per:.1f} s/epoch, ETA ≤ {left / 60:.1f} min" if left else f"{per:.1f} s/epoch")
        self.say(f"{self.job} epoch {epoch}/{self.total}: {', '.join(parts)}")
