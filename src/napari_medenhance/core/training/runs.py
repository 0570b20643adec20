"""Run folders and run records: where a training run lives and what it wrote down.

A run folder is ``<user data>/runs/<name>`` (``$MEDENHANCE_RUNS_DIR`` overrides the parent;
never the working directory) and holds the loop's checkpoints and ``run.json``, the run record
(settings, data description, validations, sessions). They are kept apart from the training
code because more than fine-tuning needs them: the Train widget and the CLI name run folders
before any training starts, and saving a model reads the record back. The record and the
model card's markdown are written atomically (temporary file, then rename), so a crash never
leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import zoo

__all__ = ["RECORD", "RUNS_DIR_ENV", "read_record", "run_folder", "runs_dir", "write_record"]

#: Environment variable naming the folder that holds run folders.
RUNS_DIR_ENV = "MEDENHANCE_RUNS_DIR"
#: The run record inside a run folder.
RECORD = "run.json"
_RECORD_VERSION = 1


def runs_dir() -> Path:
    """Folder of the run folders (not created here): ``$MEDENHANCE_RUNS_DIR`` when set, else
    ``platformdirs.user_data_dir("napari-medenhance") / "runs"``, never the working directory."""
    env = os.environ.get(RUNS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medenhance", appauthor=False)) / "runs"


def run_folder(name: str, out_dir: str | os.PathLike | None = None) -> Path:
    """The run folder of run ``name``: ``out_dir`` when given, else ``runs_dir() / name``.

    Raises:
        ValueError: ``name`` is not usable as a folder name (the model-name rules apply).
    """
    if out_dir is not None:
        return Path(out_dir).expanduser().resolve()
    zoo._check_name(name)  # the same rules as model names: it becomes a folder name
    return runs_dir() / name


def read_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run record (``run.json``) of a run folder; ``{}`` when there is none."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable run record ({e}); delete the run folder to start "
                         "over") from e
    return record if isinstance(record, dict) else {}


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as the run folder's ``run.json``, atomically (a crash never leaves half
    a file); returns its path."""
    path = Path(run_dir) / RECORD
    _write_json(path, record)
    return path


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    # The record describes a run for people and cards; it is never turned back into objects,
    # so anything else (a feature network passed as a recipe option) is recorded by its repr.
    return str(value) if isinstance(value, Path) else repr(value)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

