"""SentenceEncoder.encode: sentence-transformers' `encode` over a pooled feature-extraction artifact.

Tokenizes with the artifact's own tokenizer, truncating (with a warning that counts the inputs cut) to the
shorter of the artifact's sequence length and sentence-transformers' max_seq_length, runs the graphs (whose
`sentence_embedding` output is already pooled) and normalizes as the model does (`pooling.normalize`).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch

from neuron_infer.encoder_runtime import EncoderRuntime

QWEN_END = "<|endoftext|>"  # the token Qwen embedders' recipes end every input with
_UNSET = object()


class SentenceEncoder:
    """Mixin for a model class with `runtime` (an EncoderRuntime) and `artifact`."""

    runtime: EncoderRuntime
    _tokenizer: Any = None
    _end_token: Any = _UNSET  # the id encode() appends to every input (None: none), found on first use

    @property
    def tokenizer(self) -> Any:
        """transformers.AutoTokenizer of the artifact (its tokenizer files), loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.runtime.root)
        return self._tokenizer

    @property
    def max_seq_length(self) -> int:
        """The longest input encode() passes: the artifact's, or sentence-transformers' max_seq_length if smaller
        (sentence_bert_config.json up to sentence-transformers 5; from 6 on, the tokenizer's model_max_length)."""
        limits = [self.runtime.max_length, self.tokenizer.model_max_length]
        try:
            limits.append(json.loads((self.runtime.root / "sentence_bert_config.json").read_text()).get("max_seq_length"))
        except (OSError, ValueError, AttributeError):
            pass
        return min(n for n in limits if isinstance(n, int) and n > 0)

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts (config_sentence_transformers.json `prompts`, e.g. Qwen3-Embedding's "query")."""
        return self._st_config()[0]

    @property
    def default_prompt_name(self) -> str | None:
        return self._st_config()[1]

    def _st_config(self) -> tuple[dict[str, str], str | None]:
        path = self.runtime.root / "config_sentence_transformers.json"
        try:
            data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 1 << 20 else {}
        except (OSError, ValueError):
            data = {}
        prompts = data.get("prompts") if isinstance(data, dict) else None
        prompts = {k: v for k, v in prompts.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(prompts, dict) else {}
        default = data.get("default_prompt_name") if isinstance(data, dict) else None
        return prompts, default if default in prompts else None

    def encode(self, sentences: str | list[str], batch_size: int = 32, normalize_embeddings: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, show_progress_bar: bool = False,
               prompt: str | None = None, truncate: bool = True, prompt_name: str | None = None) -> Any:
        """Sentence embeddings, (n, hidden) float32 (a 1-D vector for a single string), like sentence-transformers.

        `normalize_embeddings` None: L2-normalized when the model's are (a Normalize module, a decoder embedder's
        recipe). `truncate=False` refuses inputs longer than `max_seq_length` instead of cutting them.
        `prompt_name` prepends one of `prompts` (the model's default_prompt_name, if any, when neither it nor
        `prompt` is given); `prompt` prepends that text. Returns np.ndarray, or a torch.Tensor.
        `show_progress_bar` is accepted and ignored."""
        if self.runtime.config.pooling is None:
            raise ValueError(f"{self.runtime.root} has no pooling (a plain feature-extraction export), so it has no "
                             "sentence embeddings; re-export a sentence-transformers checkpoint, or pass --pooling")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if prompt is None:
            prompt_name = prompt_name or self.default_prompt_name
            if prompt_name is not None and prompt_name not in self.prompts:
                raise ValueError(f"prompt_name={prompt_name!r}: the model's prompts are {sorted(self.prompts) or 'none'} "
                                 f"({self.runtime.root / 'config_sentence_transformers.json'}); pass one of them, or "
                                 "prompt='...' for your own text")
            prompt = self.prompts.get(prompt_name) if prompt_name is not None else None
        if prompt:
            texts = [prompt + t for t in texts]
        if texts:
            ids = self._token_ids(texts, truncate)  # all at once: one warning that counts every truncated input
            out = torch.cat([self.runtime.embed(ids[i:i + batch_size], normalize_embeddings)
                             for i in range(0, len(ids), batch_size)])
        else:
            out = torch.zeros(0, self._dimension())
        if single:
            out = out[0]
        if convert_to_tensor:
            return out
        return out.numpy() if convert_to_numpy else out  # (sentence-transformers' list of tensors: one tensor here)

    def _dimension(self) -> int:
        graph = next(iter(self.runtime.config.graphs.values()))
        return next(int(t.shape[-1]) for t in graph.outputs if t.name == "sentence_embedding")

    def _token_ids(self, texts: list[str], truncate: bool) -> list[list[int]]:
        limit = self.max_seq_length
        if self._end_token is _UNSET:
            self._end_token = self._eos_to_append()
        eos = self._end_token
        room = limit - (eos is not None)
        # verbose=False: transformers' own "longer than the maximum" message would warn without counting
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        long = [i for i, row in enumerate(ids) if len(row) > room]
        if long and not truncate:
            raise ValueError(f"{len(long)} of {len(texts)} inputs exceed max_seq_length={limit} tokens (the first: "
                             f"#{long[0]}, {len(ids[long[0]])} tokens); shorten them or pass truncate=True")
        if long:
            warnings.warn(f"encode(): {len(long)} of {len(texts)} inputs are longer than max_seq_length={limit} "
                          "tokens and were truncated", stacklevel=3)
            cut = self.tokenizer([texts[i] for i in long], truncation=True, max_length=room)["input_ids"]
            for i, row in zip(long, cut):
                ids[i] = row
        return [[*row, eos] for row in ids] if eos is not None else ids

    def _eos_to_append(self) -> int | None:
        """Decoder embedders pool the last token, which their recipe makes an end-of-text token: Qwen3-Embedding's
        appends <|endoftext|> (its pad token, not its eos <|im_end|>). Appended when the tokenizer does not end
        its sequences with it (or with eos) itself; other models' own templates are their tokenizer's business."""
        if self.runtime.config.pooling.mode != "last_token":
            return None
        tok = self.tokenizer
        end = tok.convert_tokens_to_ids(QWEN_END) if QWEN_END in tok.get_vocab() else tok.eos_token_id
        if end is None:
            return None
        probe = tok("a")["input_ids"]
        return None if probe and probe[-1] in (end, tok.eos_token_id) else int(end)
