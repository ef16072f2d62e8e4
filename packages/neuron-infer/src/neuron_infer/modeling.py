"""NeuronModelForCausalLM: load an artifact and generate, the way transformers users expect."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from neuron_cache import CONFIG_NAME, Artifact, NeuronConfig
from neuron_cache.artifact import contained_path
from neuron_infer.generation import generate
from neuron_infer.generation_args import GenerationDefaults, GenerationSettings, check_inputs
from neuron_infer.runtime import load_runtime


class NeuronModelForCausalLM:
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
        trust_remote_code: bool = False,
        **export_options: Any,
    ) -> NeuronModelForCausalLM:
        """Load an artifact from a directory or a Hub repo; with `export=True`, compile a checkpoint first.

        Compiled graphs are code. Graphs this machine compiled (exported here) load as they are; any
        other artifact's graphs (a Hub repo, a copy from elsewhere) run only with `trust_remote_code=True`,
        as transformers asks before running a repository's code. `export_options` are neuron-export's
        options (batch_size, sequence_length, torch_dtype, ...).
        """
        if export:
            # trust_remote_code here is the checkpoint's custom modeling code, as in transformers; the graphs
            # this export compiles are this machine's own.
            return cls._export_then_load(str(model_id), revision, {**export_options,
                                                                  "trust_remote_code": trust_remote_code})
        if export_options:
            raise TypeError(f"options {sorted(export_options)} only apply with export=True")
        path = Path(model_id)
        origin = boundary = None
        if not path.is_dir():
            path, origin = _download(str(model_id), revision, token), str(model_id)
            # The Hub cache's snapshots/<rev>/ files are symlinks into the repo folder's blobs/.
            boundary = path.parent.parent
        return cls(Artifact.open(path, verify=verify, boundary=boundary), trust_remote_code=trust_remote_code,
                   origin=origin)

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

    # ---- saving --------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Copy the artifact (config, graphs, weights, tokenizer files) to `save_directory`.

        Symlinks are resolved and must stay inside the artifact: a link to a file elsewhere must not copy that
        file's contents into the saved artifact (and from there to the Hub by push_to_hub).
        """
        dst = Path(save_directory)
        src = self.artifact.root
        if dst.resolve() == src.resolve():
            return dst
        files = artifact_files(src, self.artifact.boundary)
        dst.mkdir(parents=True, exist_ok=True)
        for rel, path in files.items():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / rel)
        Artifact.open(dst)  # the copy must verify like the original
        return dst

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    revision: str | None = None, commit_message: str = "Upload neuron artifact") -> str:
        from huggingface_hub import HfApi

        files = artifact_files(self.artifact.root, self.artifact.boundary)  # refuses symlinks that leave the artifact, before any upload
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(self.artifact.root), revision=revision,
                                 commit_message=commit_message, allow_patterns=sorted(files))
        return str(getattr(info, "commit_url", info))


def artifact_files(root: Path, boundary: Path | None = None) -> dict[str, Path]:
    """Every file under `root` (relative path -> resolved path), refusing any symlink that leaves `boundary`
    (default: `root`)."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*filenames, *dirnames]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            path = contained_path(root, rel, boundary)  # ArtifactError for a link to the outside
            if name in filenames and path.is_file():
                files[rel] = path
            elif name in dirnames and (Path(dirpath) / name).is_symlink():
                # os.walk does not descend into linked directories; copy their files too (they are inside).
                for sub in path.rglob("*"):
                    if sub.is_file():
                        inner = f"{rel}/{sub.relative_to(path).as_posix()}"
                        files[inner] = contained_path(root, inner, boundary)
    return files


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
