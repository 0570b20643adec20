"""One training engine for every task: a generator of events, recipes per task.

``train(recipe, steps=..., out_dir=...)`` yields :class:`TrainEvent` s (steps, validations with a
preview image, checkpoints) and returns a :class:`TrainResult`; the napari Train widget and the
CLI render the same events. Checkpoints are safetensors (no pickle), atomically written and
exactly resumable. A new task is a new recipe in :mod:`.recipes`; the loop does not change.
"""

from __future__ import annotations

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .loop import BEST, LAST, CosineSchedule, TrainEvent, TrainResult, train
from .losses import PerceptualObjective
from .patches import PatchSampler, Plane, Pool, center_crop
from .recipes import DenoiseRecipe, EnhanceRecipe, Recipe, recipe_identity

__all__ = [
    "BEST",
    "LAST",
    "Checkpoint",
    "CheckpointError",
    "CosineSchedule",
    "DenoiseRecipe",
    "EnhanceRecipe",
    "PatchSampler",
    "PerceptualObjective",
    "Plane",
    "Pool",
    "Recipe",
    "TrainEvent",
    "TrainResult",
    "center_crop",
    "load_checkpoint",
    "recipe_identity",
    "save_checkpoint",
    "train",
]
