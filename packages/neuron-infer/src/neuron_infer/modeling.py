"""NeuronModelForCausalLM: load an artifact and generate, the way transformers users expect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuron_cache import Artifact, NeuronConfig
from neuron_infer.artifact_model import ArtifactModel
from neuron_infer.generation import generate
from neuron_infer.generation_args import GenerationDefaults, GenerationSettings, check_inputs
from neuron_infer.runtime import load_runtime


class NeuronModelForCausalLM(ArtifactModel):
    """A compiled decoder artifact with a transformers-style `generate`. Needs no model source code."""

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        self.artifact = artifact
        self.runtime = load_runtime(artifact, trust_remote_code=trust_remote_code, origin=origin)
        self.neuron_config: NeuronConfig = artifact.config
        # transformers' GenerationConfig and AutoConfig are built on first use, not here: importing
        # transformers costs ~2.5 s, half the load-to-first-token budget. generate() reads the few
        # generation_config.json fields it needs directly unless the caller asks for more.
        self._generation_defaults = GenerationDefaults.from_dir(artifact.root)
        self._generation_config: Any = None
        self._config: Any = None

    # ---- transformers-facing configs (lazy) ----------------------------------------------------
    @property
    def generation_config(self) -> Any:
        """transformers.GenerationConfig of the artifact (its generation_config.json), built on first access."""
        if self._generation_config is None:
            self._generation_config = _load_generation_config(self.artifact.root)
        return self._generation_config

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        self._generation_config = value

    @property
    def config(self) -> Any:
        """transformers.PretrainedConfig of the exported checkpoint (its config.json), or None."""
        if self._config is None:
            self._config = _load_model_config(self.artifact.root)
        return self._config

    # ---- generation ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: Any = None,
        streamer: Any = None,
        stopping_criteria: Any = None,
        generator: torch.Generator | None = None,
        logits_processor: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Like transformers' generate: returns the prompt ids followed by the new tokens (padded with pad_token_id),
        or with `return_dict_in_generate=True` transformers' GenerateDecoderOnlyOutput (`output_scores`,
        `output_logits`).

        Sampling draws from torch's global RNG (so `torch.manual_seed` reproduces a run) or `generator`.
        The logits rules (repetition_penalty, no_repeat_ngram_size, min_p, sequence_bias, ...) and
        `logits_processor` (a transformers LogitsProcessorList, merged as transformers merges it) run as
        transformers' own LogitsProcessors on the host. A prompt batch larger than the compiled batch runs in
        chunks, so a custom processor sees one chunk's rows at a time.
        """
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        input_ids, attention_mask = check_inputs(input_ids, attention_mask, self.runtime.vocab_size)
        base = generation_config
        if base is None:
            # The transformers-free fast path covers the common arguments; anything else is resolved by
            # transformers' GenerationConfig exactly as before.
            fast = self._generation_config is None and GenerationDefaults.covers(kwargs)
            base = self._generation_defaults if fast else self.generation_config
        settings = GenerationSettings.resolve(base, kwargs, int(input_ids.shape[-1]), logits_processor)
        return generate(self.runtime, input_ids, attention_mask, settings, streamer, stopping_criteria, generator)

def _load_generation_config(root: Path) -> Any:
    from transformers import GenerationConfig

    path = root / "generation_config.json"
    if not path.is_file():
        return GenerationConfig()
    try:
        return GenerationConfig.from_pretrained(root)
    except Exception as err:  # transformers raises OSError, ValueError or TypeError depending on the damage
        raise ValueError(f"{path}: not a valid generation config ({_first_line(err)}); repair it, or delete it "
                         "to generate with the defaults") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _load_model_config(root: Path) -> Any:
    if not (root / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(root)
    except Exception as err:
        raise ValueError(f"{root / 'config.json'}: not a valid model config ({_first_line(err)}); repair it, or "
                         "delete it (generate() does not need it)") from None
