"""Where an export lands: OUTPUT receives a whole, validated artifact or nothing.

The artifact is built in a staging directory next to OUTPUT (on its filesystem unless OUTPUT is a
mount point, so the final move is a rename), validated there, and moved into place as the export's
last step. A failed export deletes
the staging directory and leaves OUTPUT as it was. OUTPUT may be new, an empty directory, or an
earlier artifact, whose own files are replaced; anything else is refused, because a directory that
holds other things is not ours to write into.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from neuron_cache import CONFIG_NAME
from neuron_cache.artifact import GRAPHS_DIR, WEIGHTS_DIR
from neuron_export.errors import USER_ERRORS, ExportError, OutputError, nothing_written


@dataclass(kw_only=True, slots=True)
class OutputPlan:
    given: str  # OUTPUT as the user wrote it: what messages name
    dest: Path  # OUTPUT with symlinks resolved: where files go
    copied: tuple[str, ...]  # top-level checkpoint/tokenizer files an export writes (and so may replace)
    replaces: bool = False  # OUTPUT holds an earlier artifact
    _created: list[Path] = field(default_factory=list)  # parents of OUTPUT this export created

    @classmethod
    def check(cls, output: str, model_dir: Path | None, copied: Sequence[str]) -> OutputPlan:
        """Refuse an OUTPUT the export must not write into; `model_dir`: a checkpoint directory to keep apart."""
        if not output.strip():
            raise OutputError("OUTPUT is an empty string; give the directory to write the artifact into")
        dest = Path(output).expanduser().resolve()
        if dest.parent == dest:
            raise OutputError(f"OUTPUT {output} is the filesystem root; choose a new or empty directory")
        if model_dir is not None:
            _check_apart(output, dest, model_dir)
        plan = cls(given=output, dest=dest, copied=tuple(copied))
        plan.replaces = plan._holds_artifact()
        if plan.replaces:
            plan._old_files()  # refuse now, before any work, an earlier artifact whose files cannot be listed
        return plan

    def _holds_artifact(self) -> bool:
        """False for a new or empty OUTPUT, True for an earlier artifact; refuses anything else."""
        if self.dest.is_dir():
            try:
                empty = next(self.dest.iterdir(), None) is None
            except OSError as err:
                raise OutputError(f"cannot read OUTPUT {self.given}: {err.strerror}; choose a directory you can "
                                  "write to") from None
            if empty:
                return False
            if (self.dest / CONFIG_NAME).is_file():
                return True
            raise OutputError(f"OUTPUT {self.given} is not empty and is not an artifact (no {CONFIG_NAME}); "
                              "neuron-export never writes into such a directory. Choose a new or empty directory")
        if self.dest.exists():
            raise OutputError(f"OUTPUT {self.given} is a file, not a directory; choose a new or empty directory")
        return False

    def _old_files(self) -> list[Path]:
        """The earlier artifact's own files: neuron_config.json, what it lists, and the copied checkpoint files.
        Read as plain JSON, so an artifact of any schema version can be replaced; a listed path outside graphs/
        or weights/ (or through a symlinked directory) is refused, never deleted."""
        config = self.dest / CONFIG_NAME
        try:
            raw = json.loads(config.read_text())
            listed = [g["file"] for g in raw.get("graphs", {}).values()]
            listed += [f["path"] for f in raw.get("weights", {}).get("files", [])]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise OutputError(f"OUTPUT {self.given} holds a {CONFIG_NAME} that does not list its files ({err}); "
                              "neuron-export replaces only artifacts it can take apart. Remove the directory "
                              "yourself or choose a new one") from None
        for rel in listed:
            parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
            if len(parts) != 2 or parts[0] not in (GRAPHS_DIR, WEIGHTS_DIR) or parts[1] in ("..", "."):
                raise OutputError(f"OUTPUT {self.given}: its {CONFIG_NAME} lists {rel!r}, not a file directly in "
                                  f"{GRAPHS_DIR}/ or {WEIGHTS_DIR}/; not deleting it. Remove the directory yourself "
                                  "or choose a new one")
            if (self.dest / parts[0]).is_symlink():
                raise OutputError(f"OUTPUT {self.given}: {parts[0]}/ is a symbolic link; not deleting files through "
                                  "it. Remove the directory yourself or choose a new one")
        return [self.dest / rel for rel in (CONFIG_NAME, *listed, *self.copied)]  # neuron_config.json first

    # ---- staging -------------------------------------------------------------------------------
    def make_staging(self) -> Path:
        """A fresh hidden directory next to OUTPUT, on its filesystem; creates OUTPUT's missing parents."""
        parent = self.dest.parent
        self._created = [p for p in (parent, *parent.parents) if not p.exists() and not p.is_symlink()]
        staging = parent / f".{self.dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as err:
            self._remove_created()
            raise OutputError(f"cannot create OUTPUT {self.given}: {_why(parent, err)}; choose a directory you can "
                              "write to") from None
        return staging

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """The staging directory for the body of an export; removed, with what it holds, if the body fails."""
        staging = self.make_staging()
        try:
            yield staging
        except BaseException as err:  # Ctrl-C included: the staging directory is ours to remove
            self.discard(staging)
            if isinstance(err, USER_ERRORS):
                raise nothing_written(err, self.given) from err
            raise

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:  # deepest first; a directory someone else filled meanwhile stays
            try:
                p.rmdir()
            except OSError:
                break

    # ---- the last step -------------------------------------------------------------------------
    def install(self, staging: Path) -> None:
        """Move the validated artifact from `staging` to OUTPUT. A new OUTPUT is one rename. Into an existing
        directory, an earlier artifact's neuron_config.json goes first and the new one lands last, so OUTPUT is
        never a loadable mix of the two."""
        try:
            replaces = self._holds_artifact()  # again: OUTPUT may have changed while the graphs compiled
            old = self._old_files() if replaces else []
        except ExportError:
            self.discard(staging)
            raise
        existed = self.dest.exists()
        try:
            if not existed:
                staging.rename(self.dest)
                return
            # An existing directory stays (it may be a mount point, or have an owner and mode of its own):
            # the earlier artifact's files go, the new ones move in.
            for path in old:  # neuron_config.json first
                if path.is_file() or path.is_symlink():
                    path.unlink()
            for sub in (GRAPHS_DIR, WEIGHTS_DIR):
                if (self.dest / sub).is_dir() and next((self.dest / sub).iterdir(), None) is None:
                    (self.dest / sub).rmdir()
            _move_into(staging, self.dest)
        except OSError as err:
            self.discard(staging)
            if not existed:
                state = "nothing was written"
            elif replaces and (self.dest / CONFIG_NAME).is_file():
                state = "the earlier artifact is unchanged"  # removing its neuron_config.json, the first step, failed
            else:
                state = f"it holds no {CONFIG_NAME} now, so nothing loads it"
            raise OutputError(f"could not move the new artifact into OUTPUT {self.given} ({err}); {state}. "
                              "Fix the cause and export again") from None
        shutil.rmtree(staging, ignore_errors=True)  # empty now, unless a copy across filesystems left its source


def _check_apart(output: str, dest: Path, model_dir: Path) -> None:
    model = model_dir.resolve()
    if dest == model:
        where = "is the model directory"
    elif model in dest.parents:
        where = f"is inside the model directory {model_dir}"
    elif dest in model.parents:
        where = f"contains the model directory {model_dir}"
    else:
        return
    raise OutputError(f"OUTPUT {output} {where}; exporting there would mix the artifact with the checkpoint. "
                      "Choose an OUTPUT outside the checkpoint")


def _why(parent: Path, err: OSError) -> str:
    """The first existing ancestor when it is not a directory (the usual cause), else the OS's reason."""
    for p in (parent, *parent.parents):
        if p.exists():
            return f"{p} is a file, not a directory" if not p.is_dir() else f"{err.strerror} ({err.filename})"
    return f"{err.strerror} ({err.filename})"


def _move_into(src: Path, dst: Path) -> None:
    """Move src's entries into dst, merging into existing real directories; neuron_config.json last."""
    for child in sorted(src.iterdir(), key=lambda p: p.name == CONFIG_NAME):
        target = dst / child.name
        if child.is_dir() and target.is_dir() and not target.is_symlink():
            _move_into(child, target)
            child.rmdir()
        else:
            _move(child, target)


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        # OUTPUT is a mount point (a container volume, say), on another filesystem than the staging
        # directory beside it: copy, then rename within OUTPUT, so no file is ever seen half-written.
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
            if src.is_dir():
                shutil.rmtree(src)
            else:
                src.unlink()
        except BaseException:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            raise
