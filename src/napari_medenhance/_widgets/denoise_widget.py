"""Denoise dock widget: pick an image layer and a model, run in a worker, get a new layer.

All the work is :func:`napari_medenhance.api.iter_denoise` (model registry + inference engine);
the pickers, worker, progress and result placement are :class:`~._run_widget.RunModelWidget`'s.
"""

from __future__ import annotations

from napari_medenhance.api import iter_denoise

from ._run_widget import Job, RunModelWidget


class DenoiseWidget(RunModelWidget):
    """Dock widget: denoise a whole image layer, or only the plane on screen, with a model."""

    TASK = "denoise"
    VERB = "Denoise"
    DOING = "Denoising"
    DONE = "denoised"
    NOUN = "denoising"
    HELP = (
        "Denoise an image layer with a DRAN model. Every 2-D plane of a stack is processed; the "
        "result is added as a new layer in the same place and the source is left untouched. "
        "An RGB layer takes about three times as long as a gray one: its luminance and its two "
        "chroma planes are denoised separately."
    )

    def job(self) -> Job:
        # The module global, read at run time: tests replace it with monkeypatch.
        return iter_denoise
