"""What the training scripts (``train_dran.py``, ``train_dpe.py``, ``train_sr.py``) share.

Running a recipe through the one training loop with a terminal bar and a clean Ctrl-C, the
record of each session in ``run.json``, the hardware line and the helpers of model export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from napari_medenhance.core.jobs import drive
from napari_medenhance.core.training import train


def hardware(device: torch.device) -> str:
    """A one-line description of the machine torch runs on."""
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}; CPU {cpu}"
    if device.type == "mps":
        return f"Apple MPS; CPU {cpu}"
    return f"CPU only: {cpu}"


def run_training(
    args: argparse.Namespace,
    recipe: Any,
    dev: torch.device,
    *,
    describe: Callable[[dict[str, float]], str],
    shown: Sequence[str] | None = None,
    fmt: str = ".4f",
) -> bool:
    """Train (or resume) with a tqdm bar and a clean Ctrl-C; True when the run reached ``--steps``.

    ``describe(metrics)`` is the recipe's one-line validation summary; ``shown`` the loss names
    on the bar (all when None), formatted with ``fmt``. The session (hardware, steps, speed) is
    appended to ``<out>/run.json`` for the model card.
    """
    from tqdm import tqdm

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest conv once
    stop = {"requested": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        tqdm.write("stopping after this step (Ctrl-C again to abort at once) ...")

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    session: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "hardware": hardware(dev), "torch": torch.__version__}
    gen = train(
        recipe, steps=args.steps, out_dir=args.out, batch=args.batch, patch=args.patch,
        lr=args.lr, device=dev, val_every=args.val_every, ckpt_every=args.ckpt_every,
        seed=args.seed, resume=args.resume, init_weights=args.init_weights,
        cancel=lambda: stop["requested"],
    )
    bar = None
    first = None
    t0 = time.perf_counter()
    result = None

    def show(ev) -> None:
        nonlocal bar, first, t0
        if bar is None:
            bar = tqdm(total=ev.total, initial=ev.step - 1 if ev.kind == "step" else ev.step,
                       unit="step", dynamic_ncols=True)
        if ev.kind == "step":
            if first is None:
                first, t0 = ev.step, time.perf_counter()
            bar.update(1)
            losses = {k: format(v, fmt) for k, v in ev.losses.items() if shown is None or k in shown}
            bar.set_postfix({**losses, "lr": f"{ev.lr:.2e}"}, refresh=False)
        elif ev.kind == "validation":
            tqdm.write(f"step {ev.step}: {describe(ev.metrics)}" + ("  * best" if ev.path else ""))
        elif ev.kind == "cancelled":
            tqdm.write(f"stopped at step {ev.step}; resume with the same command ({ev.path})")

    try:
        result = drive(gen, show)
    finally:
        if bar is not None:
            bar.close()
        signal.signal(signal.SIGINT, old_handler)
        if first is not None and result is not None:
            dt = time.perf_counter() - t0
            session.update(first_step=first, last_step=result.steps,
                           steps_per_s=round((result.steps - first) / dt, 3) if dt > 0 else None,
                           batch=args.batch, patch=args.patch)
            append_session(args, session)
    return bool(result is not None and not result.cancelled)


def append_session(args: argparse.Namespace, session: dict[str, Any]) -> None:
    path = args.out / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info.setdefault("sessions", []).append(session)
    path.write_text(json.dumps(info, indent=1))


def as_fp16_then_fp32(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
