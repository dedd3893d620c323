"""Third-party noise is filtered by message and module; the same warning from our own code still shows."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

from core.quiet import quiet_third_party


def _shown(message: str, module: str, category: type[Warning] = DeprecationWarning) -> bool:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)
    return bool(seen)


def test_library_notices_are_quiet_and_ours_are_not() -> None:
    field = "Using extra keyword arguments on `Field` is deprecated and will be removed."
    assert not _shown(field, "ray.serve._private.config")
    assert _shown(field, "serving.contracts")  # ours would still show
    assert not _shown("The noload() option is deprecated", "mlflow.store.tracking.sqlalchemy_store")
    assert not _shown("map_batches(fn_constructor_args) is deprecated", "ray.data.dataset")
    assert _shown("something else", "ray.train.torch")


def test_logged_models_pin_torch_without_its_local_build_label() -> None:
    from packaging.requirements import Requirement

    from training.registry import torch_requirement

    req = Requirement(torch_requirement("2.13.0+cu130"))
    assert str(req) == "torch==2.13.0"
    assert req.specifier.contains("2.13.0+cpu") and req.specifier.contains("2.13.0+cu130")  # any build of it
    assert not req.specifier.contains("2.12.1")


def _run(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter with stderr to a pipe (no terminal), as in a log or CI."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def test_library_notices_stay_quiet_after_feast_puts_its_own_filter_in_front() -> None:
    """Importing Feast inserts `simplefilter("once", DeprecationWarning)` ahead of ours: the demo's log then showed
    Ray Data's notices again. Ours from the same kind of call still shows."""
    res = _run(
        "from core.quiet import quiet_third_party\n"
        "quiet_third_party()\n"
        "import feast.feature_store, warnings\n"
        "assert warnings.filters[0][:3:2] == ('once', DeprecationWarning), warnings.filters[0]\n"
        "import ray.data\n"
        "ray.data.DataContext()\n"
        "warnings.warn('ours is shown', DeprecationWarning)\n"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ours is shown" in res.stderr
    assert "deprecated" not in res.stderr, res.stderr


def test_progress_bars_and_known_log_notices_are_off_without_a_terminal() -> None:
    res = _run(
        "from core.quiet import quiet_third_party\n"
        "quiet_third_party()\n"
        "import logging\n"
        "logging.basicConfig()\n"
        "from tqdm.auto import tqdm\n"
        "list(tqdm(range(3), desc='a bar'))\n"
        "logging.getLogger('mlflow.pytorch').warning('Saving pytorch model by Pickle or CloudPickle format')\n"
        "logging.getLogger('mlflow.pytorch').warning('something else')\n"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "a bar" not in res.stderr and "Pickle" not in res.stderr
    assert "something else" in res.stderr
