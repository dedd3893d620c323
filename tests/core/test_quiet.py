"""Third-party noise is filtered by message and module; the same warning from our own code still shows."""

from __future__ import annotations

import warnings

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
