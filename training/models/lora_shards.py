"""The copy LM's adapter across Ray Train workers: FSDP2 sharding of the model and the adapter state gathered
whole from the shards (what checkpoints and MLflow store)."""

from __future__ import annotations

import torch


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """Only the adapter weights (0.5 M parameters for SmolLM2 r=8): what checkpoints and MLflow store. Under
    FSDP the weights are shards (DTensors): gathered whole here, so every rank must call it."""
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
            for k, v in get_peft_model_state_dict(peft_model).items()}


def shard(peft_model, use_gpu: bool):
    """FSDP2: each decoder block (the classes the model names in `_no_split_modules`), then the whole model,
    sharded over the workers; the frozen base is split too, which is what lets a base too big for one GPU
    train. Parameters become DTensors in place: create the optimizer after this."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if use_gpu
              else MixedPrecisionPolicy())
    blocks = set(getattr(peft_model.get_base_model(), "_no_split_modules", None) or [])
    layers = [m for m in peft_model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise ValueError(f"fsdp: {type(peft_model.get_base_model()).__name__} names no decoder blocks "
                         "(_no_split_modules); use copy_parallel=ddp")
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(peft_model, mp_policy=policy)
    return peft_model
