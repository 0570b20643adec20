"""One training engine for every task: a generator of events, recipes per task.

``train(recipe, steps=..., out_dir=...)`` yields :class:`TrainEvent` s (steps, validations with a
preview image, checkpoints) and returns a :class:`TrainResult`; the napari Train widget and the
CLI render the same events. Checkpoints are safetensors (no pickle), atomically written and
exactly resumable. A new task is a new recipe in :mod:`.recipes`; the loop does not change.

This is the **library** (installed with the plugin; the Train widget and ``medenhance train``
run it). The repository's top-level ``training/`` folder holds the **scripts** that train the
shipped models on the project's data pool with it; it is not installed.
"""

from __future__ import annotations

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .finetune import iter_finetune, save_finetuned
from .loop import BEST, LAST, CosineSchedule, TrainEvent, TrainResult, train
from .losses import PerceptualObjective
from .patches import PatchSampler, Plane, Pool, center_crop
from .recipes import DenoiseRecipe, EnhanceRecipe, PairedRecipe, Recipe, recipe_identity
from .runs import run_folder
from .paired_data import PairedPool, PlanePair, load_paired_data
from .user_data import load_user_data

__all__ = [
    "BEST",
    "LAST",
    "Checkpoint",
    "CheckpointError",
    "CosineSchedule",
    "DenoiseRecipe",
    "EnhanceRecipe",
    "PairedPool",
    "PairedRecipe",
    "PatchSampler",
    "PerceptualObjective",
    "Plane",
    "PlanePair",
    "Pool",
    "Recipe",
    "TrainEvent",
    "TrainResult",
    "center_crop",
    "iter_finetune",
    "load_checkpoint",
    "load_paired_data",
    "load_user_data",
    "recipe_identity",
    "run_folder",
    "save_checkpoint",
    "save_finetuned",
    "train",
]
