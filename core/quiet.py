"""Third-party warnings that say nothing a user of this platform can act on, filtered in one place.

Each is a library talking about its own internals (each checked against its source; none is about our calls):
Ray Serve's config models use pydantic-1 `Field` extras (ray/serve/_private/config.py), MLflow's SQL store uses
SQLAlchemy's deprecated `noload` loader option, Ray Data announces its own API changes, torch's TorchScript
ONNX exporter announces its own retirement, PEFT reads a property transformers deprecated (peft/peft_model.py).
Filtered by message and module, so the same warning from our code still shows. Ours with a cause we own are fixed
at the cause instead (e.g. the logged models' pip requirement pins torch without its local build label,
`training.registry`; the attention scale is a Python float, so tracing it for ONNX converts nothing,
`training.models.layers`). One is ours by choice and said so: the serving graphs are
exported with the TorchScript exporter (`dynamo=False`, `training.onnx_export`), which torch calls legacy.

Feast's modules call `warnings.simplefilter("once", DeprecationWarning)` when imported (feast/feature_store.py),
which goes in front of every filter installed before it; so the same rules are also applied where a warning is
shown (`warnings.showwarning`), whatever a library puts in front of them later.
Installed by the CLI and by every process that runs our code under Ray (job loops, Serve replicas). Without a
terminal (a log, CI), progress bars (tqdm: Hugging Face loading, MLflow downloads) are off: each redraw became a
line there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

# (message regex, module regex): matched as `warnings.filterwarnings` does (from the start of each).
QUIET = (
    (r"Using extra keyword arguments on `Field` is deprecated", r"ray\..*"),  # pydantic, in Ray Serve's models
    (r".*noload", r"(mlflow|sqlalchemy)\..*"),  # SQLAlchemy's deprecated loader option, used by MLflow's store
    (r"", r"ray\.data(\..*)?"),  # Ray Data's notices about its own API
    (r"The feature will be removed", r"torch\.onnx\..*"),  # the TorchScript exporter, about its own internals
    (r"`is_gradient_checkpointing` is deprecated", r"transformers\..*"),  # PEFT reads transformers' old alias
    (r"You are using the legacy TorchScript-based ONNX export", r"training\.onnx_export"),  # chosen (see above)
)
# (logger, message regex): library log records about a choice made and documented here. MLflow's pytorch flavour
# warns on every pickled model; the registry logs modules (not torch.export programs) on purpose (training.registry).
QUIET_LOGS = (("mlflow.pytorch", r"Saving pytorch model by Pickle"),)


def _module(filename: str) -> str:
    """The dotted module name of a source file (site-packages or this repository), as `warnings` would name it."""
    path = Path(filename)
    parts = path.with_suffix("").parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return ".".join(parts[parts.index(anchor) + 1 :])
    root = Path(__file__).resolve().parents[1].parts
    if parts[: len(root)] == root:
        return ".".join(parts[len(root) :])
    return path.stem


def quieted(message: str, filename: str) -> bool:
    """Whether a warning with this text, raised from this file, is one of `QUIET`."""
    module = _module(filename)
    return any(re.match(m, message, re.IGNORECASE) and re.match(mod + r"\Z", module) for m, mod in QUIET)


class _LogFilter(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_third_party() -> None:
    for message, module in QUIET:
        warnings.filterwarnings("ignore", message=message, module=module)
    shown = warnings.showwarning
    if not getattr(shown, "recsys_quiet", False):

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if not quieted(str(message), filename):
                shown(message, category, filename, lineno, file, line)

        showwarning.recsys_quiet = True  # type: ignore[attr-defined]
        warnings.showwarning = showwarning
    for name, pattern in QUIET_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LogFilter) for f in logger.filters):
            logger.addFilter(_LogFilter(pattern))
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm (>= 4.66) when it is imported
