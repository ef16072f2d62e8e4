"""ArtifactModel: what every model class does with an artifact directory, whatever its task: open it from a
directory or the Hub (or export a checkpoint first), save it, push it to the Hub."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Self

from neuron_cache import CONFIG_NAME, Artifact
from neuron_cache.artifact import contained_path


class ArtifactModel:
    """Base of the model classes; a subclass is built as `cls(artifact, trust_remote_code=..., origin=...)`."""

    artifact: Artifact

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        raise NotImplementedError

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
    ) -> Self:
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
    def _export_then_load(cls, model_id: str, revision: str | None, options: dict[str, Any]) -> Self:
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


