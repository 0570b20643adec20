"""Thin napari dock widgets over :mod:`napari_medenhance.core` (the core yields, these render)."""
