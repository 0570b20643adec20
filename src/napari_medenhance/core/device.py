"""Which torch device a job runs on, and whether this CPU computes bf16 natively.

The one place that knows the device names the plugin accepts (``"auto"``, ``"cpu"``,
``"cuda[:N]"``, ``"mps"``): the engine, the training loop, the widgets' pickers and the CLI all
resolve through :func:`resolve_device`.
"""

from __future__ import annotations

import torch

__all__ = ["cpu_has_bf16", "device_choices", "resolve_device"]

def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``.

    ``"auto"`` picks CUDA, then Apple MPS, then CPU. Explicit names (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ``"mps"``) or a ``torch.device`` are checked for availability.

    Raises:
        ValueError: the name is unknown, or the device is not available on this machine.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from e
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available to this torch "
                f"({torch.__version__}); use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {device!r} requested but Apple MPS is not available; "
                "use device='cpu' or 'auto'"
            )
        return dev
    raise ValueError(
        f"unsupported device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    )


def device_choices() -> list[tuple[str, str]]:
    """``(label, value)`` for a device picker: ``auto`` (saying what it resolves to), the CPU,
    and only the accelerators this machine has (each CUDA device by index and name, MPS)."""
    auto = resolve_device("auto")
    if auto.type == "cuda":
        what = f"CUDA: {torch.cuda.get_device_name(0)}"
    elif auto.type == "mps":
        what = "Apple MPS"
    else:
        what = "CPU" + (", bf16" if cpu_has_bf16() else "")
    out = [(f"auto ({what})", "auto"), ("cpu", "cpu")]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += [(f"cuda:{i} ({torch.cuda.get_device_name(i)})", f"cuda:{i}" if n > 1 else "cuda")
                for i in range(n)]
    if _mps_available():
        out.append(("mps (Apple)", "mps"))
    return out



def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast pays."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        fn = getattr(torch.cpu, name, None)
        try:
            if callable(fn) and fn():
                return True
        except RuntimeError:
            pass
    return False
