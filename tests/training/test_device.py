"""The Ray Train jobs compute where `prepare_model` put the model (`ray.train.torch.get_device()`: a GPU on GPU
workers). No GPU here, so the model goes to PyTorch's `meta` device: a batch left on the CPU reaches it as a CPU
tensor and the probe says so. The probe stops at the model's first forward; nothing is computed on `meta`."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from training.jobs.common import adamw, autocast, from_rank_zero, on_cpu, run_epoch
from training.jobs.retrieval import score_fn
from training.models.ranking import Ranker, RankingConfig
from training.models.retrieval import RetrievalConfig, SASRec

META = torch.device("meta")


class Reached(Exception):
    """The probe saw the batch arrive; the step stops there."""


def probe(module: torch.nn.Module) -> list[torch.device]:
    seen: list[torch.device] = []

    def hook(_module, args):
        seen.extend(a.device for a in args if isinstance(a, torch.Tensor))
        raise Reached

    module.register_forward_pre_hook(hook)
    return seen


def retrieval() -> SASRec:
    cfg = RetrievalConfig(n_items=30, max_len=6)
    return SASRec(cfg, torch.zeros(30, cfg.content_dim))


def ranker() -> Ranker:
    return Ranker(RankingConfig(n_items=30, genres=["Action", "Drama"], content_dim=8, max_len=6))


def ranker_batch(rng: np.random.Generator, n: int = 4) -> tuple[np.ndarray, ...]:
    return (rng.integers(1, 30, (n, 6)), rng.integers(1, 30, (n, 1)), rng.random((n, 5), dtype=np.float32),
            rng.random((n, 8), dtype=np.float32), rng.random((n, 2), dtype=np.float32),
            rng.random((n, 1), dtype=np.float32), (rng.random((n, 1)) > 0.5).astype(np.float32),
            rng.random((n, 1), dtype=np.float32))


def _first_batches(device: torch.device) -> list[list[torch.device]]:
    """Devices of the tensors each job's model received first, when the epoch is told `device`."""
    rng = np.random.default_rng(0)
    out = []
    for model, batch in ((retrieval(), (rng.integers(1, 30, (4, 6)), rng.integers(1, 30, (4, 6)))),
                         (ranker(), ranker_batch(rng))):
        model.to(META)
        seen = probe(model)
        with pytest.raises(Reached):
            run_epoch(model, torch.optim.AdamW(model.parameters()), [batch], device)
        out.append(seen)
    return out


def test_every_training_batch_reaches_the_model_on_the_epochs_device() -> None:
    assert [set(seen) for seen in _first_batches(META)] == [{META}, {META}]
    # What the probe sees of a batch left behind: the model on one device, the epoch told another.
    assert [set(seen) for seen in _first_batches(torch.device("cpu"))] == [{torch.device("cpu")}] * 2


def test_both_jobs_train_and_validate_on_the_workers_device() -> None:
    from training.jobs import ranking, retrieval

    for job in (retrieval, ranking):
        src = inspect.getsource(job.train_loop)
        epoch = inspect.getsource(job._epoch) if hasattr(job, "_epoch") else src  # the ranker's epoch is a helper
        assert "device = ray.train.torch.get_device()" in src and "run_epoch(" in epoch, job.__name__
        # The model reaches its device before the optimizer is built and its checkpointed state loaded: a loaded
        # state goes where the parameters are then, and a fused AdamW cannot step CUDA weights with CPU moments.
        placed = min(i for i in (src.find("prepare_replicas("), src.find("on_worker_device(")) if i >= 0)
        assert placed < src.lower().find("adamw(") < src.find("initial_state(" if job is ranking else
                                                           "_restored_optimizer("), job.__name__
    assert "score_fn(judged, valid[\"seqs\"], device)" in inspect.getsource(retrieval.train_loop)


def test_validation_scores_users_on_the_models_device() -> None:
    model = retrieval().to(META)
    seen: list[torch.device] = []

    def encode(seq, table=None, last_only=False):  # the users' sequences, as the model receives them
        seen.append(seq.device)
        raise Reached

    model.encode = encode
    with pytest.raises(Reached):
        score_fn(model, np.ones((3, 6), dtype=np.int64), META)(np.arange(3))
    assert seen == [META]


def test_an_epoch_on_the_cpu_learns_and_reports_its_mean_loss() -> None:
    torch.manual_seed(0)
    model, rng = retrieval(), np.random.default_rng(1)
    batches = [(rng.integers(1, 30, (8, 6)), rng.integers(1, 30, (8, 6))) for _ in range(4)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = run_epoch(model, opt, batches, torch.device("cpu"))
    assert np.isfinite(first) and run_epoch(model, opt, batches * 5, torch.device("cpu")) < first


def test_bf16_only_on_a_gpu_and_kept_weights_on_the_host() -> None:
    assert not isinstance(autocast(torch.device("cpu")), torch.autocast)  # fp32 on the CPU, as before
    if torch.cuda.is_available():
        assert autocast(torch.device("cuda")).fast_dtype == torch.bfloat16
    state = {"w": torch.ones(2)}
    kept = on_cpu(state)
    state["w"] += 1  # training goes on: the kept copy must not follow
    assert kept["w"].device.type == "cpu" and kept["w"].tolist() == [1.0, 1.0]


def _rank(rank: int, store: str, out: str, steps: int) -> None:
    """One of two gloo ranks: different initial weights and batches per rank; the same 3 steps trained with
    `from_rank_zero` + `run_epoch` (its `average_gradients`), with DDP, and with neither (each rank alone)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    rng = np.random.default_rng(rank)
    batches = [(rng.integers(1, 30, (4, 6)), rng.integers(0, 30, (4, 6))) for _ in range(steps)]
    states = {}
    for how in ("average", "ddp", "alone"):
        torch.manual_seed(rank)
        model = retrieval()
        model.items.content.normal_()  # a real buffer: a rank's own content must not survive the start either
        model = from_rank_zero(model) if how == "average" else model
        net = DistributedDataParallel(model) if how == "ddp" else model
        opt = adamw(model.parameters(), lr=1e-2)
        if how == "alone":
            dist.destroy_process_group()  # no group: `average_gradients` is a no-op, as for one worker
        run_epoch(net, opt, batches, torch.device("cpu"))
        states[how] = on_cpu(model.state_dict())
    torch.save(states, out)


def test_two_ranks_averaging_their_gradients_train_the_weights_ddp_trains(tmp_path) -> None:
    """The jobs' replicas (`prepare_replicas`: rank 0's start; `run_epoch`: one all-reduce of the flattened
    gradients after backward) end each step with DDP's weights bit for bit, the same on both ranks."""
    from tests.conftest import run_spawned

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    run_spawned(_rank, [(r, str(tmp_path / "store"), outs[r], 3) for r in range(2)])
    a, b = (torch.load(o, weights_only=True) for o in outs)
    for key in a["average"]:
        assert torch.equal(a["average"][key], b["average"][key]), key  # the ranks stay one model
        assert torch.equal(a["average"][key], a["ddp"][key]), key
    # what the check would see without the averaging: each rank's own weights
    assert not torch.equal(a["alone"]["blocks.0.attn.qkv.weight"], b["alone"]["blocks.0.attn.qkv.weight"])
