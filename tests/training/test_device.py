"""The Ray Train jobs compute where `prepare_model` put the model (`ray.train.torch.get_device()`: a GPU on GPU
workers). No GPU here, so the model goes to PyTorch's `meta` device: a batch left on the CPU reaches it as a CPU
tensor and the probe says so. The probe stops at the model's first forward; nothing is computed on `meta`."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from training.jobs.common import autocast, buffer_sync_off, on_cpu, run_epoch
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
    assert "score_fn(judged, valid[\"seqs\"], device)" in inspect.getsource(retrieval.train_loop)


def test_validation_scores_users_on_the_models_device() -> None:
    model = retrieval().to(META)
    seen: list[torch.device] = []

    def encode(seq, table=None):  # the users' sequences, as the model receives them
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


def test_ddp_is_told_to_skip_buffer_syncs_in_the_installed_pytorchs_spelling(tmp_path) -> None:
    """A real one-rank gloo group: DDP accepts the keyword (2.11's refused 2.13's `forward_sync_buffers` on an
    H200 run), and a PyTorch whose DDP has only `broadcast_buffers` is given that one."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(retrieval(), **buffer_sync_off())
        assert ddp.module is not None
    finally:
        dist.destroy_process_group()

    def ddp_2_11(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                 process_group=None, bucket_cap_mb=None, find_unused_parameters=False):
        """DistributedDataParallel.__init__'s parameters in PyTorch 2.11 (the start of its list)."""

    assert buffer_sync_off(ddp_2_11) == {"broadcast_buffers": False}
    assert set(buffer_sync_off()) <= set(inspect.signature(DistributedDataParallel.__init__).parameters)
