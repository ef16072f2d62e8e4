"""NeuronModelForCausalLM: load an artifact and generate, the way transformers users expect."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from neuron_cache import CONFIG_NAME, Artifact, NeuronConfig
from neuron_infer.generation import GenerationDefaults, GenerationSettings, generate
from neuron_infer.runtime import DecoderRuntime


class NeuronModelForCausalLM:
    """A compiled decoder artifact with a transformers-style `generate`. Needs no model source code."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.runtime = DecoderRuntime(artifact)
        self.neuron_config: NeuronConfig = artifact.config
        # transformers' GenerationConfig and AutoConfig are built on first use, not here: importing
        # transformers costs ~2.5 s, half the load-to-first-token budget. generate() reads the few
        # generation_config.json fields it needs directly unless the caller asks for more.
        self._generation_defaults = GenerationDefaults.from_dir(artifact.root)
        self._generation_config: Any = None
        self._config: Any = None

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike,
        *,
        export: bool = False,
        revision: str | None = None,
        token: str | None = None,
        verify: bool = True,
        **export_options: Any,
    ) -> NeuronModelForCausalLM:
        """Load an artifact from a directory or a Hub repo; with `export=True`, compile a checkpoint first.

        `export_options` are neuron-export's options (batch_size, sequence_length, torch_dtype, ...).
        """
        if export:
            return cls._export_then_load(str(model_id), revision, export_options)
        if export_options:
            raise TypeError(f"options {sorted(export_options)} only apply with export=True")
        path = Path(model_id)
        if not path.is_dir():
            path = _download(str(model_id), revision, token)
        return cls(Artifact.open(path, verify=verify))

    @classmethod
    def _export_then_load(cls, model_id: str, revision: str | None, options: dict[str, Any]) -> NeuronModelForCausalLM:
        try:
            from neuron_export.export import ExportOptions
            from neuron_export.export import export as run_export
        except ImportError:
            raise ImportError(
                "from_pretrained(..., export=True) compiles the model with neuron-export, which is not installed. "
                "Install it with `pip install neuron-export`, or export ahead of time with the `neuron-export` CLI."
            ) from None
        output = options.pop("output", None) or tempfile.mkdtemp(prefix="neuron-artifact-")
        log = options.pop("log", lambda _msg: None)
        run_export(ExportOptions(model=model_id, output=str(output), revision=revision, **options), log=log)
        return cls(Artifact.open(output))

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
        **kwargs: Any,
    ) -> torch.Tensor:
        """Like transformers' generate: returns the prompt ids followed by the new tokens (padded with pad_token_id).

        Sampling draws from torch's global RNG (so `torch.manual_seed` reproduces a run) or `generator`.
        """
        if input_ids is None:
            raise ValueError("generate() needs input_ids")
        base = generation_config
        if base is None:
            # The transformers-free fast path covers the common arguments; anything else is resolved by
            # transformers' GenerationConfig exactly as before.
            fast = self._generation_config is None and GenerationDefaults.covers(kwargs)
            base = self._generation_defaults if fast else self.generation_config
        settings = GenerationSettings.resolve(base, kwargs, int(input_ids.shape[-1]))
        return generate(self.runtime, input_ids, attention_mask, settings, streamer, stopping_criteria, generator)

    # ---- saving --------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Copy the artifact (config, graphs, weights, tokenizer files) to `save_directory`."""
        dst = Path(save_directory)
        src = self.artifact.root
        if dst.resolve() == src.resolve():
            return dst
        dst.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            target = dst / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        Artifact.open(dst)  # the copy must verify like the original
        return dst

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    revision: str | None = None, commit_message: str = "Upload neuron artifact") -> str:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(self.artifact.root), revision=revision,
                                 commit_message=commit_message)
        return str(getattr(info, "commit_url", info))


def _download(repo_id: str, revision: str | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token))
    except Exception as err:
        raise OSError(
            f"'{repo_id}' is not a local artifact directory and could not be fetched from the Hub ({err}). "
            f"An artifact is a directory holding {CONFIG_NAME}; create one with `neuron-export`."
        ) from err


def _load_generation_config(root: Path) -> Any:
    from transformers import GenerationConfig

    if (root / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(root)
    return GenerationConfig()


def _load_model_config(root: Path) -> Any:
    if not (root / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(root)
