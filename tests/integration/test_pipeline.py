"""The offline pipeline on the real local stack (Feast SQLite, Ray Train on local Ray, MLflow SQLite)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import RECSYS, cli_env, run_cli

pytestmark = pytest.mark.slow  # the whole CLI pipeline, Ray Train runs (~4 min)


def _client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _metrics(home: Path, model: str, alias: str) -> dict[str, float]:
    c = _client(home)
    return c.get_run(c.get_model_version_by_alias(model, alias).run_id).data.metrics


def _history(home: Path, model: str, alias: str, key: str) -> list:
    """Per-epoch values of `key` (MLflow Metric objects with .step/.value) of the aliased version's run."""
    c = _client(home)
    return c.get_metric_history(c.get_model_version_by_alias(model, alias).run_id, key)


def _committed_epoch(home: Path) -> int:
    """Epochs covered by the latest checkpoint Ray's checkpoint manager has persisted (0 if none)."""
    best = 0
    for snap in (home / "ray_results").glob("retrieval-*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text())["latest_checkpoint_result"]
        except (ValueError, KeyError):  # being rewritten right now
            continue
        if latest:
            best = max(best, int(latest["metrics"]["epoch"]))
    return best


def _settled_epoch(home: Path, quiet_s: float = 3.0, limit_s: float = 30.0) -> int:
    """The committed epoch once Ray's processes (outside the killed process group) have stopped writing."""
    deadline, last, since = time.time() + limit_s, None, time.time()
    while time.time() < deadline:
        snaps = (home / "ray_results").glob("retrieval-*/checkpoint_manager_snapshot.json")
        now = [(p, p.stat().st_mtime_ns) for p in snaps]
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet_s:
            break
        time.sleep(0.2)
    return _committed_epoch(home)


def test_killed_training_resumes_from_its_latest_checkpoint(feature_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    # Ray's worker processes outlive the killed driver by ~3 s and commit the epochs they finish meanwhile (here
    # 2 epochs after the kill; on CI all 6 of a 6-epoch run, so the resume had none to train): a cap far past that,
    # and no early stop, so the resumed run trains to the same cap an uninterrupted one reaches.
    epochs, patience = "16", {"RECSYS_RETRIEVAL_PATIENCE": "0"}
    proc = subprocess.Popen([RECSYS, "train", "retrieval", "--epochs", epochs], env=cli_env(home, **patience),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        # Kill only once Ray has *committed* the second epoch's checkpoint: folders appear before the
        # controller registers them (CI once resumed from epoch 1 after three folders existed).
        while time.time() < deadline:
            if _committed_epoch(home) >= 2:
                break
            assert proc.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("no committed checkpoint within 240 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = _settled_epoch(home)
    assert committed < int(epochs), "the killed run's workers finished every epoch before Ray stopped them"
    pointer = json.loads((home / "ray_results" / "retrieval.current.json").read_text())
    assert pointer["name"].startswith("retrieval-")
    res = run_cli(home, "train", "retrieval", "--resume", "--epochs", epochs, **patience)
    assert res.returncode == 0, res.stderr[-3000:]
    m = _metrics(home, "recsys-retrieval", "challenger")
    assert m["epochs_completed"] == int(epochs)  # same final epoch count as an uninterrupted run
    assert m["start_epoch"] == committed >= 2  # continued from the last committed checkpoint
    assert not (home / "ray_results" / "retrieval.current.json").exists()


def test_retrieval_training_length_is_decided_by_validation(feature_home, tmp_path):
    """Two workers (a member each), patience 2, plateau 1: every epoch without a better validation NDCG@10 halves the
    learning rate on both ranks, and two in a row end the run (unless the cap of 30 comes first)."""
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    res = run_cli(home, "train", "retrieval", "--epochs", "30", RECSYS_RETRIEVAL_PATIENCE="2",
                  RECSYS_RETRIEVAL_PLATEAU="1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "retrieval epoch " in res.stdout and "val NDCG@10" in res.stdout  # a line per epoch, no TTY needed
    m = _metrics(home, "recsys-retrieval", "challenger")
    ndcg = [x.value for x in _history(home, "recsys-retrieval", "challenger", "epoch_val_ndcg_at_10")]
    lrs = [x.value for x in _history(home, "recsys-retrieval", "challenger", "lr")]
    done = int(m["epochs_completed"])
    assert len(ndcg) == len(lrs) == done
    from training.models.retrieval import RetrievalConfig

    best, lr = 0, RetrievalConfig().lr
    for epoch, value in enumerate(ndcg, start=1):
        best = epoch if value > ndcg[best - 1] or best == 0 else best
        stale = epoch - best
        lr *= 0.5 if stale else 1.0
        if stale >= 2:
            assert epoch == done, "training went on after two epochs without a better validation"
            break
        assert lrs[epoch - 1] == pytest.approx(lr), f"epoch {epoch}: the learning rate is not the plateau rule's"
    assert done == 30 or done - m["kept_epoch"] == 2
    params = _client(home).get_run(_client(home).get_model_version_by_alias("recsys-retrieval", "challenger").run_id)
    assert params.data.params["stopped"] == ("epoch cap" if done == 30 else "no better validation NDCG@10 for 2 epochs")
    # Then the refit (both ranks): 3 epochs from the kept weights over the validation interactions too. The
    # registered weights are the refit ones; validation is reported for the kept ones it chose, which the
    # registry keeps beside them (fooled: validation scored on the refit weights would not match).
    import torch

    from core.names import RETRIEVAL_MODEL
    from core.settings import load_settings
    from training.datasets import prepare
    from training.jobs.retrieval import evaluate
    from training.steps import load_retrieval, selected_weights

    assert m["refit_epochs"] == 3
    s = load_settings(environ=cli_env(home))
    recall, version = load_retrieval(s, "challenger")
    kept = selected_weights(s, RETRIEVAL_MODEL, recall, version)
    assert not torch.equal(kept.items.id_emb.weight, recall.items.id_emb.weight)
    assert evaluate(kept, prepare(s), "valid", s.seed).ndcg == pytest.approx(m["val_ndcg_at_10"], abs=1e-9)
    assert evaluate(recall, prepare(s), "valid", s.seed).ndcg != pytest.approx(m["val_ndcg_at_10"], abs=1e-9)
    # One checkpoint left on disk, the latest (every epoch's was kept: 0.64 GB a run on ML-100K).
    runs = list((home / "ray_results").glob("retrieval-*"))
    assert len(runs) == 1 and sum(p.is_dir() for p in runs[0].glob("checkpoint_*")) == 1


@pytest.mark.e2e
def test_whole_offline_pipeline_through_the_cli(feature_home, tmp_path, use_home):
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    res = run_cli(home, "train", "all", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "copy LM on held-out items" in res.stdout  # `all` includes the copy LM (the tiny one in ci)

    # Gate: first promotion passes the checks; then a worse challenger (1 epoch) is refused.
    for model in ("retrieval", "ranking"):
        assert run_cli(home, "promote", model).returncode == 0
    # Ten steps of a tiny random Llama do not write factual copy: the copy gate refuses it and says why.
    copy = run_cli(home, "promote", "copy")
    assert copy.returncode == 1 and "val_factuality" in copy.stderr and "floor 0.9900" in copy.stderr
    champion = _metrics(home, "recsys-retrieval", "champion")
    assert champion["onnx_parity_max_abs_diff"] < 1e-4
    # Early stopping: the registered weights are the epoch with the best validation NDCG@10, not the last.
    per_epoch = _history(home, "recsys-retrieval", "champion", "epoch_val_ndcg_at_10")
    assert len(per_epoch) == champion["epochs_completed"]
    best = max(per_epoch, key=lambda m: (m.value, -m.step))
    assert champion["kept_epoch"] == best.step
    assert champion["val_ndcg_at_10"] == pytest.approx(best.value, abs=1e-9)
    worse = run_cli(home, "train", "retrieval", "--epochs", "1")
    assert worse.returncode == 0, worse.stderr[-3000:]
    refused = run_cli(home, "promote", "retrieval")
    assert refused.returncode == 1 and "not promoted" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _metrics(home, "recsys-retrieval", "champion")["val_ndcg_at_10"] == champion["val_ndcg_at_10"]

    ex = run_cli(home, "export")
    assert ex.returncode == 0, ex.stderr[-3000:]
    repo = home / "model_repository"
    assert (repo / "ranker" / "1" / "model.onnx").exists() and (repo / "user_encoder" / "1" / "model.onnx").exists()
    assert 'name: "ranker"' in (repo / "ranker" / "config.pbtxt").read_text()
    assert (home / "recall_index" / "1" / "item_embeddings.npy").exists()
    assert not (repo / "copy").exists()  # no copy champion: the graph will serve template copy

    # The models learned the planted structure: the served pipeline beats most-popular on the test split.
    ev = run_cli(home, "evaluate", "--alias", "champion")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "mostpop" in ev.stdout and "ranker v1" in ev.stdout
    ranker = _metrics(home, "recsys-ranker", "champion")
    # The ranking job's "recall alone" is the retrieval job's own test evaluation: same model, same histories.
    retrieval = _metrics(home, "recsys-retrieval", "champion")
    assert ranker["recall_test_hr_at_10"] == pytest.approx(retrieval["test_hr_at_10"], abs=1e-9)
    assert ranker["recall_test_ndcg_at_10"] == pytest.approx(retrieval["test_ndcg_at_10"], abs=1e-9)
    use_home(home)
    from core.settings import load_settings
    from training.steps import baselines_step

    mostpop = baselines_step(load_settings())["mostpop"]
    assert ranker["test_hr_at_10"] > mostpop["hr_at_10"] + 2 * mostpop["hr_at_10_se"]

    # The ranker's refit (2 epochs on examples through each user's validation interaction, scored by the refit
    # recall): the registered weights are the refit ones; validation is reported, and a champion re-evaluated by
    # the gate, with the weights before it, which the registry keeps (fooled: the refit ranker scores otherwise).
    import torch

    from core.names import RANKER_MODEL, RETRIEVAL_MODEL
    from training.datasets import prepare
    from training.jobs.ranking import evaluate_pipeline, stage_data
    from training.ranking_data import item_table
    from training.reevaluate import champion_on_current_data
    from training.registry import load_torch
    from training.steps import selected_weights

    assert ranker["refit_epochs"] == 2
    s = load_settings()
    refit = load_torch(s, RANKER_MODEL, "1").model
    before = selected_weights(s, RANKER_MODEL, refit, "1")
    assert before is not refit and not torch.equal(before.item_emb.weight, refit.item_emb.weight)
    again = champion_on_current_data(s, RANKER_MODEL, "1", "val_ndcg@10", ranker_retrieval="1")
    assert again.value == pytest.approx(ranker["val_ndcg_at_10"], abs=1e-9)
    prepared = prepare(s)
    recall = selected_weights(s, RETRIEVAL_MODEL, load_torch(s, RETRIEVAL_MODEL, "1").model, "1")
    valid = stage_data(s, prepared, recall, "valid")
    with_refit = evaluate_pipeline(refit, recall, valid, item_table(s, prepared, refit.cfg.genres), prepared.n_items,
                                   s.seed)
    assert with_refit.ndcg != pytest.approx(ranker["val_ndcg_at_10"], abs=1e-9)
