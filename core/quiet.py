"""Third-party warnings that say nothing a user of this platform can act on, filtered in one place.

Each is a library talking about its own internals (each checked against its source; none is about our calls):
Ray Serve's config models use pydantic-1 `Field` extras (ray/serve/_private/config.py), MLflow's SQL store uses
SQLAlchemy's deprecated `noload` loader option, Ray Data announces its own API changes. Filtered by message and
module, so the same warning from our code still shows. Ours with a cause we own are fixed at the cause instead
(e.g. the logged models' pip requirement pins torch without its local build label, `training.registry`).
Installed by the CLI and by every process that runs our code under Ray (job loops, Serve replicas).
"""

from __future__ import annotations

import warnings

# (message regex, module regex): matched as `warnings.filterwarnings` does (message from its start).
QUIET = (
    (r"Using extra keyword arguments on `Field` is deprecated", r"ray\..*"),  # pydantic, in Ray Serve's models
    (r".*noload", r"(mlflow|sqlalchemy)\..*"),  # SQLAlchemy's deprecated loader option, used by MLflow's store
    (r"", r"ray\.data(\..*)?"),  # Ray Data's notices about its own API
)


def quiet_third_party() -> None:
    for message, module in QUIET:
        warnings.filterwarnings("ignore", message=message, module=module)
