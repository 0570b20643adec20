"""Resumable training checkpoints as safetensors: no pickle anywhere.

A checkpoint is a weights file of :mod:`napari_medenhance.core.weights` (same header, same atomic
write, same validation on reading) whose tensors carry prefixed names and whose metadata says
``"kind": "training-checkpoint"``:

================================  ==========================================================
tensor                            what
================================  ==========================================================
``model/<name>``                  the network's ``state_dict()`` (parameters and buffers)
``optim/<param index>/<key>``     every tensor of the optimizer's per-parameter state
                                  (Adam: ``step``, ``exp_avg``, ``exp_avg_sq``)
``rng/torch``                     ``torch.get_rng_state()`` (uint8)
``rng/cuda/<i>``                  ``torch.cuda.get_rng_state_all()`` when CUDA was in use
``extra/<m>/model/<name>``        state of a recipe's extra module ``m`` (e.g. the
                                  discriminator of a GAN recipe), only when it has one
``extra/<m>/optim/<i>/<key>``     that module's optimizer state, as ``optim/`` above
``average/<name>``                the running average of the network's parameters, only
                                  when the run averages its weights (``train(average=...)``)
================================  ==========================================================

and the metadata (JSON) ``task``, ``recipe``, ``step``, ``total``, ``optimizer``
(``param_groups`` plus any non-tensor per-parameter state), ``schedule``, ``numpy_rng`` (the
numpy ``bit_generator.state``, whose 128-bit integers JSON keeps exactly) and ``loop`` (best
metric so far, running losses...). ``arch`` and ``config`` are the weights header's own. A
recipe with extra modules adds ``extras`` (per module: its optimizer's ``param_groups`` and
non-tensor state); a recipe with an ``objective`` (its loss switches) adds ``objective``.
Checkpoints without these keys, such as every one written before they existed, have no extra
modules and no objective: they load exactly as before.

Python floats go through JSON as their shortest exact repr, so learning rates, betas and so on
come back bit for bit, and together with the tensors and RNG states a resumed run continues
exactly where the saved one stopped.

A checkpoint that cannot be read is refused with :class:`CheckpointError` (a
:class:`~napari_medenhance.core.weights.WeightsError`) naming the file and what to do: silently
starting afresh would throw away training the user believes they still have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..weights import WeightsError, load_state_dict, save_weights

__all__ = [
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "check_identity",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_KIND = "training-checkpoint"
CHECKPOINT_VERSION = "1"


class CheckpointError(WeightsError):
    """A training checkpoint is unreadable, foreign, or made for another recipe / network."""


@dataclass
class Checkpoint:
    """The content of a training checkpoint, ready to restore.

    ``model``: state dict (CPU tensors); ``optimizer``: a ``torch.optim`` state dict;
    ``identity``: ``{"recipe", "task", "arch", "config"}``; ``numpy_rng``: a numpy
    ``bit_generator.state``; ``torch_rng``: uint8 tensor; ``cuda_rng``: one uint8 tensor per
    CUDA device (empty when saved without CUDA); ``schedule`` and ``loop``: JSON dicts.
    """

    path: Path
    step: int
    total: int
    identity: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    loop: dict[str, Any] = field(default_factory=dict)
    #: ``{name: {"model": state dict, "optimizer": optimizer state dict}}`` of the recipe's
    #: extra modules (empty for single-network recipes).
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``{parameter name: tensor}``, the running average of the network's parameters (empty
    #: when the run did not average its weights).
    average: dict[str, torch.Tensor] = field(default_factory=dict)


def _split_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors under ``optim/...``, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if "/" in str(key):
                raise ValueError(f"optimizer state key {key!r} contains '/'")
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{int(pid)}/{key}"] = value
            else:
                scalars.setdefault(str(int(pid)), {})[key] = value
    groups = []
    for g in state["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "scalars": scalars, "ids": sorted(
        int(p) for p in state["state"]
    )}


def _join_optimizer(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = t
    for pid, extra in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        # torch's own state dicts hold betas as a tuple; keep the exact same structure.
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    total: int,
    identity: Mapping[str, Any],
    schedule: Mapping[str, Any],
    numpy_rng: Mapping[str, Any],
    loop: Mapping[str, Any] | None = None,
    extras: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]] | None = None,
    average: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (temp file + rename, see ``save_weights``).

    Args:
        path: destination, e.g. ``out_dir / "last.safetensors"``; the previous file there is
            replaced only once the new one is complete, so a crash mid-write leaves it intact.
        net, optimizer: the model and its optimizer (any device; saved as CPU tensors).
        step: training steps completed; total: steps planned.
        identity: ``{"recipe", "task", "arch", "config"}`` (see :func:`check_identity`).
        schedule, numpy_rng, loop: JSON-serialisable state of the LR schedule, the numpy bit
            generator and the loop.
        extras: ``{name: (module, optimizer)}``, a recipe's further trained modules (e.g. a
            discriminator); names must not contain '/'. Identity keys beyond the four above
            (``objective``) are stored too.

    Returns:
        The path written.
    """
    tensors: dict[str, torch.Tensor] = {
        f"model/{k}": v for k, v in net.state_dict().items()
    }
    opt_tensors, opt_info = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    extra_info: dict[str, Any] = {}
    for name, (module, opt) in (extras or {}).items():
        if not name or "/" in name:
            raise ValueError(f"extra module name {name!r} must be non-empty and contain no '/'")
        tensors.update({f"extra/{name}/model/{k}": v for k, v in module.state_dict().items()})
        t, info = _split_optimizer(opt.state_dict())
        tensors.update({f"extra/{name}/{k}": v for k, v in t.items()})
        extra_info[name] = info
    tensors.update({f"average/{k}": v for k, v in (average or {}).items()})
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {
        "kind": CHECKPOINT_KIND,
        "checkpoint_version": CHECKPOINT_VERSION,
        "task": identity["task"],
        "recipe": identity["recipe"],
        "step": int(step),
        "total": int(total),
        "optimizer": opt_info,
        "schedule": dict(schedule),
        "numpy_rng": dict(numpy_rng),
        "loop": dict(loop or {}),
    }
    # Written only when present, so single-network checkpoints keep their exact old layout.
    if extra_info:
        meta["extras"] = extra_info
    if identity.get("objective") is not None:
        meta["objective"] = identity["objective"]
    return save_weights(
        path, tensors, arch=identity["arch"], config=identity["config"], meta=meta
    )


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: cannot resume training from this checkpoint: {problem}. It was left as it "
        "is. To start afresh instead, move or delete it, or train with resume=False (the "
        "file is then replaced at the first checkpoint)."
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (CPU tensors; nothing is executed).

    Raises:
        CheckpointError: missing, truncated or corrupt file; a pickle; a plain weights file or
            another kind of safetensors file; an unknown checkpoint version.
    """
    path = Path(path)
    try:
        tensors, header = load_state_dict(path, dtype=None)
    except WeightsError as e:
        raise _refuse(path, str(e)) from e
    meta = header["meta"]
    if meta.get("kind") != CHECKPOINT_KIND:
        raise _refuse(
            path,
            "it is a weights file, not a training checkpoint (no optimizer or RNG state); "
            "to start training from these weights pass it as init_weights",
        )
    if meta.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise _refuse(path, f"unknown checkpoint version {meta.get('checkpoint_version')!r}")
    try:
        model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        optim_t = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        cuda = sorted(
            (int(k.rsplit("/", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng/cuda/")
        )
        extras: dict[str, dict[str, Any]] = {}
        for name, info in dict(meta.get("extras") or {}).items():
            prefix = f"extra/{name}/"
            extras[name] = {
                "model": {k[len(prefix + "model/"):]: v for k, v in tensors.items()
                          if k.startswith(prefix + "model/")},
                "optimizer": _join_optimizer(
                    {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix + "optim/")},
                    info,
                ),
            }
        identity = {
            "recipe": meta["recipe"],
            "task": meta["task"],
            "arch": header["arch"],
            "config": header["config"],
        }
        if "objective" in meta:
            identity["objective"] = meta["objective"]
        return Checkpoint(
            path=path,
            step=int(meta["step"]),
            total=int(meta["total"]),
            identity=identity,
            model=model,
            optimizer=_join_optimizer(optim_t, meta["optimizer"]),
            schedule=dict(meta["schedule"]),
            numpy_rng=dict(meta["numpy_rng"]),
            torch_rng=tensors["rng/torch"],
            cuda_rng=[v for _, v in cuda],
            loop=dict(meta.get("loop", {})),
            extras=extras,
            average={k[len("average/"):]: v for k, v in tensors.items()
                     if k.startswith("average/")},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise _refuse(path, f"incomplete checkpoint metadata ({type(e).__name__}: {e})") from e


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def check_identity(
    ckpt: Checkpoint, identity: Mapping[str, Any], extras: Sequence[str] = ()
) -> None:
    """Refuse a checkpoint made by another recipe, task, architecture, network config, loss
    objective (recipes that declare one) or set of extra modules (``extras``: their names).

    Raises:
        CheckpointError: naming what differs, both values, and what to do.
    """
    diffs = [
        f"{key}: checkpoint {ckpt.identity.get(key)!r} vs this run {identity.get(key)!r}"
        for key in ("recipe", "task", "arch", "config", "objective")
        if _canon(ckpt.identity.get(key)) != _canon(identity.get(key))
    ]
    if sorted(ckpt.extras) != sorted(extras):
        diffs.append(f"extra modules: checkpoint {sorted(ckpt.extras)} vs this run {sorted(extras)}")
    if diffs:
        raise _refuse(
            ckpt.path,
            "it was written by a different training setup (" + "; ".join(diffs) + "); use "
            "another output folder for this run",
        )
