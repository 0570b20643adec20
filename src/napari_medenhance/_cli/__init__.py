"""The ``medenhance`` commands, one module each (:mod:`napari_medenhance.cli` builds the parser
and dispatches): ``common`` (exit statuses, errors, reading, progress, shared options),
``restore`` (denoise / enhance), ``sr``, ``metrics``, ``models`` (models and
export-bioimageio), ``train``.
"""
