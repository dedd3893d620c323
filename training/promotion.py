"""Promotion gate: move the `champion` alias only when the policy's checks pass, and record why on the version.

The policy is data (`mlflow/promotion_policy.yaml`); `promote()` is the one function the CLI and the in-cluster
job call, so a refusal reads the same everywhere and the decision is always auditable from the registry's tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, MissingStepError, PromotionRefused
from core.names import CHALLENGER, CHAMPION, RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings
from training.registry import version_by_alias
from training.tracking import client

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DIRECTIONS = ("maximize", "minimize")
# A ranker re-ranks one retrieval model's candidates: it is only valid beside that model as champion.
UPSTREAM = {RANKER_MODEL: (RETRIEVAL_MODEL, "retrieval_version")}
TAG = "promotion."

_TOP_KEYS = ("alias", "models")
_MODEL_KEYS = ("metric", "direction", "min_gain", "tolerance", "checks")
_CHECK_KEYS = {"onnx_parity": ("max_abs_diff",), "latency_budget": ("max_ms",), "same_data": (),
               "metric_floor": (), "beats_baseline": ()}


@dataclass(frozen=True)
class Checks:
    """Gates besides the metric; None switches a numeric check off."""

    onnx_max_abs_diff: float | None = None
    latency_max_ms: float | None = None
    same_data: bool = False
    floors: tuple[tuple[str, float], ...] = ()  # (metric, minimum) the challenger's run must reach
    beats: tuple[tuple[str, str], ...] = ()  # (metric, baseline metric of the same run) it must exceed


@dataclass(frozen=True)
class ModelPolicy:
    model: str
    metric: str
    direction: str = "maximize"
    min_gain: float = 0.0
    tolerance: float = 0.0
    checks: Checks = Checks()
    alias: str = CHAMPION

    def threshold(self, champion: float) -> float:
        """The value the challenger must reach: champion ± min_gain, relaxed by tolerance."""
        sign = 1.0 if self.direction == "maximize" else -1.0
        return champion + sign * (self.min_gain - self.tolerance)

    def passes(self, value: float, champion: float) -> bool:
        t = self.threshold(champion)
        return value >= t if self.direction == "maximize" else value <= t


@dataclass(frozen=True)
class Decision:
    """What `promote` did; `reasons` are the failed checks when refused/forced, else what passed."""

    model: str
    version: str
    previous_champion: str | None
    promoted: bool  # the alias now points at `version` because of this call
    forced: bool
    action: str  # promoted | refused | forced | rollback | unchanged
    reasons: list[str]
    metric: str
    value: float | None
    champion_value: float | None  # the champion's on the challenger's validation split when `split` is set
    split: str | None = None  # data digest of the split the champion was re-evaluated on (a retrain)

    def line(self) -> str:
        """One line for the CLI and job logs."""
        was = f"v{self.previous_champion}" if self.previous_champion else "none"
        return f"{self.model} v{self.version} {self.action} (champion was {was}): {'; '.join(self.reasons)}"


# ---------------------------------------------------------------- policy file


def _fail(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"promotion policy {path}: {msg}")


def _mapping(value: Any, where: str, allowed: tuple[str, ...], path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"{where} must be a mapping (keys: {', '.join(allowed)})")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _fail(path, f"unknown key {where}.{unknown[0]} (known: {', '.join(allowed)})")
    return value


def _number(value: Any, where: str, path: Path, positive: bool = False) -> float:
    # Strings too: YAML 1.1 reads `1e-4` (no dot) as a string.
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise _fail(path, f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        raise _fail(path, f"{where} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return out


def _checks(raw: Any, where: str, path: Path) -> Checks:
    raw = _mapping(raw or {}, where, tuple(_CHECK_KEYS), path)
    parity = latency = None
    if raw.get("onnx_parity") is not None:
        block = _mapping(raw["onnx_parity"], f"{where}.onnx_parity", _CHECK_KEYS["onnx_parity"], path)
        parity = _number(block.get("max_abs_diff"), f"{where}.onnx_parity.max_abs_diff", path, positive=True)
    if raw.get("latency_budget") is not None:
        block = _mapping(raw["latency_budget"], f"{where}.latency_budget", _CHECK_KEYS["latency_budget"], path)
        latency = _number(block.get("max_ms"), f"{where}.latency_budget.max_ms", path, positive=True)
    same_data = raw.get("same_data", False)
    if not isinstance(same_data, bool):
        raise _fail(path, f"{where}.same_data must be true or false, got {same_data!r}")
    floors = raw.get("metric_floor") or {}
    if not isinstance(floors, dict):
        raise _fail(path, f"{where}.metric_floor must map metric names to minimum values")
    beats = raw.get("beats_baseline") or {}
    if not isinstance(beats, dict) or not all(isinstance(v, str) and v for v in beats.values()):
        raise _fail(path, f"{where}.beats_baseline must map metric names to baseline metric names")
    return Checks(parity, latency, same_data,
                  tuple((str(k), _number(v, f"{where}.metric_floor.{k}", path)) for k, v in floors.items()),
                  tuple((str(k), str(v)) for k, v in beats.items()))


def load_policy(path: Path) -> dict[str, ModelPolicy]:
    """Parse and validate the policy file; any unknown key or bad value is a ConfigError naming it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"promotion policy not found: {path}") from None
    except yaml.YAMLError as e:
        raise _fail(path, f"not valid YAML: {' '.join(str(e).split())}") from None
    data = _mapping(data, "(top level)", _TOP_KEYS, path)
    alias = data.get("alias", CHAMPION)
    if not isinstance(alias, str) or not alias or alias == CHALLENGER:
        raise _fail(path, f"alias must be a name other than {CHALLENGER!r}, got {alias!r}")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise _fail(path, "models must map each model name to its policy")
    out: dict[str, ModelPolicy] = {}
    for name, raw in models.items():
        where = f"models.{name}"
        raw = _mapping(raw, where, _MODEL_KEYS, path)
        metric = raw.get("metric")
        if not isinstance(metric, str) or not metric:
            raise _fail(path, f"{where}.metric is required (e.g. val_ndcg@10)")
        direction = raw.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise _fail(path, f"{where}.direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        out[str(name)] = ModelPolicy(
            model=str(name), metric=metric, direction=direction,
            min_gain=_number(raw.get("min_gain", 0.0), f"{where}.min_gain", path),
            tolerance=_number(raw.get("tolerance", 0.0), f"{where}.tolerance", path),
            checks=_checks(raw.get("checks"), f"{where}.checks", path), alias=alias,
        )
    return out


def policy_for(settings: Settings, model_name: str) -> ModelPolicy:
    path = settings.promotion_policy
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path  # the in-cluster job may not run from the repository root
    policies = load_policy(path)
    if model_name not in policies:
        raise _fail(path, f"no policy for model {model_name!r} (have: {', '.join(policies)})")
    return policies[model_name]


# ---------------------------------------------------------------- registry reads


def metric_key(name: str) -> str:
    """MLflow rejects '@' in metric names: `val_ndcg@10` is stored as `val_ndcg_at_10`."""
    return name.replace("@", "_at_")


def _short(model: str) -> str:
    return model.removeprefix("recsys-")


def _by_alias(c: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _metric(c: Any, mv: Any, metric: str) -> float | None:
    """The policy metric from the version's training run (under its own or its MLflow-safe name)."""
    metrics = c.get_run(mv.run_id).data.metrics if mv.run_id else {}
    return _float(metrics.get(metric, metrics.get(metric_key(metric))))


def _check_value(c: Any, mv: Any, key: str) -> float | None:
    """A check result: the version tag training set, else the run metric of the same name."""
    if key in mv.tags:
        return _float(mv.tags[key])
    return _float(c.get_run(mv.run_id).data.metrics.get(key)) if mv.run_id else None


# ---------------------------------------------------------------- gates

Result = tuple[bool, str]


def _compare(p: ModelPolicy, value: float | None, champion: Any, champ_value: float | None) -> Result:
    if value is None:
        return False, f"the challenger's run has no {p.metric} metric"
    if champion is None:
        return True, f"{p.metric} {value:.4f} (first {p.alias}: no metric comparison)"
    if champ_value is None:
        return False, f"champion v{champion.version}'s run has no {p.metric} metric: nothing to compare with"
    ok = p.passes(value, champ_value)
    if p.direction == "maximize":
        op, sign = (">=" if ok else "<"), "+"
    else:
        op, sign = ("<=" if ok else ">"), "-"
    slack = f" {'+' if sign == '-' else '-'} tolerance {p.tolerance:.4f}" if p.tolerance else ""
    return ok, (f"{p.metric} {value:.4f} {op} champion v{champion.version} {champ_value:.4f} "
                f"{sign} min_gain {p.min_gain:.4f}{slack}")


def _checks_results(c: Any, p: ModelPolicy, mv: Any, champion: Any) -> list[Result]:
    out: list[Result] = []
    if p.checks.onnx_max_abs_diff is not None:
        diff, limit = _check_value(c, mv, "onnx_parity_max_abs_diff"), p.checks.onnx_max_abs_diff
        if diff is None:
            out.append((False, "no onnx_parity_max_abs_diff recorded: ONNX parity unknown"))
        else:
            out.append((diff <= limit, f"ONNX parity max|diff| {diff:.1e} {'<=' if diff <= limit else '>'} "
                                       f"{limit:.1e}"))
    if p.checks.latency_max_ms is not None:
        ms, limit = _check_value(c, mv, "onnx_latency_ms"), p.checks.latency_max_ms
        if ms is None:
            out.append((False, "no onnx_latency_ms recorded: latency unknown"))
        else:
            out.append((ms <= limit, f"ONNX latency {ms:.1f} ms {'<=' if ms <= limit else '>'} budget {limit:.1f} ms"))
    for metric, floor in p.checks.floors:
        v = _metric(c, mv, metric)
        out.append((False, f"the challenger's run has no {metric} metric") if v is None else
                   (v >= floor, f"{metric} {v:.4f} {'>=' if v >= floor else '<'} floor {floor:.4f}"))
    for metric, baseline in p.checks.beats:
        v, b = _metric(c, mv, metric), _metric(c, mv, baseline)
        if v is None or b is None:
            out.append((False, f"the challenger's run lacks {metric if v is None else baseline}"))
        else:
            out.append((v > b, f"{metric} {v:.4f} {'>' if v > b else '<='} {baseline} {b:.4f}"))
    return out


def _same_data(settings: Settings, c: Any, p: ModelPolicy, mv: Any, champion: Any,
               champ_value: float | None) -> tuple[list[Result], float | None, str | None]:
    """Like with like: on the champion's data, the logged metrics compare; on newer data (a retrain), the
    champion is re-evaluated on the challenger's validation split and that number is compared. Returns the
    check results, the champion value to compare with, and the split digest when a re-evaluation was made."""
    if not p.checks.same_data or champion is None:
        return [], champ_value, None
    mine, theirs = mv.tags.get("data_digest"), champion.tags.get("data_digest")
    if not mine:
        return [(False, f"no data_digest tag: cannot tell it saw champion v{champion.version}'s data")], None, None
    if mine == theirs:
        return [(True, f"same data digest {mine[:12]} as champion v{champion.version}")], champ_value, None
    from training.reevaluate import champion_on_current_data

    current = _current_digest(settings)
    if current != mine:
        return [(False, f"the challenger was trained on data {mine[:12]} but the data is now {str(current)[:12]}: "
                        f"retrain it")], None, None
    re = champion_on_current_data(settings, p.model, str(champion.version), p.metric,
                                  champion.tags.get("retrieval_version"))
    if isinstance(re, str):
        return [(False, f"data digest {mine[:12]} differs from champion v{champion.version}'s {str(theirs)[:12]} "
                        f"and {re}")], None, None
    was = f"{champ_value:.4f}" if champ_value is not None else "none"
    return [(True, f"champion v{champion.version} re-evaluated on the challenger's validation split (data "
                   f"{mine[:12]}): {p.metric} {re.value:.4f} (on its own data {was})")], re.value, re.digest


def _current_digest(settings: Settings) -> str | None:
    import json

    from training.data.schema import MANIFEST

    path = settings.data_dir / MANIFEST
    return json.loads(path.read_text()).get("interactions_sha256") if path.exists() else None


def _upstream_result(c: Any, p: ModelPolicy, mv: Any) -> Result | None:
    if p.model not in UPSTREAM:
        return None
    upstream, tag = UPSTREAM[p.model]
    champ = _by_alias(c, upstream, p.alias)
    if champ is None:
        return None
    mine, me, up = mv.tags.get(tag), _short(p.model), _short(upstream)
    if mine is None:
        return False, f"{me} v{mv.version} has no {tag} tag: cannot tell which {up} model it was trained on"
    if str(mine) != str(champ.version):
        return False, (f"{me} v{mv.version} was trained on {up} v{mine} but {p.alias} {up} is v{champ.version}: "
                       f"promote {up} first or retrain")
    return True, f"trained on {p.alias} {up} v{champ.version}"


# ---------------------------------------------------------------- promotion


def _record(c: Any, d: Decision) -> None:
    """The decision as tags on the version, so the registry alone explains every alias move."""
    metric = f"{d.metric} {d.value:.6g}" if d.value is not None else f"{d.metric} missing"
    if d.champion_value is not None:
        metric += f" (champion v{d.previous_champion} {d.champion_value:.6g})"
    tags = {"decision": d.action, "reasons": "; ".join(d.reasons), "compared_to": d.previous_champion or "none",
            "metric": metric, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if d.split:
        tags["split_digest"] = d.split
    for k, v in tags.items():
        c.set_model_version_tag(d.model, d.version, TAG + k, v)


def _version(c: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version(name, version)
    except MlflowException:
        pass
    have = sorted((str(mv.version) for mv in c.search_model_versions(f"name = '{name}'")), key=int)
    if not have:
        raise MissingStepError(f"no versions of {name} registered: run `recsys train` first")
    raise ConfigError(f"{name} has no version {version!r} to roll back to (registered: {', '.join(have)})")


def _rollback(c: Any, p: ModelPolicy, version: str) -> Decision:
    mv = _version(c, p.model, version.removeprefix("v"))
    previous = _by_alias(c, p.model, p.alias)
    prev = str(previous.version) if previous is not None else None
    c.set_registered_model_alias(p.model, p.alias, mv.version)
    reason = f"rolled back {p.alias} from v{prev} to v{mv.version}" if prev else f"set {p.alias} to v{mv.version}"
    d = Decision(p.model, str(mv.version), prev, True, False, "rollback", [reason], p.metric,
                 _metric(c, mv, p.metric), _metric(c, previous, p.metric) if previous is not None else None)
    _record(c, d)
    return d


def promote(settings: Settings, model_name: str, force: bool = False, to_version: str | None = None) -> Decision:
    """Promote `model_name@challenger` to champion if it passes the policy (or `force`); `to_version` rolls back.

    Refusals are recorded on the challenger before PromotionRefused is raised, so a refused run is auditable.
    """
    p = policy_for(settings, model_name)
    c = client(settings)
    if to_version is not None:
        return _rollback(c, p, str(to_version))
    mv = version_by_alias(settings, model_name, CHALLENGER)
    champion = _by_alias(c, model_name, p.alias)
    prev = str(champion.version) if champion is not None else None
    value = _metric(c, mv, p.metric)
    champ_value = _metric(c, champion, p.metric) if champion is not None else None
    if prev == str(mv.version):  # re-running the job after a promotion must not flip its record to refused
        return Decision(model_name, prev, prev, False, False, "unchanged", [f"v{prev} is already {p.alias}"],
                        p.metric, value, champ_value)

    data_results, champ_value, split = _same_data(settings, c, p, mv, champion, champ_value)
    if champion is not None and champ_value is None and data_results and not data_results[0][0]:
        results = [*data_results, *_checks_results(c, p, mv, champion)]  # nothing comparable: say why
    else:
        results = [_compare(p, value, champion, champ_value), *data_results, *_checks_results(c, p, mv, champion)]
    upstream = _upstream_result(c, p, mv)
    if upstream is not None:
        results.append(upstream)
    failed = [reason for ok, reason in results if not ok]
    if not failed:
        action, reasons = "promoted", [reason for _, reason in results]
    else:
        action, reasons = ("forced" if force else "refused"), failed
    d = Decision(model_name, str(mv.version), prev, action != "refused", action == "forced", action, reasons,
                 p.metric, value, champ_value, split)
    if d.promoted:
        c.set_registered_model_alias(model_name, p.alias, mv.version)
    _record(c, d)
    if not d.promoted:
        raise PromotionRefused(f"{model_name} v{mv.version} not promoted: {'; '.join(failed)}")
    return d
