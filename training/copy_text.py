"""Copy LM training tensors: (prompt, target) pairs encoded with the served prompt (`core.copy_decoding`), the
left-padded batch, the loss on the copy tokens only, and held-out likelihood."""

from __future__ import annotations

import torch

from core.copy_decoding import answer_ids, prompt_ids
from core.copy_guard import CopyFacts


def encode_pairs(tok, pairs: list[tuple[CopyFacts, str]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per pair; the prompt's labels are -100, so the loss is on the copy only."""
    out = []
    for facts, target in pairs:
        shared, item = prompt_ids(tok, facts)
        prompt = shared + item
        answer = answer_ids(tok, [target], facts)[0]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch: every row's copy ends at the last position, so the loss needs logits only for the
    last `keep` positions (the vocabulary projection over the prompt is a fifth of a step's work)."""
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, (x, y) in enumerate(batch):
        ids[r, n - len(x) :] = torch.tensor(x)
        labels[r, n - len(y) :] = torch.tensor(y)
        mask[r, n - len(x) :] = 1
    answer = max(sum(1 for t in y if t != -100) for _, y in batch)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "keep": min(n, answer + 1)}


def lm_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """Cross-entropy of the copy tokens given their prompt; (loss, number of copy tokens)."""
    keep = int(batch["keep"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits  # (B, keep, V)
    labels = batch["labels"][:, -keep + 1 :] if keep > 1 else batch["labels"][:, :0]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels.reshape(-1), ignore_index=-100, reduction=reduction)
    return loss, int((labels != -100).sum())


@torch.inference_mode()
def target_nll(model, tok, pairs: list[tuple[CopyFacts, str]], batch_size: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood of the targets given their prompts, and the number of target tokens."""
    total, count = 0.0, 0
    encoded = encode_pairs(tok, pairs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for i in range(0, len(encoded), batch_size):
        nll, n = lm_loss(model, collate(encoded[i : i + batch_size], pad), reduction="sum")
        total += float(nll)
        count += n
    return total, count
