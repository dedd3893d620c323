"""Reference baselines scored by the same full-ranking protocol as the real models.

A new model is only interesting if it beats these under identical masking, tie-breaking and targets, so they
share one interface: ``fit(train_histories, n_items) -> self`` and ``score(users) -> (B, n_items + 1)``,
where ``users`` index into the fitted ``train_histories`` and column 0 (padding) is -inf.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np
import scipy.sparse as sp

from training.evaluation.protocol import RankingReport, evaluate_full_ranking

__all__ = [
    "BASELINES",
    "BPRMF",
    "EASE",
    "BaselineResult",
    "ItemKNN",
    "MostPopular",
    "Recommender",
    "interaction_matrix",
    "make_baseline",
    "run_baselines",
]


class Recommender(Protocol):
    """Anything the baseline runner can fit and score."""

    def fit(self, train_histories: Sequence[np.ndarray], n_items: int) -> Self: ...

    def score(self, users: np.ndarray) -> np.ndarray: ...


def interaction_matrix(histories: Sequence[np.ndarray], n_items: int, binary: bool = True) -> sp.csr_matrix:
    """User x item CSR matrix of shape (n_users, n_items + 1); column 0 (padding) is always empty.

    ``binary=True`` collapses repeat interactions to 1 (what item-item similarity and EASE expect).
    """
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    cols = (
        np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        if lengths.sum()
        else np.empty(0, dtype=np.int64)
    )
    if cols.size and (cols.min() < 0 or cols.max() > n_items):
        raise ValueError(f"history item indices must lie in 0..{n_items}")
    rows = np.repeat(np.arange(len(histories)), lengths)
    keep = cols != 0
    x = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float64), (rows[keep], cols[keep])),
        shape=(len(histories), n_items + 1),
    )
    x.sum_duplicates()
    if binary:
        x.data[:] = 1.0
    return x


def _with_padding_masked(scores: np.ndarray) -> np.ndarray:
    scores[:, 0] = -np.inf
    return scores


class _Fitted:
    """Shared state: the binary interaction matrix used at scoring time."""

    _x: sp.csr_matrix | None = None
    n_items: int = 0

    def _require_fit(self) -> sp.csr_matrix:
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__} must be fit before score")
        return self._x


class MostPopular(_Fitted):
    """Score = global interaction count (repeats included); the non-personalised floor to beat."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train_histories: Sequence[np.ndarray], n_items: int) -> Self:
        self.n_items = n_items
        self._x = interaction_matrix(train_histories, n_items)
        counts = interaction_matrix(train_histories, n_items, binary=False).sum(axis=0)
        self.counts = np.asarray(counts, dtype=np.float64).ravel()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        self._require_fit()
        assert self.counts is not None
        return _with_padding_masked(np.tile(self.counts, (len(users), 1)))


class ItemKNN(_Fitted):
    """Item-item collaborative filtering with shrunk cosine similarity on the binary user x item matrix.

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink); the shrink term damps similarities
    backed by few co-occurrences. Each target item keeps only its ``k_neighbors`` most similar items, and
    score(u, j) = sum over i in history(u) of sim(i, j).
    """

    def __init__(self, k_neighbors: int = 100, shrink: float = 10.0) -> None:
        self.k_neighbors = k_neighbors
        self.shrink = shrink
        self.sim: sp.csr_matrix | None = None  # row j = pruned neighbours of target item j

    def fit(self, train_histories: Sequence[np.ndarray], n_items: int) -> Self:
        self.n_items = n_items
        x = self._x = interaction_matrix(train_histories, n_items)
        co = (x.T @ x).tocoo()
        norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel())
        off_diag = co.row != co.col
        row, col = co.row[off_diag], co.col[off_diag]
        data = co.data[off_diag] / (norms[row] * norms[col] + self.shrink)
        sim = sp.csr_matrix((data, (row, col)), shape=co.shape)
        self.sim = self._prune_rows(sim, self.k_neighbors)
        return self

    @staticmethod
    def _prune_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
        """Keep the k largest entries of every row (the similarity is symmetric, so row j = column j)."""
        m.sort_indices()
        keep = np.zeros(m.nnz, dtype=bool)
        for r in range(m.shape[0]):
            lo, hi = m.indptr[r], m.indptr[r + 1]
            if hi - lo <= k:
                keep[lo:hi] = True
            else:
                keep[lo + np.argpartition(-m.data[lo:hi], k - 1)[:k]] = True
        coo = m.tocoo()
        return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=m.shape)

    def score(self, users: np.ndarray) -> np.ndarray:
        x = self._require_fit()
        assert self.sim is not None
        scores = (x[np.asarray(users)] @ self.sim.T).toarray()
        return _with_padding_masked(scores)


class EASE(_Fitted):
    """EASE^R (Steck, 2019): closed-form linear item-item autoencoder with a zero-diagonal constraint.

    P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)) (so diag(B) = 0), score(u) = x_u B. Dense in items:
    O(n_items²) memory and O(n_items³) fit time, fine up to roughly 10k items.
    """

    def __init__(self, l2: float = 300.0) -> None:
        self.l2 = l2
        self.weights: np.ndarray | None = None

    def fit(self, train_histories: Sequence[np.ndarray], n_items: int) -> Self:
        self.n_items = n_items
        x = self._x = interaction_matrix(train_histories, n_items)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        del gram
        p /= -np.diag(p).copy()[None, :]  # in place: at 10k items every dense copy costs 800 MB
        p[np.diag_indices_from(p)] = 0.0
        self.weights = p
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        x = self._require_fit()
        assert self.weights is not None
        return _with_padding_masked(np.asarray(x[np.asarray(users)] @ self.weights))


class BPRMF(_Fitted):
    """Matrix factorisation trained with BPR (Rendle et al., 2009) in torch on CPU.

    Maximises log σ(x_ui − x_uj) for an observed item i and a uniformly sampled unobserved item j, with
    x_ui = p_u·q_i + b_i and L2 penalty ``reg`` on the embeddings touched by each batch. Adam keeps it to a
    few seconds for ~100k interactions.
    """

    def __init__(
        self,
        factors: int = 64,
        epochs: int = 20,
        lr: float = 0.01,
        reg: float = 1e-2,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        self.factors = factors
        self.epochs = epochs
        self.lr = lr
        self.reg = reg
        self.batch_size = batch_size
        self.seed = seed
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.item_bias: np.ndarray | None = None

    def _sample_negatives(
        self, users: np.ndarray, positives: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Uniform negatives from 1..n_items, resampling (a few rounds) any that hit a positive pair."""
        stride = self.n_items + 1
        neg = rng.integers(1, stride, size=users.size)
        for _ in range(5):
            clash = np.isin(users * stride + neg, positives, assume_unique=False)
            if not clash.any():
                break
            neg[clash] = rng.integers(1, stride, size=int(clash.sum()))
        return neg

    def fit(self, train_histories: Sequence[np.ndarray], n_items: int) -> Self:
        import torch  # local import: the rest of the evaluation package stays torch-free

        self.n_items = n_items
        x = self._x = interaction_matrix(train_histories, n_items).tocoo()
        users, items = x.row.astype(np.int64), x.col.astype(np.int64)
        positives = np.unique(users * (n_items + 1) + items)

        # Batches of tiny ops: intra-op threads only add sync cost, and on a busy 2-core box OpenMP barriers
        # made training ~10x slower. Run single-threaded and restore the caller's setting afterwards.
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._train(users, items, positives, x.shape[0], n_items)
        finally:
            torch.set_num_threads(prev_threads)
        return self

    def _train(
        self, users: np.ndarray, items: np.ndarray, positives: np.ndarray, n_users: int, n_items: int
    ) -> None:
        """Adam over shuffled (user, positive) pairs, one fresh negative per pair per epoch."""
        import torch

        rng = np.random.default_rng(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        user_emb = torch.nn.Parameter(torch.randn(n_users, self.factors, generator=gen) * 0.01)
        item_emb = torch.nn.Parameter(torch.randn(n_items + 1, self.factors, generator=gen) * 0.01)
        bias = torch.nn.Parameter(torch.zeros(n_items + 1))
        opt = torch.optim.Adam([user_emb, item_emb, bias], lr=self.lr)

        for _ in range(self.epochs if users.size else 0):
            order = rng.permutation(users.size)
            negs = self._sample_negatives(users[order], positives, rng)
            for start in range(0, users.size, self.batch_size):
                idx = order[start : start + self.batch_size]
                u = torch.from_numpy(users[idx])
                i = torch.from_numpy(items[idx])
                j = torch.from_numpy(negs[start : start + self.batch_size])
                pu, qi, qj = user_emb[u], item_emb[i], item_emb[j]
                diff = (pu * (qi - qj)).sum(dim=1) + bias[i] - bias[j]
                penalty = self.reg * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(idx)
                loss = -torch.nn.functional.logsigmoid(diff).mean() + penalty
                opt.zero_grad()
                loss.backward()
                opt.step()

        self.user_factors = user_emb.detach().numpy().copy()
        self.item_factors = item_emb.detach().numpy().copy()
        self.item_bias = bias.detach().numpy().copy()

    def score(self, users: np.ndarray) -> np.ndarray:
        self._require_fit()
        assert self.user_factors is not None and self.item_factors is not None and self.item_bias is not None
        scores = self.user_factors[np.asarray(users)] @ self.item_factors.T + self.item_bias[None, :]
        return _with_padding_masked(scores.astype(np.float64))


BASELINES: dict[str, type[Recommender]] = {
    "mostpop": MostPopular,
    "itemknn": ItemKNN,
    "ease": EASE,
    "bpr": BPRMF,
}


def make_baseline(name: str, seed: int = 0, **params: Any) -> Recommender:
    """Instantiate a baseline by registry name; ``seed`` is passed only to stochastic ones (BPR)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    cls = BASELINES[name]
    if cls is BPRMF:
        params.setdefault("seed", seed)
    return cls(**params)


@dataclass(frozen=True)
class BaselineResult:
    """A baseline's ranking report plus its fit wall-clock time, to weigh accuracy against cost."""

    report: RankingReport
    fit_seconds: float


def run_baselines(
    train_histories: Sequence[np.ndarray],
    eval_histories: Sequence[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    k: int = 10,
    seed: int = 0,
    names: Sequence[str] = ("mostpop", "itemknn", "ease", "bpr"),
    users: np.ndarray | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, BaselineResult]:
    """Fit each named baseline on ``train_histories`` and evaluate it with ``evaluate_full_ranking``.

    ``eval_histories[i]`` / ``targets[i]`` belong to user ``users[i]`` (default: user i), an index into
    ``train_histories``. ``params`` optionally overrides constructor arguments per baseline name.
    """
    targets = np.asarray(targets)
    eval_users = np.arange(len(targets)) if users is None else np.asarray(users)
    results: dict[str, BaselineResult] = {}
    for name in names:
        model = make_baseline(name, seed=seed, **(params or {}).get(name, {}))
        start = time.perf_counter()
        model.fit(train_histories, n_items)
        fit_seconds = time.perf_counter() - start
        report = evaluate_full_ranking(
            model.score, eval_users, eval_histories, targets, n_items, k=k, seed=seed
        )
        results[name] = BaselineResult(report=report, fit_seconds=fit_seconds)
    return results
