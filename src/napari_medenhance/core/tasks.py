"""The task table: every fact about a restoration task and the networks that serve it, once.

:data:`TASKS` holds one :class:`Task` per task (``denoise``, ``enhance``, ``sr``): its default
model name(s), the modes it can be trained in, its one-line help, the output scales of its
shipped models and the recipe a new network of the task is trained with. The registry of
architectures (:func:`architectures`, :func:`task_of`) says which network serves which task and
which recipe trains it. The public API, the batch, the CLI, fine-tuning, the model registry
(:mod:`.zoo`), the widgets and the training scripts read these instead of keeping copies.

A new network for an existing task is one network file plus one entry: a built-in one is a
line in :data:`_BUILTIN` below (its constructor as ``"module:attr"``; it lands in
:data:`napari_medenhance.core.nets.ARCHITECTURES` too), a user's own is one call::

    register_architecture("tiny", "denoise", TinyDenoiser)   # trained by DenoiseRecipe(arch="tiny")

after which ``finetune(..., arch="tiny")`` trains it, the saved model is listed and
``denoise(image, model=...)`` / ``medenhance denoise --model ...`` run it.

This module imports nothing heavy (no torch, no training code): the CLI builds its ``--help``
from it. Constructors and recipes given as ``"module:attr"`` strings are imported when used.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODES",
    "TASKS",
    "Architecture",
    "Task",
    "architecture",
    "architectures",
    "default_model_name",
    "recipe_for",
    "register_architecture",
    "resolve",
    "task_of",
    "unregister_architecture",
]

#: Every way a model can be trained (:mod:`.training.finetune`); each task allows some.
MODES: tuple[str, ...] = ("simulated", "paired", "unpaired")

_RECIPES = "napari_medenhance.core.training.recipes"
_NETS = "napari_medenhance.core.nets"


@dataclass(frozen=True)
class Task:
    """One restoration task.

    Attributes:
        name: the task's name in the API, the CLI, model headers and run records.
        default_model: the model used when none is named; ``{scale}`` in it is replaced by the
            upscaling factor asked for (``"msgan-x{scale}"``).
        modes: the modes the task can be trained in (of :data:`MODES`).
        help: one line saying what the task does (the CLI's sub-command help).
        default_scale: the output scale of the default model when none is asked for (1: the
            task keeps the image size).
        scales: the output scales the task's shipped models give (one default model each).
        recipe: ``"module:Class"`` of the recipe a new architecture of the task is trained
            with when it brings none (called with ``arch=``); None: it must bring its own.
    """

    name: str
    default_model: str
    modes: tuple[str, ...]
    help: str
    default_scale: int = 1
    scales: tuple[int, ...] = (1,)
    recipe: str | None = None

    def default_model_name(self, scale: int | None = None) -> str:
        """The default model for ``scale`` (None: :attr:`default_scale`)."""
        return self.default_model.format(scale=int(self.default_scale if scale is None else scale))

    @property
    def default_models(self) -> tuple[str, ...]:
        """The default model of every shipped scale (``msgan-x2``, ``msgan-x4``)."""
        return tuple(dict.fromkeys(self.default_model_name(s) for s in self.scales))

    @property
    def architectures(self) -> tuple[str, ...]:
        """The registered architectures that serve the task, built-ins first."""
        return architectures(self.name)


#: The tasks, in the order the CLI and the widgets offer them.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("denoise", "dran", ("simulated", "paired"),
             "denoise every 2-D plane of an image, or of every image in a folder",
             recipe=f"{_RECIPES}.denoise:DenoiseRecipe"),
        Task("enhance", "dpe", ("simulated", "paired", "unpaired"),
             "enhance every 2-D plane of an image, or of every image in a folder (DPE)",
             recipe=f"{_RECIPES}.enhance:EnhanceRecipe"),
        Task("sr", "msgan-x{scale}", ("simulated", "paired"),
             "super-resolve an image (×2 or ×4), regions of interest of it, or every image in "
             "a folder (MS-GAN)", default_scale=4, scales=(2, 4),
             recipe=f"{_RECIPES}.sr:SRRecipe"),
    )
}


@dataclass(frozen=True)
class Architecture:
    """A network that serves a task.

    Attributes:
        name: the key in :data:`napari_medenhance.core.nets.ARCHITECTURES` and in the ``arch``
            of every weights file of it.
        task: the :data:`TASKS` name its models are filed under (headers written before the
            ``task`` key existed are read through it).
        constructor: the ``nn.Module`` class or factory taking the config as keywords, or its
            ``"module:attr"``.
        recipe: what trains it: a callable ``(pool, *, config=..., **options) -> Recipe`` or
            its ``"module:attr"``; None: the task's :attr:`Task.recipe` with ``arch=name``.
        builtin: shipped with the package (cannot be unregistered).
    """

    name: str
    task: str
    constructor: Callable[..., Any] | str
    recipe: Callable[..., Any] | str | None = None
    builtin: bool = False


#: The package's own networks. A new one: its file in core/nets and one line here.
_BUILTIN = (
    Architecture("dran", "denoise", f"{_NETS}.dran:DRAN",
                 f"{_RECIPES}.denoise:DenoiseRecipe", builtin=True),
    Architecture("dpe", "enhance", f"{_NETS}.dpe:DPE",
                 f"{_RECIPES}.enhance:EnhanceRecipe", builtin=True),
    # One recipe for both SR networks: its ``mode`` (the architecture's name) picks which.
    Architecture("msgan", "sr", f"{_NETS}.srresnet:MSGANGenerator",
                 f"{_RECIPES}.sr:SRRecipe", builtin=True),
    Architecture("srresnet", "sr", f"{_NETS}.srresnet:SRResNet",
                 f"{_RECIPES}.sr:SRRecipe", builtin=True),
)

_registry: dict[str, Architecture] = {a.name: a for a in _BUILTIN}
_lock = threading.Lock()


def resolve(ref: Any) -> Any:
    """``ref`` itself, or the object a ``"module:attr"`` string names (imported now)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _check_task(task: str) -> Task:
    spec = TASKS.get(task)
    if spec is None:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return spec


def architecture(name: str) -> Architecture | None:
    """The registry entry of architecture ``name`` (case-insensitive), or None."""
    return _registry.get(str(name).lower())


def architectures(task: str | None = None) -> tuple[str, ...]:
    """Names of the registered architectures (of ``task``), built-ins first, then in the
    order they were registered."""
    return tuple(a.name for a in list(_registry.values()) if task is None or a.task == task)


def task_of(arch: str) -> str | None:
    """The task architecture ``arch`` serves, or None for an unknown one (or one that serves
    no task, such as a discriminator)."""
    a = architecture(arch)
    return None if a is None else a.task


def default_model_name(task: str, scale: int | None = None) -> str:
    """The model ``task`` uses when none is named (for ``scale``; None: the task's default).

    Raises:
        KeyError: unknown task.
    """
    return TASKS[task].default_model_name(scale)


def recipe_for(arch: str) -> Callable[..., Any]:
    """The callable ``(pool, *, config=..., **options) -> Recipe`` that trains ``arch``.

    Raises:
        ValueError: unknown architecture, or one nothing can train.
    """
    a = architecture(arch)
    if a is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(architectures())}")
    if a.recipe is not None:
        return resolve(a.recipe)
    task = TASKS[a.task]
    if task.recipe is None:
        raise ValueError(
            f"no recipe trains {a.name!r} networks: a new {a.task} architecture needs its own "
            "(register_architecture(..., recipe=...))"
        )
    return functools.partial(resolve(task.recipe), arch=a.name)


def register_architecture(
    arch: str,
    task: str,
    constructor: Callable[..., Any] | str,
    recipe: Callable[..., Any] | str | None = None,
    *,
    replace: bool = False,
) -> Architecture:
    """Make ``arch`` a network of ``task``: buildable, loadable, listable, runnable, trainable.

    Adds it to :data:`napari_medenhance.core.nets.ARCHITECTURES` (so weights files with
    ``arch`` load and the model registry lists them under ``task``), to the architectures
    fine-tuning starts from, and says what trains it.

    Args:
        arch: a new architecture name (lower case letters, digits, ``_`` and ``-``).
        task: a :data:`TASKS` name.
        constructor: the ``nn.Module`` class (or factory) taking the config as keywords, or
            its ``"module:attr"``. What it may declare (``value_range``, ``pad_multiple``, a
            ``denoise`` method...) is described in :mod:`.runtime`.
        recipe: a callable ``(pool, *, config=..., **options) -> Recipe`` (or its
            ``"module:attr"``); None: the task's own recipe with ``arch=arch`` (denoise:
            :class:`~.training.recipes.DenoiseRecipe`, which trains residual-noise networks:
            ``forward`` predicts the noise and a ``denoise(x)`` method returns the clean image;
            enhance: :class:`~.training.recipes.EnhanceRecipe`, image in, image out; SR:
            :class:`~.training.recipes.SRRecipe`, one ×4 output trained with MSE, the class
            saying its factor with ``scale_from_config``).
        replace: allow re-registering a name that is not built in.

    Returns:
        The registry entry.

    Raises:
        ValueError: unknown task, a bad or taken name (a built-in one always).
    """
    from . import nets  # torch: only once a network is registered

    _check_task(task)
    name = str(arch)
    if not name or name != name.lower() or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"invalid architecture name {arch!r}: use lower-case letters, digits, "
                         "'_' and '-'")
    entry = Architecture(name, task, constructor, recipe)
    with _lock:
        old = _registry.get(name)
        if (old is not None and (old.builtin or not replace)) or (
                old is None and name in nets.ARCHITECTURES):  # a built-in helper (discriminator)
            hint = " or pass replace=True" if old is not None and not old.builtin else ""
            raise ValueError(f"architecture {name!r} is already registered; pick another "
                             f"name{hint}")
        nets.ARCHITECTURES[name] = resolve(constructor)
        _registry[name] = entry
    return entry


def unregister_architecture(arch: str) -> None:
    """Undo :func:`register_architecture` (nothing happens for a name not registered).

    Raises:
        ValueError: ``arch`` is built in.
    """
    from . import nets

    name = str(arch).lower()
    with _lock:
        old = _registry.get(name)
        if old is None:
            return
        if old.builtin:
            raise ValueError(f"{name!r} is built in; it cannot be unregistered")
        del _registry[name]
        nets.ARCHITECTURES.pop(name, None)
