"""The model registry: shipped weights and the user's own models, by name or by path.

Two folders hold registered models, one ``NAME.safetensors`` file each (the file's stem is the
model's name), with optional companions ``NAME.json`` (a model card as JSON) and ``NAME.md``
(a human-readable card):

* **shipped** — ``napari_medenhance/models/`` inside the installed package. It may be empty or
  absent (no weights ship yet); then no shipped models are listed.
* **user** — :func:`user_models_dir`: ``platformdirs.user_data_dir("napari-medenhance")/models``,
  or ``$MEDENHANCE_MODELS_DIR`` when set. Models saved there with :func:`save_user_model` are
  found again in every later session.

On a name clash the shipped model wins (a name such as ``dran`` always means the published
weights) and :func:`save_user_model` refuses shipped names.

Listing reads file headers only (never tensors), and a file that cannot be read is skipped and
logged, so a stray or broken file can never break a model picker; asking for it by name or path
raises :class:`~napari_medenhance.core.weights.WeightsError` saying why.

Header metadata convention (``save_weights(..., meta=...)``): ``task`` (``"denoise"``,
``"enhance"`` or ``"sr"``), ``name``, ``scale`` (default: the factor the architecture's
config builds, via its class's ``scale_from_config``, else 1; a header that disagrees with the
config is refused), optional ``channels``, ``pad_multiple`` and ``input_percentiles`` (``[2,
98]``: the model was trained on images contrast-stretched by those percentiles, which the
engine then applies, :func:`.runtime.engine_kwargs`); every other key goes into
:attr:`ModelInfo.card`. A file whose header says
``"kind": "feature-extractor"`` (the VGG16 weights of the perceptual losses, which ship in the
same folder) is not a model: listings skip it silently and asking for it says what it is.

How a registered model is run by the engine (its value range, padding, scale, stretched input)
is :mod:`.runtime`'s job.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import tasks
from .engine import resolve_device
from .nets import ARCHITECTURES, build
from .weights import WeightsError, load_into, read_header

__all__ = [
    "MODELS_DIR_ENV",
    "TASKS",
    "ModelInfo",
    "cached",
    "clear_cache",
    "get_model",
    "list_models",
    "load_model",
    "network_loads",
    "on_models_changed",
    "save_user_model",
    "shipped_models_dir",
    "user_models_dir",
]

log = logging.getLogger(__name__)

#: The task names (the task table's, :data:`napari_medenhance.core.tasks.TASKS`).
TASKS = tuple(tasks.TASKS)
MODELS_DIR_ENV = "MEDENHANCE_MODELS_DIR"
SUFFIX = ".safetensors"
# The name each task's public function uses by default (the task table's); named in "not
# bundled yet" messages.
DEFAULT_MODEL = {t.name: t.default_model_name() for t in tasks.TASKS.values()}
# Header 'kind's of files that share the models folder but are not restoration models.
_NOT_MODELS = {"feature-extractor": "a frozen feature network used by the training losses"}
# Keys the registry consumes; the rest of the header metadata is the model card.
_CONSUMED = ("task", "name", "scale", "channels")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Windows cannot create files with these stems; a model saved on Linux must still copy there.
_RESERVED_STEMS = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one weights file, from its header alone.

    Attributes:
        name: registered name (the file stem) or, for a file given by path, the header's
            ``name`` (else the stem).
        task: ``"denoise"``, ``"enhance"`` or ``"sr"``.
        arch: architecture key of :mod:`napari_medenhance.core.nets` (e.g. ``"dran"``).
        config: constructor keywords that rebuild the network.
        scale: integer upscaling factor of Y and X (1 unless ``task == "sr"``).
        channels: input channels the network takes (3 or 1; grayscale is replicated to 3).
        source: ``"shipped"``, ``"user"`` or ``"file"`` (given by path).
        path: the ``.safetensors`` file.
        card: the remaining header metadata, merged with ``NAME.json`` when present, plus
            ``card_file`` (path of ``NAME.md``) when that exists.
    """

    name: str
    task: str
    arch: str
    config: dict = field(hash=False)
    scale: int
    channels: int
    source: str
    path: Path
    card: dict = field(hash=False, compare=False)

    def __repr__(self) -> str:
        # One line: the card (validation tables, training history) is in ``card``, not here.
        extra = f", scale={self.scale}" if self.scale != 1 else ""
        return (f"ModelInfo(name={self.name!r}, task={self.task!r}, arch={self.arch!r}{extra}, "
                f"source={self.source!r}, path={str(self.path)!r})")


# --------------------------------------------------------------------------------------------
# folders


def shipped_models_dir() -> Path:
    """``napari_medenhance/models/`` of the installed package (may not exist)."""
    from importlib.resources import files

    # A regular (or editable) install gives a real folder; zipped installs are not supported.
    return Path(str(files("napari_medenhance").joinpath("models")))


def user_models_dir() -> Path:
    """Folder of the user's own models (not created here).

    ``$MEDENHANCE_MODELS_DIR`` when set and non-empty (made absolute), else
    ``platformdirs.user_data_dir("napari-medenhance") / "models"`` — never the working
    directory, so what is listed does not depend on where napari was started.
    """
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medenhance", appauthor=False)) / "models"


def _folders() -> list[tuple[str, Path]]:
    """(source, folder) in priority order: shipped names win over user names."""
    return [("shipped", shipped_models_dir()), ("user", user_models_dir())]


# --------------------------------------------------------------------------------------------
# headers -> ModelInfo


def _default_channels(arch: str) -> int:
    ctor = ARCHITECTURES.get(arch.lower())
    try:
        param = inspect.signature(ctor).parameters.get("in_channels") if ctor else None
    except (TypeError, ValueError):
        param = None
    if param is not None and isinstance(param.default, int):
        return param.default
    return 3


def _config_scale(arch: str, config: dict) -> int:
    """The upscaling factor ``config`` builds: an SR class's ``scale_from_config``, else 1."""
    fn = getattr(ARCHITECTURES.get(arch.lower()), "scale_from_config", None)
    return int(fn(config)) if callable(fn) else 1


def _read_card(weights: Path) -> dict[str, Any]:
    card: dict[str, Any] = {}
    js = weights.with_suffix(".json")
    if js.is_file():
        try:
            loaded = json.loads(js.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                card.update(loaded)
            else:
                log.warning("%s: model card is not a JSON object; ignored", js)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable model card (%s); ignored", js, e)
    md = weights.with_suffix(".md")
    if md.is_file():
        card["card_file"] = str(md)
    return card


class _NotAModel(WeightsError):
    """A valid weights file that is not a restoration model (e.g. the VGG16 loss features)."""


def _info(path: Path, source: str) -> ModelInfo:
    """ModelInfo of one weights file; raises WeightsError when it is not a usable model."""
    header = read_header(path)
    kind = header["meta"].get("kind")
    if kind in _NOT_MODELS:
        raise _NotAModel(
            f"{path}: not a restoration model but {_NOT_MODELS[kind]} (kind {kind!r}); pick a "
            "denoise, enhance or sr model (`medenhance models` lists them)"
        )
    arch = str(header["arch"]).lower()
    if arch not in ARCHITECTURES:
        raise WeightsError(
            f"{path}: weights for architecture {header['arch']!r}, which this version of "
            f"napari-medenhance does not know (known: {', '.join(sorted(ARCHITECTURES))}); "
            "update napari-medenhance or use weights made for a known architecture"
        )
    meta = dict(header["meta"])
    # Headers written before the 'task' key existed still say what they are through their arch.
    task = meta.get("task") or tasks.task_of(arch)
    if task not in TASKS:
        raise WeightsError(
            f"{path}: the header's task is {task!r}; expected one of {', '.join(TASKS)}. "
            "Re-save the weights with save_weights(..., meta={'task': ...})"
        )
    config = header["config"]
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: the 'config' metadata is not a JSON object; re-save")
    try:
        net_scale = _config_scale(arch, config)
        scale = int(meta.get("scale", net_scale))
        channels = int(meta.get("channels") or config.get("in_channels") or _default_channels(arch))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: bad 'scale' or 'channels' in the header ({e}); re-save") from e
    if scale < 1:
        raise WeightsError(f"{path}: scale must be a positive integer; the header says {scale}")
    if scale != net_scale:
        raise WeightsError(
            f"{path}: the header says scale {scale} but its {arch!r} config builds a ×{net_scale} "
            "network; re-save the weights with a matching meta['scale'] (or none)"
        )
    if channels not in (1, 3):
        raise WeightsError(f"{path}: networks must take 1 or 3 channels; this one takes {channels}")
    if source == "file":
        name = str(meta.get("name") or path.stem)
    else:
        name = path.stem
    card = {k: v for k, v in meta.items() if k not in _CONSUMED}
    card.update(_read_card(path))
    return ModelInfo(
        name=name, task=task, arch=arch, config=config, scale=scale, channels=channels,
        source=source, path=path, card=card,
    )


# Each broken file is reported once per version (path, mtime), not on every picker refresh.
_warned: set[tuple[str, int]] = set()


def _warn_once(path: Path, message: str) -> None:
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = (str(path), 0)
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def _scan(folder: Path, source: str) -> list[ModelInfo]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix in _PICKLE_SUFFIXES:
            _warn_once(path, f"{path}: ignored; pickled checkpoints are never loaded (they can "
                             "execute code). Convert it to .safetensors with save_weights().")
            continue
        if suffix != SUFFIX or path.name.startswith("."):
            continue  # cards, temporary files of an interrupted save, anything else
        try:
            found.append(_info(path, source))
        except _NotAModel:
            continue  # ships beside the models on purpose; nothing to report
        except (WeightsError, OSError) as e:
            _warn_once(path, f"skipping model file: {e}")
    return found


def list_models(task: str | None = None) -> list[ModelInfo]:
    """Every usable registered model (shipped first, then user), optionally of one task.

    Reads headers only; unreadable, corrupt, pickled or foreign files are skipped and logged
    (once per file version). User models whose name a shipped model already has are skipped.

    Raises:
        ValueError: ``task`` is not None and not one of :data:`TASKS`.
    """
    _check_task(task)
    seen: set[str] = set()
    out: list[ModelInfo] = []
    for source, folder in _folders():
        for info in _scan(folder, source):
            if info.name in seen:
                _warn_once(info.path, f"{info.path}: a shipped model is also called "
                                      f"{info.name!r}; the shipped one is used")
                continue
            seen.add(info.name)
            if task is None or info.task == task:
                out.append(info)
    return out


def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


# --------------------------------------------------------------------------------------------
# lookup


def _looks_like_path(x: str | os.PathLike) -> bool:
    if isinstance(x, os.PathLike):
        return True
    s = str(x)
    seps = [os.sep] + ([os.altsep] if os.altsep else []) + ["/"]
    return s.lower().endswith(SUFFIX) or any(sep in s for sep in seps)


def _how_to_add(task: str | None = None) -> str:
    train = f"--task {task}" if task else f"--task {'|'.join(TASKS)}"
    return (
        f"add one with `medenhance models --add FILE.safetensors --name NAME` (it is copied to "
        f"{user_models_dir()}), train one on your images with `medenhance train {train} "
        f"--data IMAGES --from scratch --name NAME` (or the Train widget), or pass the path of a "
        f".safetensors weights file"
    )


def default_model_name(task: str, scale: int | None = None) -> str:
    """The shipped model a task uses when none is named (the task table's): ``dran``,
    ``dpe``, and for ``"sr"`` the one for ``scale`` (``msgan-x2`` for 2; None: the task's
    default, ×4)."""
    return tasks.default_model_name(task, scale)


def _shipped_default_for(name: str, task: str | None) -> list[str]:
    """The shipped default(s) a failed lookup of ``name`` should say are missing: ``name``
    itself when it is one (``msgan-x2`` is the ×2 default, not ``msgan-x4``), else the task's."""
    owner = next((t.name for t in tasks.TASKS.values() if name in t.default_models), None)
    if owner is not None and (task is None or owner == task):
        return [name]
    return [default_model_name(task)] if task else []


def _unknown(name: str, task: str | None) -> ValueError:
    what = f"{task} model" if task else "model"
    available = [m.name for m in list_models(task)]
    listing = (
        f"available {what}s: {', '.join(available)}" if available
        else f"no {what}s are installed"
    )
    msg = f"unknown {what} {name!r}; {listing}"
    shipped = {m.name for m in _scan(shipped_models_dir(), "shipped")}
    missing = [d for d in _shipped_default_for(name, task) if d not in shipped]
    if missing:
        names = " / ".join(repr(d) for d in missing)
        msg += f". The shipped {names} weights are not bundled yet"
    return ValueError(f"{msg}. To use your own, {_how_to_add(task)}.")


def get_model(name_or_path: str | os.PathLike, task: str | None = None) -> ModelInfo:
    """Describe a registered model (by name) or a weights file (by path).

    A ``Path``, or a string containing a path separator or ending in ``.safetensors``, is a
    path; other strings are names, or paths when no model has that name but the file exists.

    Raises:
        ValueError: unknown name (the message lists the available names for ``task``), the
            model is for another task, or ``task`` itself is unknown.
        WeightsError: the named or given file is missing, pickled, corrupt or foreign
            (a subclass of ValueError).
    """
    _check_task(task)
    if _looks_like_path(name_or_path):
        info = _info(Path(name_or_path).expanduser(), "file")
    else:
        name = str(name_or_path)
        info = None
        if _NAME_RE.match(name):
            for source, folder in _folders():
                candidate = folder / f"{name}{SUFFIX}"
                if candidate.is_file():
                    info = _info(candidate, source)
                    break
        if info is None:
            if Path(name).is_file():
                info = _info(Path(name), "file")
            else:
                raise _unknown(name, task)
    if task is not None and info.task != task:
        others = [m.name for m in list_models(task)]
        raise ValueError(
            f"{info.name!r} ({info.path}) is a {info.task!r} model, not a {task!r} model; "
            f"{task} models: {', '.join(others) if others else 'none installed'}"
        )
    return info


# --------------------------------------------------------------------------------------------
# loading


_CACHE_SIZE = 4
# Networks (load_model) and the engine-ready models made from them (load_runnable), keyed by
# file, modification time, size and device: the one model cache of the process.
_cache: OrderedDict[tuple, Any] = OrderedDict()
_cache_lock = threading.Lock()
_builds = 0


def clear_cache() -> None:
    """Forget the loaded networks (the next :func:`load_model` reads the file again)."""
    with _cache_lock:
        _cache.clear()


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    task: str | None = None,
) -> tuple[torch.nn.Module, ModelInfo]:
    """Build the network of a model, load its weights (strictly) and put it in eval mode.

    Networks are cached per (file, modification time, size, device), so pickers and repeated
    runs do not reload; a file replaced on disk is loaded afresh. The returned module is
    shared: use it for inference only (through :func:`.runtime.inference_module`).

    Raises:
        ValueError / WeightsError: as :func:`get_model`, or when the weights do not fit the
            architecture and config in their own header; device errors as
            :func:`~napari_medenhance.core.engine.resolve_device`.
    """
    info = get_model(name_or_path, task)
    dev = resolve_device(device)
    path = info.path.resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, str(dev))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit[0], info
    try:
        net = build(info.arch, **info.config)
    except (TypeError, ValueError, KeyError) as e:
        raise WeightsError(
            f"{info.path}: its config {info.config} does not build a {info.arch!r} network ({e}); "
            "re-save the weights with the constructor arguments they were trained with"
        ) from e
    load_into(net, info.path, strict=True, expected_arch=info.arch)
    net.to(dev).eval()
    global _builds
    with _cache_lock:
        _builds += 1
        _put(key, (net, info))
    return net, info


def _put(key: tuple, value: Any) -> None:
    _cache[key] = value
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


def cached(info: ModelInfo, device: torch.device, kind: str, make: Callable[[], Any]) -> Any:
    """``make()``, cached with the networks under (the model's file, its modification time and
    size, ``device``, ``kind``): what is derived from a loaded network (the engine-ready model
    of :mod:`.runtime`) lives and is evicted with it, in the process's one model cache."""
    path = info.path.resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, str(device), kind)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    value = make()
    with _cache_lock:
        _put(key, value)
    return value


def network_loads() -> int:
    """How many networks this process has built from weights files (cache misses)."""
    return _builds


# --------------------------------------------------------------------------------------------
# change notification

# Each entry returns its callback, or None once a weakly held bound method's object is gone.
_listeners: list[Callable[[], Callable[[], None] | None]] = []
_listeners_lock = threading.Lock()


def on_models_changed(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` whenever :func:`save_user_model` has added or replaced a model.

    For model pickers, so a model saved by the Train widget (or a script in the napari console)
    appears at once. The callback runs in the saving thread: GUI code should only emit a Qt
    signal there. Bound methods are held weakly (a closed widget is not kept alive); a callback
    that raises is logged and dropped. Other callables are held until unsubscribed. Returns a
    function that unsubscribes.
    """
    ref: Callable[[], Callable[[], None] | None] = (
        weakref.WeakMethod(callback) if inspect.ismethod(callback)
        else (lambda cb=callback: cb)  # plain functions and lambdas: held (else they would vanish)
    )
    with _listeners_lock:
        _listeners.append(ref)

    def unsubscribe() -> None:
        with _listeners_lock:
            if ref in _listeners:
                _listeners.remove(ref)

    return unsubscribe


def _notify_models_changed() -> None:
    with _listeners_lock:
        refs = list(_listeners)
    for ref in refs:
        callback = ref()
        try:
            if callback is None:
                raise ReferenceError("listener was garbage-collected")
            callback()
        except Exception as e:  # noqa: BLE001 - a broken listener must not fail a save
            if not isinstance(e, ReferenceError):
                log.debug("models-changed listener %r failed (%s); dropped", callback, e)
            with _listeners_lock:
                if ref in _listeners:
                    _listeners.remove(ref)


# --------------------------------------------------------------------------------------------
# saving


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes a file name)"
        )
    if name.lower().endswith((SUFFIX, ".json", ".md")):
        raise ValueError(f"invalid model name {name!r}: give the name without a file extension")
    if name.split(".")[0].lower() in _RESERVED_STEMS:
        raise ValueError(f"invalid model name {name!r}: reserved as a device name on Windows")


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` beside ``dst`` and rename it over ``dst``: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_user_model(
    weights_path: str | os.PathLike,
    name: str,
    *,
    card: dict | None = None,
    overwrite: bool = False,
) -> ModelInfo:
    """Register a weights file as the user's model ``name`` (copied, so later sessions find it).

    Writes ``user_models_dir()/NAME.safetensors`` and, with ``card``, ``NAME.json``.

    Raises:
        ValueError: invalid name, a shipped model's name, an existing user model of that name
            (unless ``overwrite``), or a card that is not JSON-serialisable.
        WeightsError: the file is not a usable napari-medenhance weights file.
    """
    _check_name(name)
    src = Path(weights_path).expanduser()
    _info(src, "file")  # validate (header, arch, task) before touching the user folder
    if (shipped_models_dir() / f"{name}{SUFFIX}").is_file():
        raise ValueError(f"{name!r} is the name of a shipped model; pick another name")
    card_text = None
    if card is not None:
        try:
            card_text = json.dumps(dict(card), indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"card must be a JSON-serialisable dict: {e}") from e
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{name}{SUFFIX}"
    if dst.exists() and not overwrite:
        raise ValueError(
            f"a user model called {name!r} already exists ({dst}); pass overwrite=True to "
            "replace it or pick another name"
        )
    _copy_atomic(src, dst)
    card_path = dst.with_suffix(".json")
    if card_text is not None:
        fd, tmp = tempfile.mkstemp(prefix=f".{card_path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(card_text)
        os.replace(tmp, card_path)
    elif card_path.exists():
        card_path.unlink()  # a card left from replaced weights would describe the wrong model
    info = _info(dst, "user")
    _notify_models_changed()
    return info
