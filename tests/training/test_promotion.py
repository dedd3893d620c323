"""Promotion gate against a real MLflow registry (SQLite in tmp_path): checks, refusals, force, rollback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError, MissingStepError, PromotionRefused
from core.names import CHAMPION, COPY_MODEL, RANKER_MODEL, RETRIEVAL_MODEL
from core.settings import Settings, load_settings
from training.promotion import load_policy, metric_key, promote
from training.registry import register_artifacts, set_challenger
from training.tracking import client, setup_mlflow

POLICY = Path(__file__).resolve().parents[2] / "mlflow" / "promotion_policy.yaml"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow DB: the schema migrations take seconds, so they run once and are copied."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path) -> Settings:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.setenv("RECSYS_PROMOTION_POLICY", str(POLICY))
    return load_settings()


def register(settings: Settings, model: str, ndcg: float, parity: float = 1e-6, latency: float = 5.0,
             digest: str = "digest-a", **tags: str) -> str:
    """A registered version made the way training makes one: run metrics, pytorch flavour, tags, challenger."""
    import mlflow

    setup_mlflow(settings)
    checks = {"onnx_parity_max_abs_diff": parity, "onnx_latency_ms": latency}
    with mlflow.start_run():
        mlflow.log_metrics({metric_key("val_ndcg@10"): ndcg, metric_key("test_ndcg@10"): ndcg, **checks})
        info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", registered_model_name=model,
                                        input_example=np.zeros((1, 2), np.float32), pip_requirements=["torch"])
    version = str(info.registered_model_version)
    set_challenger(settings, model, version, {"data_digest": digest, **checks, **tags})
    return version


def champion(settings: Settings, model: str = RETRIEVAL_MODEL) -> str:
    return str(client(settings).get_model_version_by_alias(model, CHAMPION).version)


def tags(settings: Settings, version: str, model: str = RETRIEVAL_MODEL) -> dict[str, str]:
    return client(settings).get_model_version(model, version).tags


def test_policy_file_is_valid() -> None:
    policies = load_policy(POLICY)
    assert set(policies) == {RETRIEVAL_MODEL, RANKER_MODEL, COPY_MODEL}
    p = policies[RETRIEVAL_MODEL]
    assert (p.metric, p.direction, p.alias) == ("val_ndcg@10", "maximize", "champion")
    assert p.checks.onnx_max_abs_diff == 1e-4 and p.checks.same_data
    assert not (POLICY.parent / "__init__.py").exists()  # would shadow the mlflow library


def test_unknown_policy_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY.read_text().replace("min_gain:", "min_gian:", 1))
    with pytest.raises(ConfigError, match=r"policy\.yaml.*models\.recsys-retrieval\.min_gian"):
        load_policy(bad)
    bad.write_text(POLICY.read_text().replace("direction: maximize", "direction: up", 1))
    with pytest.raises(ConfigError, match="direction"):
        load_policy(bad)


def test_missing_challenger(settings: Settings) -> None:
    with pytest.raises(MissingStepError, match="recsys train"):
        promote(settings, RETRIEVAL_MODEL)


def test_first_promotion_then_rerun_is_unchanged(settings: Settings) -> None:
    v1 = register(settings, RETRIEVAL_MODEL, 0.10)
    d = promote(settings, RETRIEVAL_MODEL)
    assert (d.version, d.promoted, d.forced, d.action, d.previous_champion) == (v1, True, False, "promoted", None)
    assert champion(settings) == v1
    t = tags(settings, v1)
    assert t["promotion.decision"] == "promoted" and t["promotion.compared_to"] == "none"
    assert "val_ndcg@10" in t["promotion.metric"] and t["promotion.at"].endswith("+00:00")
    assert promote(settings, RETRIEVAL_MODEL).action == "unchanged"
    assert tags(settings, v1)["promotion.decision"] == "promoted"


def test_worse_refused_then_better_promoted(settings: Settings) -> None:
    v1 = register(settings, RETRIEVAL_MODEL, 0.10)
    promote(settings, RETRIEVAL_MODEL)
    v2 = register(settings, RETRIEVAL_MODEL, 0.08)
    with pytest.raises(PromotionRefused, match=rf"recsys-retrieval v{v2} not promoted: val_ndcg@10 0.0800 < "
                                               rf"champion v{v1} 0.1000 \+ min_gain 0.0000"):
        promote(settings, RETRIEVAL_MODEL)
    assert champion(settings) == v1
    t = tags(settings, v2)
    assert t["promotion.decision"] == "refused" and t["promotion.compared_to"] == v1
    assert "val_ndcg@10" in t["promotion.reasons"]

    v3 = register(settings, RETRIEVAL_MODEL, 0.12)
    d = promote(settings, RETRIEVAL_MODEL)
    assert (d.version, d.previous_champion, d.value, d.champion_value) == (v3, v1, 0.12, 0.10)
    assert champion(settings) == v3


def test_failed_onnx_parity_refuses_a_better_model(settings: Settings) -> None:
    v1 = register(settings, RETRIEVAL_MODEL, 0.10)
    promote(settings, RETRIEVAL_MODEL)
    v2 = register(settings, RETRIEVAL_MODEL, 0.20, parity=3e-3)
    with pytest.raises(PromotionRefused, match="ONNX parity"):
        promote(settings, RETRIEVAL_MODEL)
    assert champion(settings) == v1
    assert "ONNX parity" in tags(settings, v2)["promotion.reasons"]


def test_a_challenger_of_other_data_than_the_current_is_refused_unless_forced(settings: Settings) -> None:
    """Newer data is compared by re-evaluating the champion on it (tests/integration/test_retrain_gate.py); a
    challenger trained on data that is not the current data cannot be compared at all."""
    register(settings, RETRIEVAL_MODEL, 0.10, digest="digest-a")
    promote(settings, RETRIEVAL_MODEL)
    v2 = register(settings, RETRIEVAL_MODEL, 0.20, digest="digest-b")
    with pytest.raises(PromotionRefused, match="trained on data digest-b but the data is now None: retrain"):
        promote(settings, RETRIEVAL_MODEL)
    d = promote(settings, RETRIEVAL_MODEL, force=True)
    assert (d.promoted, d.forced, d.action) == (True, True, "forced")
    assert champion(settings) == v2
    t = tags(settings, v2)
    assert t["promotion.decision"] == "forced" and "data digest" in t["promotion.reasons"]


def test_rollback(settings: Settings) -> None:
    v1 = register(settings, RETRIEVAL_MODEL, 0.10)
    promote(settings, RETRIEVAL_MODEL)
    v2 = register(settings, RETRIEVAL_MODEL, 0.12)
    promote(settings, RETRIEVAL_MODEL)
    d = promote(settings, RETRIEVAL_MODEL, to_version=v1)
    assert (d.version, d.previous_champion, d.action) == (v1, v2, "rollback")
    assert champion(settings) == v1
    t = tags(settings, v1)
    assert t["promotion.decision"] == "rollback" and t["promotion.compared_to"] == v2

    with pytest.raises(ConfigError, match=r"recsys-retrieval has no version '9'.*registered: 1, 2"):
        promote(settings, RETRIEVAL_MODEL, to_version="9")
    with pytest.raises(MissingStepError, match="no versions of recsys-ranker"):
        promote(settings, RANKER_MODEL, to_version="1")


def test_ranker_needs_its_retrieval_model_as_champion(settings: Settings) -> None:
    register(settings, RETRIEVAL_MODEL, 0.10)
    promote(settings, RETRIEVAL_MODEL)
    r2 = register(settings, RETRIEVAL_MODEL, 0.12)  # trained, not yet promoted
    k1 = register(settings, RANKER_MODEL, 0.15, retrieval_version=r2)
    with pytest.raises(PromotionRefused, match=rf"ranker v{k1} was trained on retrieval v{r2} but champion "
                                               r"retrieval is v1: promote retrieval first or retrain"):
        promote(settings, RANKER_MODEL)
    promote(settings, RETRIEVAL_MODEL)
    assert promote(settings, RANKER_MODEL).promoted
    assert champion(settings, RANKER_MODEL) == k1


def register_copy(settings: Settings, perplexity: float, factuality: float, base_factuality: float,
                  tmp_path: Path) -> str:
    """A copy-LM version made the way `train copy` makes one: an artifact folder registered, challenger."""
    import mlflow

    setup_mlflow(settings)
    (tmp_path / "copy").mkdir(exist_ok=True)
    (tmp_path / "copy" / "adapter.safetensors").write_bytes(b"x")
    with mlflow.start_run() as run:
        mlflow.log_metrics({"val_perplexity": perplexity, "val_factuality": factuality,
                            "base_val_factuality": base_factuality})
        mlflow.log_artifacts(str(tmp_path / "copy"), artifact_path="copy")
    version = register_artifacts(settings, COPY_MODEL, run.info.run_id, "copy")
    set_challenger(settings, COPY_MODEL, version, {"data_digest": "digest-a"})
    return version


def test_copy_model_needs_factuality_floor_and_to_beat_its_base(settings: Settings, tmp_path: Path) -> None:
    mv = client(settings).get_model_version(COPY_MODEL, register_copy(settings, 3.0, 0.95, 0.40, tmp_path))
    assert mv.source.endswith("/copy") and mv.run_id
    with pytest.raises(PromotionRefused, match=r"val_factuality 0\.9500 < floor 0\.9900"):
        promote(settings, COPY_MODEL)
    v = register_copy(settings, 3.0, 1.0, 1.0, tmp_path)  # perfectly factual, but no better than its base
    with pytest.raises(PromotionRefused, match=r"val_factuality 1\.0000 <= base_val_factuality 1\.0000"):
        promote(settings, COPY_MODEL)
    v = register_copy(settings, 3.0, 0.995, 0.30, tmp_path)
    assert promote(settings, COPY_MODEL).promoted and champion(settings, COPY_MODEL) == v
    register_copy(settings, 3.2, 1.0, 0.30, tmp_path)  # more factual, but perplexity regressed
    with pytest.raises(PromotionRefused, match=r"val_perplexity 3\.2000 > champion"):
        promote(settings, COPY_MODEL)


def test_a_first_promotion_is_held_to_the_policy_floor(settings: Settings) -> None:
    v1 = register(settings, RETRIEVAL_MODEL, 0.005)  # no champion to compare with: only the absolute floor
    with pytest.raises(PromotionRefused, match=r"val_ndcg@10 0.0050 < floor 0.0100"):
        promote(settings, RETRIEVAL_MODEL)
    assert tags(settings, v1)["promotion.decision"] == "refused"
    v2 = register(settings, RETRIEVAL_MODEL, 0.05)
    assert promote(settings, RETRIEVAL_MODEL).action == "promoted" and champion(settings) == v2


def test_a_champion_with_other_attention_heads_starts_the_retrain_cold_and_the_run_says_why(settings) -> None:
    """`champion_state` against a real registry: a 2-head retrieval champion warm-starts a 2-head retrain, but not
    a 4-head one (its weights fit by shape and compute another function): no weights, and the run's reason."""
    from dataclasses import replace

    import mlflow
    from training.models.retrieval import RetrievalConfig, SASRec, UserEncoder
    from training.registry import log_pytorch
    from training.steps import champion_state

    setup_mlflow(settings)
    cfg = RetrievalConfig(n_items=20, max_len=6, d_model=16, n_heads=2, n_layers=1, dropout=0.0, content_dim=0)
    with mlflow.start_run():
        version = log_pytorch(UserEncoder(SASRec(cfg)), (torch.zeros(1, 6, dtype=torch.long),), ["history"],
                              RETRIEVAL_MODEL)
    client(settings).set_registered_model_alias(RETRIEVAL_MODEL, CHAMPION, version)
    with mlflow.start_run() as run:
        assert champion_state(settings, RETRIEVAL_MODEL, None, replace(cfg, n_heads=4), ("n_heads",)) == (None, "")
    assert client(settings).get_run(run.info.run_id).data.params["warm_start_refused"] == "n_heads 2 → 4"
    with mlflow.start_run() as run:
        state, got = champion_state(settings, RETRIEVAL_MODEL, None, replace(cfg, lr=1.0), ("n_heads",))
    assert got == version and state is not None and "warm_start_refused" not in client(settings).get_run(
        run.info.run_id).data.params
