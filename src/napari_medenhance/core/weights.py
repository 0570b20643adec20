"""Weights files that cannot run code: safetensors with a napari-medenhance header.

A weights file is a plain safetensors file (8-byte little-endian header length, a JSON header,
raw tensor bytes) whose ``__metadata__`` holds::

    "format": "napari-medenhance", "format_version": "1",
    "arch": "<architecture name>", "config": "<JSON of the constructor arguments>",
    "json_keys": "<JSON list of the meta keys stored JSON-encoded>", <meta>...

Pickles are never loaded: ``torch.load`` and ``pickle`` are not used anywhere here, and a
PyTorch ``.pt`` / ``.pth`` checkpoint is recognised by its magic bytes and refused before any of
it is interpreted. Every problem with a file raises :class:`WeightsError`, whose message names
the file, says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "WeightsError",
    "load_into",
    "load_state_dict",
    "read_header",
    "save_weights",
]

FORMAT = "napari-medenhance"
FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "arch", "config", "json_keys")
# safetensors itself refuses headers above 100 MB; a larger length means a foreign file.
_MAX_HEADER = 100 * 1024 * 1024
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_STORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CONVERT_HINT = (
    "convert it once, in an environment you trust, with: python -c \"import torch; "
    "from napari_medenhance.core.weights import save_weights; "
    "save_weights('model.safetensors', torch.load('model.pt', weights_only=True), "
    "arch='<arch>', config={...})\""
)


class WeightsError(ValueError):
    """A weights file is missing, unsafe, corrupt, foreign or does not fit the network."""


# --------------------------------------------------------------------------------------------
# writing


def save_weights(
    path: str | os.PathLike,
    net_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
    *,
    arch: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a network's weights as a napari-medenhance safetensors file, atomically.

    Args:
        path: destination (conventionally ``*.safetensors``); its folder must exist.
        net_or_state_dict: a module (its ``state_dict()`` is saved) or a mapping of tensors.
        arch: architecture name the file is for (e.g. ``"dran"``); checked when loading.
        config: JSON-serialisable constructor arguments that rebuild the network.
        meta: extra metadata; str values are stored as they are, others JSON-encoded (and
            decoded again by :func:`read_header`).
        dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` to halve the
            file); integer tensors are never converted. None keeps each tensor's dtype.

    Returns:
        The path written. An existing file there is replaced only once the new one is complete.

    Raises:
        TypeError: a value is not a tensor, or config / meta cannot be JSON-encoded.
        ValueError: empty arch, reserved meta key, unsupported ``dtype``.
    """
    import safetensors.torch

    path = Path(path)
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"arch must be a non-empty string; got {arch!r}")
    if dtype is not None and dtype not in _STORE_DTYPES:
        raise ValueError(f"dtype must be None or one of {_STORE_DTYPES}; got {dtype}")
    state = (
        net_or_state_dict.state_dict()
        if isinstance(net_or_state_dict, torch.nn.Module)
        else net_or_state_dict
    )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings; got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "only tensors can be saved (put other values in config or meta)"
            )
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        # clone: safetensors refuses tensors that share storage (tied weights, views).
        tensors[key] = t.clone().contiguous()

    try:
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "config": json.dumps(dict(config), sort_keys=True),
        }
    except TypeError as e:
        raise TypeError(f"config must be JSON-serialisable: {e}") from e
    json_keys = []
    for key, value in (meta or {}).items():
        if key in _RESERVED:
            raise ValueError(f"meta key {key!r} is reserved; reserved keys: {_RESERVED}")
        if isinstance(value, str):
            header[str(key)] = value
        else:
            try:
                header[str(key)] = json.dumps(value, sort_keys=True)
            except TypeError as e:
                raise TypeError(f"meta[{key!r}] must be a str or JSON-serialisable: {e}") from e
            json_keys.append(str(key))
    header["json_keys"] = json.dumps(json_keys)

    data = safetensors.torch.save(tensors, metadata=header)
    _write_atomic(path, data)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``.

    The rename is atomic on one file system, so readers see either the old file or the
    complete new one, and a failure at any point leaves the old file as it was.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; weights are ordinary files, readable as the umask allows
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# reading


def _sniff_foreign(path: Path, head: bytes, size: int) -> None:
    """Refuse well-known non-safetensors formats by their magic bytes, before parsing.

    ``head``: the first 9 bytes (or fewer); ``size``: the file size in bytes.
    """
    if head[:4] == b"PK\x03\x04":
        raise WeightsError(
            f"{path}: this is a ZIP archive, as written by torch.save (a pickled PyTorch "
            ".pt/.pth checkpoint); pickled PyTorch checkpoints are refused because they can "
            f"execute code when loaded. Only safetensors files are accepted: {_CONVERT_HINT}"
        )
    # A pickle starts with PROTO (0x80, 1..5), but so does a safetensors file whose 8-byte
    # header length happens to be e.g. 384 or 640: only a length that fits the file and a JSON
    # header right after it make it safetensors.
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5 and not (
        len(head) >= 9 and struct.unpack("<Q", head[:8])[0] <= size - 8 and head[8:9] == b"{"
    ):
        raise WeightsError(
            f"{path}: this is a Python pickle (e.g. a legacy torch.save checkpoint); pickled "
            "PyTorch checkpoints are refused because they can execute code when loaded. Only "
            f"safetensors files are accepted: {_CONVERT_HINT}"
        )
    if head[:4] == b"\x89HDF":
        raise WeightsError(
            f"{path}: this is an HDF5 file (e.g. Keras weights), not safetensors; export the "
            "weights to a PyTorch state dict and save them with save_weights()"
        )


def _corrupt(path: Path, what: str) -> WeightsError:
    return WeightsError(
        f"{path}: not a valid safetensors file ({what}); the file is truncated or corrupt, "
        "or in another format. Download or export it again."
    )


def _parse(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor entries, raw metadata) of a safetensors file, validated against its size."""
    if not path.exists():
        raise WeightsError(
            f"{path}: no such weights file; check the path (`medenhance models` lists the "
            "installed models)"
        )
    if not path.is_file():
        raise WeightsError(f"{path}: is not a file; pass the path of a .safetensors file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        _sniff_foreign(path, head, size)
        head = head[:8]
        f.seek(8)
        if len(head) < 8:
            raise _corrupt(path, f"only {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER:
            raise _corrupt(path, f"implausible header length {n}")
        if n > size - 8:
            raise _corrupt(path, f"header length {n} goes beyond the file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"the header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    data_size = size - 8 - n
    end_max = 0
    for name, info in header.items():
        try:
            dt, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                isinstance(dt, str)
                and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(begin, int)
                and isinstance(end, int)
                and 0 <= begin <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _corrupt(path, f"malformed entry for tensor {name!r}")
        if end > data_size:
            raise _corrupt(
                path, f"tensor {name!r} ends at byte {end} of a {data_size}-byte data section"
            )
        if dt in _ITEMSIZE and math.prod(shape) * _ITEMSIZE[dt] != end - begin:
            raise _corrupt(path, f"tensor {name!r}: {dt}{shape} does not fit {end - begin} bytes")
        end_max = max(end_max, end)
    if end_max != data_size:
        raise _corrupt(path, f"{data_size - end_max} bytes after the last tensor")
    return header, metadata


def read_header(path: str | os.PathLike, *, expected_arch: str | None = None) -> dict[str, Any]:
    """The metadata of a weights file, without loading its tensors; validates the file.

    Returns:
        ``{"format", "format_version", "arch", "config": dict, "meta": dict,
        "tensors": {name: {"dtype": "F32", "shape": [...]}}, "path": str}``.

    Raises:
        WeightsError: missing file, pickle / ZIP checkpoint, truncated or corrupt file,
            safetensors file without napari-medenhance metadata, or (with ``expected_arch``)
            weights for another architecture.
    """
    path = Path(path)
    entries, metadata = _parse(path)
    tensors = {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in entries.items()}
    if metadata.get("format") != FORMAT:
        examples = ", ".join(repr(k) for k in list(tensors)[:3]) or "none"
        wanted = f" for arch {expected_arch!r}" if expected_arch else ""
        raise WeightsError(
            f"{path}: a safetensors file without napari-medenhance metadata ({len(tensors)} "
            f"tensors, e.g. {examples}); napari-medenhance needs weights{wanted} whose header "
            "holds 'format': 'napari-medenhance', 'arch' and 'config'. If these weights fit "
            "one of the architectures, load the tensors yourself, check their names against "
            "the network's state_dict(), and re-save them with "
            "napari_medenhance.core.weights.save_weights(path, state_dict, arch=..., config=...)"
        )
    arch = metadata.get("arch")
    if not arch:
        raise WeightsError(f"{path}: napari-medenhance weights without an 'arch' entry; re-save")
    try:
        config = json.loads(metadata.get("config", "{}"))
        json_keys = set(json.loads(metadata.get("json_keys", "[]")))
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: the 'config' metadata is not valid JSON ({e}); re-save") from e
    if expected_arch is not None and arch != expected_arch:
        raise WeightsError(
            f"{path}: holds weights for arch {arch!r}, but {expected_arch!r} was expected; "
            "pick the model that matches this file or a file made for this model"
        )
    meta: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in _RESERVED:
            continue
        meta[key] = json.loads(value) if key in json_keys else value
    return {
        "format": FORMAT,
        "format_version": metadata.get("format_version", ""),
        "arch": arch,
        "config": config,
        "meta": meta,
        "tensors": tensors,
        "path": str(path),
    }


def load_state_dict(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    expected_arch: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a weights file: ``(state_dict, header)``; nothing in it can execute code.

    Floating-point tensors are converted to ``dtype`` (None keeps the stored dtype, e.g. fp16);
    integer tensors keep theirs. ``header`` is :func:`read_header`'s.
    """
    import safetensors.torch

    header = read_header(path, expected_arch=expected_arch)
    try:
        state = safetensors.torch.load_file(str(path), device=str(torch.device(device)))
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError)
        raise WeightsError(f"{path}: could not read the tensors ({e}); re-save the file") from e
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state, header


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_into(
    net: torch.nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    expected_arch: str | None = None,
) -> dict[str, Any]:
    """Load a weights file into ``net`` in place; returns the file's header.

    Names and shapes are compared with ``net.state_dict()`` from the header alone, before any
    tensor is read. ``strict=False`` tolerates missing and unexpected names (only the common
    ones are loaded); a shape mismatch is always an error.

    Raises:
        WeightsError: any :func:`read_header` problem, or names / shapes that do not fit
            (listing a few of each).
    """
    header = read_header(path, expected_arch=expected_arch)
    own = net.state_dict()
    stored = header["tensors"]
    missing = [k for k in own if k not in stored]
    unexpected = sorted(k for k in stored if k not in own)
    mismatched = [
        f"{k}: file {tuple(stored[k]['shape'])} vs network {tuple(own[k].shape)}"
        for k in own
        if k in stored and tuple(stored[k]["shape"]) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if strict and missing:
        problems.append(f"missing from the file: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"not in the network: {_listing(unexpected)}")
    if problems:
        raise WeightsError(
            f"{path}: the weights (arch {header['arch']!r}, config {header['config']}) do not fit "
            f"this {type(net).__name__}: " + "; ".join(problems)
            + ". Build the network with the file's config, or pick the file made for it."
        )
    state, _ = load_state_dict(path, dtype=None)
    # load_state_dict copies into the existing parameters, converting dtype and device.
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=strict)
    return header
