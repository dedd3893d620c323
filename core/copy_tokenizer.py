"""The copy LM's tokenizer without transformers: `tokenizer.json` through the `tokenizers` library and the chat
template through jinja2, as transformers renders it.

`AutoTokenizer.from_pretrained` imports transformers' modelling stack on the way (its type validators pull in
torch._dynamo with sympy, its conversion mapping accelerate with boto3: ~0.13 GB in the Copy replica); the decoder
needs only encoding, decoding, the special tokens and the chat template. The calls it makes are answered in the
same form (`tok(text, add_special_tokens=False)["input_ids"]`, `decode`, `apply_chat_template(..., tokenize=False)`,
`len`); `tests/core/test_lean_llama.py` holds them equal to transformers' on the base model's tokenizer.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _template(chat_template: str):
    """Compiled as transformers compiles chat templates (utils/chat_template_utils.py `_cached_compile_jinja_template`):
    a sandboxed environment, blocks trimmed, loop controls, its `tojson`, `raise_exception` and `strftime_now`."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(chat_template)


class LeanTokenizer:
    """A saved Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json, the chat template in its own
    chat_template.jinja or in the config), padding on the left."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        jinja = folder / "chat_template.jinja"
        text = jinja.read_text() if jinja.exists() else cfg.get("chat_template")
        if not isinstance(text, str):
            raise ValueError(f"{folder}: no single chat template (chat_template.jinja or tokenizer_config.json)")
        self.template = _template(text)
        self.special = {name: _token(cfg.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        self.eos_token = self.special["eos_token"] or ""
        self.eos_token_id = self._id(self.eos_token)
        self.pad_token = self.special["pad_token"] or self.eos_token
        self.pad_token_id = self._id(self.pad_token)
        self.bos_token_id = self._id(self.special["bos_token"])
        self.padding_side = "left"
        self.clean_up = bool(cfg.get("clean_up_tokenization_spaces", False))
        if self.clean_up:  # transformers then rewrites " ." and " n't" after decoding: not reproduced here
            raise ValueError(f"{folder}: clean_up_tokenization_spaces is on; load it with transformers")

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self.backend.encode_batch(text, add_special_tokens=add_special_tokens)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str | list[int]:
        text = self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **{k: v for k, v in self.special.items() if v is not None})
        return self(text)["input_ids"] if tokenize else text
