"""The one training loop: a generator of :class:`TrainEvent` for every task (via a recipe).

The core yields, the GUI renders: ``train(...)`` yields after every step (so napari's
``worker.quit()``, which acts only at a yield, stops it within one step), after each validation
and after each checkpoint. The CLI drives the same generator with a terminal progress bar.

Reproducibility and resuming
----------------------------
All randomness comes from one numpy ``Generator`` (the recipe's batches) and torch's global RNG,
both seeded from ``seed`` and saved in every checkpoint together with the model, the Adam
moments and the step, so that (run k steps, stop, resume to N) gives the same weights as an
uninterrupted N-step run (bit for bit on CPU; on GPU up to cuDNN's nondeterminism). The learning
rate is a closed-form function of the step (:class:`CosineSchedule`), so it needs no state
beyond the step and its parameters, which the checkpoint records too.

Weight averaging
----------------
``train(..., average=d)`` keeps an exponential moving average of the network's parameters
(Polyak averaging; decay ``d`` per step, e.g. 0.999 averages about the last 1,000 steps) next
to the weights Adam trains. Validation, ``best.safetensors`` and therefore every export see the
averaged parameters: they do not carry the noise of the latest steps, which matters most for a
model exported in the middle of a long schedule, and for a GAN whose validation jumps from one
check to the next. Buffers (BatchNorm statistics, DRAN's attention temperature) are the
trained network's own. The checkpoint keeps both, so a resumed run continues the same average;
a checkpoint written without one starts averaging from its weights.

Checkpoints are written only between steps, atomically (temp file + rename): a crash, a cancel
or a closed generator never leaves a half-written ``last.safetensors``.

Runs with a wall-clock budget
-----------------------------
``train(..., budget_s=T)`` trains for T seconds instead of a number of steps (a borrowed GPU for
a few minutes): the cosine learning rate follows the share of the training time that has
passed (from the first step to the end of the budget: start-up and the baseline validation do
not use up the schedule), the ``total`` a recipe's ``on_step`` sees is the step count projected
at the current speed (so its step / total schedules follow the clock too), and the run stops
after the step whose successor, the final validation and the final checkpoint would no longer
fit (their durations are measured in the run), then validates and writes ``last.safetensors``
as a step-based run does at its end. Such a run depends on timing, so it is not reproducible
bit for bit; step-based runs are unaffected. ``every_s`` adds validations and checkpoints by
the clock, so a run of unknown speed always has a recent best model on disk.

More than one network
---------------------
A recipe may train extra modules next to its network (a GAN's discriminator: ``build_extras``
and ``losses``, see :mod:`.recipes`). Each gets an Adam with the network's betas and learning
rate schedule, and is checkpointed and restored with it. A step computes every loss first, then
back-propagates each into its own module's parameters only (``backward(inputs=...)``), then
updates all modules: a simultaneous update, so each loss sees the other modules as they were at
the start of the step. ``best.safetensors`` holds the network alone. Recipes without extras
take the single-network path unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import cpu_has_bf16, resolve_device
from ..weights import WeightsError, load_into, read_header, save_weights
from .checkpoint import CheckpointError, check_identity, load_checkpoint, save_checkpoint
from .recipes import Recipe, recipe_identity

__all__ = ["CosineSchedule", "TrainEvent", "TrainResult", "train", "BETAS", "LAST", "BEST", "PRECISIONS",
           "resolve_precision"]

#: Adam betas of the DRAN and DPE papers (Sharif et al. 2020, 2022); shared by every recipe.
BETAS = (0.9, 0.99)
#: File names inside ``out_dir``.
LAST = "last.safetensors"
BEST = "best.safetensors"
#: Names the newest run started in a folder (see ``train``: closing an old generator).
OWNER = ".train-owner"
#: Arithmetic of the training step's forward passes (``train(precision=...)``); "auto" is
#: resolved by :func:`resolve_precision`.
PRECISIONS = ("fp32", "bf16", "auto")
#: Weight of the newest value in the running (exponential) average of the step losses.
_EMA = 0.05


@dataclass
class TrainEvent:
    """One thing that happened during training.

    Attributes:
        kind: ``"step"`` (a step finished; ``losses`` are running averages, ``lr`` the rate the
            step used), ``"validation"`` (``metrics``, ``preview``; ``path`` is the best file
            when this validation made a new best, else None), ``"checkpoint"`` (``path`` =
            ``last.safetensors`` just written), ``"done"`` (``path`` = best file) or
            ``"cancelled"`` (``path`` = ``last.safetensors``, resumable).
        step: steps completed (0 before the first); total: steps planned.
        preview: the current model's output on one validation plane, float32 [0, 1],
            ``Y×X`` or ``Y×X×3``.
    """

    kind: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    path: Path | None = None
    preview: np.ndarray | None = None


@dataclass
class TrainResult:
    """What a finished (or cancelled) run leaves behind.

    ``steps``: steps completed; ``best_metric`` / ``best_step``: the best validation value of
    ``metric`` and its step (None before any validation); ``last_path``: the resumable
    checkpoint; ``best_path``: the best model as a weights file (None if none yet).
    """

    steps: int
    total: int
    cancelled: bool
    metric: str
    best_metric: float | None
    best_step: int | None
    last_path: Path | None
    best_path: Path | None


@dataclass(frozen=True)
class CosineSchedule:
    """Cosine decay from ``base_lr`` at step 0 to ``base_lr * final_fraction`` at ``total``.

    A pure function of the step, so that resuming restores the exact position from the step
    count alone. ``final_fraction = 0.01`` rather than 0 keeps the last steps useful.
    """

    base_lr: float
    total: int
    final_fraction: float = 0.01

    def lr(self, step: int) -> float:
        """Learning rate of 0-based step ``step``."""
        return self.at(min(max(step, 0), self.total) / max(self.total, 1))

    def at(self, fraction: float) -> float:
        """Learning rate at ``fraction`` (clipped to [0, 1]) of the schedule: 0 → ``base_lr``,
        1 → ``base_lr * final_fraction`` (budget runs pass the share of their time passed)."""
        t = min(max(float(fraction), 0.0), 1.0)
        lo = self.base_lr * self.final_fraction
        return lo + 0.5 * (self.base_lr - lo) * (1.0 + math.cos(math.pi * t))

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "cosine",
            "base_lr": self.base_lr,
            "total": self.total,
            "final_fraction": self.final_fraction,
        }


def _better(value: float, best: float | None, higher: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher else value < best


def train(
    recipe: Recipe,
    *,
    steps: int,
    out_dir: str | os.PathLike,
    batch: int = 16,
    patch: int = 64,
    lr: float = 1e-4,
    device: str | torch.device = "auto",
    val_every: int = 200,
    ckpt_every: int = 200,
    seed: int = 0,
    resume: bool = True,
    init_weights: str | os.PathLike | None = None,
    cancel: Callable[[], bool] | None = None,
    precision: str = "fp32",
    budget_s: float | None = None,
    every_s: float | None = None,
    average: float | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train ``recipe``'s network, yielding :class:`TrainEvent` s; returns a :class:`TrainResult`.

    Args:
        recipe: the task (:class:`~napari_medenhance.core.training.recipes.Recipe`).
        steps: total optimisation steps of the run (a resumed run counts from its checkpoint;
            a larger value than the checkpoint's extends the run and re-stretches the cosine).
        out_dir: folder for ``last.safetensors`` (resumable checkpoint) and
            ``best.safetensors`` (best validated model, a weights file for the engine / zoo);
            created if missing.
        batch, patch: samples per step and patch edge in pixels (the recipe draws them).
        lr: initial learning rate of Adam (betas :data:`BETAS`, or the recipe's ``betas``
            attribute when it has one), cosine-decayed over ``steps`` to 1 % of it. When
            resuming, the checkpoint's base rate (and betas) are used.
        device: ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda[:N]"`` or ``"mps"``.
        val_every: validate every this many steps (<= 0: only at the end), plus once at step 0
            of a fresh run (the baseline); the best value of ``recipe.primary_metric`` so far is
            written to ``best.safetensors`` (step 0 counts: with ``init_weights`` the starting
            model may be the best).
        ckpt_every: write ``last.safetensors`` every this many steps (<= 0: only at the end);
            it is also written at the end, on cancel and when the generator is closed.
        seed: seeds numpy (batches) and torch (network initialisation, any torch randomness).
            Note: this sets torch's *global* seed.
        resume: continue from ``out_dir/last.safetensors`` when it exists (same step, learning
            rate, Adam moments and RNG streams, and the recipe's extra modules with their own
            optimizers). A checkpoint that cannot be read, or that was written for another
            recipe / network / objective / set of extra modules, raises ``CheckpointError``. With
            ``resume=False`` an existing checkpoint is replaced at the first save. A checkpoint
            written under another ``recipe.validation_version`` has its best model measured
            again (one validation of ``best.safetensors``) before new validations are compared
            with it.
        init_weights: start a fresh run from this weights file (fine-tuning; strict load, must
            fit the recipe's network; extra modules start fresh); ignored when resuming from a
            checkpoint.
        cancel: polled before every step; when it returns True the checkpoint is written, a
            ``"cancelled"`` event is yielded and the generator returns.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:func:`resolve_precision`: bf16
            where the hardware has it natively, else fp32): bf16 autocast of the forward passes of a step
            (weights, Adam moments, the losses' reductions and validation stay fp32). On CPUs with
            AVX-512 bf16 instructions and on GPUs it trains faster at no measurable cost in
            validation PSNR (``benchmarks/results_training.md``); a checkpoint does not record
            it, so a run may resume in the other precision.
        budget_s: train for this many wall-clock seconds, counted from the call (building,
            the baseline validation, the final validation and checkpoint included), instead of
            for ``steps`` (module docstring). ``steps`` is then an upper bound; the learning
            rate is the cosine of the share of the time from the first step to the end of the
            budget that has passed; ``recipe.on_step`` and the events get the step count
            projected at the current speed as ``total`` (so step / total is that share); at
            least one step is taken. A resumed budget run continues its clock from the
            checkpoint (and the duration of its latest validation). None: a step-based run.
        every_s: also validate and write ``last.safetensors`` when this many wall-clock
            seconds have passed since the last validation (None: only by steps).
        average: decay in (0, 1) of an exponential moving average of the network's parameters
            (module docstring, "Weight averaging"), updated after every step with the decay
            ``min(average, (1 + n) / (10 + n))`` at its n-th update, so the first steps are not
            dominated by the starting weights. Validation and ``best.safetensors`` then use the
            averaged parameters. None (default): validate the weights as trained.

    Stopping: from a GUI prefer ``cancel``; it stops at the next step boundary with a
    checkpoint and a ``"cancelled"`` event, synchronously. napari's ``worker.quit()`` instead
    abandons the generator at a yield, and Python closes it (``GeneratorExit``) only when it is
    garbage-collected, which may be much later. The close still writes ``last.safetensors`` (the
    state at a yield is always consistent), unless another ``train()`` has started in the same
    ``out_dir`` since: the folder's ``.train-owner`` file names the newest run, and an older
    run never overwrites a newer run's checkpoint.

    Raises:
        ValueError: bad arguments or device.
        CheckpointError: unusable checkpoint when resuming (never silently ignored).
        WeightsError: ``init_weights`` does not fit the network.
        FloatingPointError: a non-finite loss (the last checkpoint is left as it was).
    """
    for name, value in (("steps", steps), ("batch", batch), ("patch", patch)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    steps, batch, patch = int(steps), int(batch), int(patch)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, value in (("budget_s", budget_s), ("every_s", every_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 seconds (or None), got {value}")
    if average is not None and not 0.0 < float(average) < 1.0:
        raise ValueError(f"average must be a decay in (0, 1) (or None), got {average}")
    t_call = time.perf_counter()
    timed = budget_s is not None
    budget = float(budget_s) if budget_s is not None else math.inf
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / LAST, out / BEST
    dev = resolve_device(device)
    autocast = _autocast(dev, resolve_precision(precision, dev))
    identity = recipe_identity(recipe)
    higher = bool(recipe.higher_is_better)
    metric = str(recipe.primary_metric)
    val_version = int(getattr(recipe, "validation_version", 0))

    ckpt = load_checkpoint(last_path) if resume and last_path.exists() else None
    torch.manual_seed(seed)
    net = recipe.build()
    build_extras = getattr(recipe, "build_extras", None)
    extras: dict[str, torch.nn.Module] = dict(build_extras()) if callable(build_extras) else {}
    if ckpt is not None:
        check_identity(ckpt, identity, extras=list(extras))
    owner_path, token = out / OWNER, uuid.uuid4().hex
    owner_path.write_text(token)
    rng = np.random.default_rng(seed)
    if ckpt is None:
        if init_weights is not None:
            load_into(net, init_weights, strict=True, expected_arch=recipe.arch)
        step, best, best_step, ema = 0, None, None, {}
        schedule = CosineSchedule(float(lr), steps)
    else:
        net.load_state_dict(ckpt.model, strict=True)
        step = ckpt.step
        best, best_step = ckpt.loop.get("best"), ckpt.loop.get("best_step")
        ema = dict(ckpt.loop.get("ema", {}))
        schedule = CosineSchedule(
            float(ckpt.schedule["base_lr"]), steps, float(ckpt.schedule["final_fraction"])
        )
        if ckpt.loop.get("validation_version", 0) != val_version:
            # The recorded best was measured by an older validation: measure it again.
            best = _remeasure(recipe, best_path, dev, metric)
        best, best_step = _best_on_disk(best_path, identity, metric, higher, best, best_step,
                                        val_version)
    net.to(dev)
    averaged = _Average(net, average, ckpt) if average is not None else None
    # A recipe may use other Adam betas (GANs: CycleGAN's beta1 = 0.5); a resumed run gets the
    # checkpoint's own, which the optimizer state restores below.
    betas = tuple(float(b) for b in getattr(recipe, "betas", BETAS))
    opt = torch.optim.Adam(net.parameters(), lr=schedule.lr(step), betas=betas)
    extra_opts: dict[str, torch.optim.Optimizer] = {}
    for name, module in extras.items():
        if ckpt is not None:
            try:
                module.load_state_dict(ckpt.extras[name]["model"], strict=True)
            except RuntimeError as e:
                raise CheckpointError(
                    f"{last_path}: cannot resume training from this checkpoint: its {name!r} "
                    f"module does not fit this run's ({e}); use another output folder"
                ) from e
        module.to(dev).train()
        extra_opts[name] = torch.optim.Adam(module.parameters(), lr=schedule.lr(step), betas=betas)
        if ckpt is not None:
            extra_opts[name].load_state_dict(ckpt.extras[name]["optimizer"])
    all_opts = [opt, *extra_opts.values()]
    if ckpt is not None:
        opt.load_state_dict(ckpt.optimizer)
        rng.bit_generator.state = ckpt.numpy_rng
        torch.set_rng_state(ckpt.torch_rng)
        if ckpt.cuda_rng and dev.type == "cuda":
            if len(ckpt.cuda_rng) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(ckpt.cuda_rng)
    saved_step = step if ckpt is not None else None
    net.train()
    # A checkpoint is only ever written below, between steps, where model, optimizer, RNGs and
    # step agree; ``finished`` stops the GeneratorExit handler from saving twice.
    finished = False
    # The clock of a budget run; a resumed one goes on from the time its checkpoint recorded.
    resumed_s = float(ckpt.loop.get("elapsed_s", 0.0)) if ckpt is not None and timed else 0.0
    clock0 = t_call - resumed_s
    # When the budget run's training began (its schedules run from there to the budget's end).
    train_start = ckpt.loop.get("train_start_s") if ckpt is not None and timed else None
    # Seconds the latest step, validation and checkpoint took: what must still fit in a budget
    # (a resumed run knows the validation's from its checkpoint).
    cost = {"step": 0.0, "val": float(ckpt.loop.get("val_s", 0.0)) if ckpt is not None else 0.0,
            "ckpt": 0.0}
    last_check = time.perf_counter()  # end of the latest validation (every_s counts from it)

    def elapsed() -> float:
        return time.perf_counter() - clock0

    def progress() -> float:
        """A budget run's share of its training time passed: 0 at the first step, 1 at the end
        of the budget."""
        if train_start is None:
            return 0.0
        return min(max((elapsed() - train_start) / max(budget - train_start, 1e-9), 0.0), 1.0)

    def total_now() -> int:
        """``steps``; in a budget run the steps projected at the current speed, so that
        step / total is :func:`progress`."""
        if not timed:
            return steps
        if finished:  # a budget run that ended: the steps it took
            return step
        f = progress()
        if step <= 0 or f <= 0:
            return steps
        return int(min(steps, max(step + 1, round(step / f))))

    def out_of_time() -> bool:
        # Another step and a final validation and checkpoint (with a 25 % margin) must fit.
        reserve = cost["step"] + 1.25 * (cost["val"] + cost["ckpt"])
        return timed and elapsed() + reserve >= budget

    def save_last() -> Path:
        nonlocal saved_step
        t0 = time.perf_counter()
        save_checkpoint(
            last_path,
            net=net,
            optimizer=opt,
            step=step,
            total=steps,
            identity=identity,
            schedule=schedule.state_dict(),
            numpy_rng=rng.bit_generator.state,
            loop={"best": best, "best_step": best_step, "metric": metric, "ema": ema,
                  "validation_version": val_version,
                  "seed": seed, "batch": batch, "patch": patch,
                  **({"average": averaged.state()} if averaged is not None else {}),
                  **({"budget_s": budget, "elapsed_s": elapsed(), "train_start_s": train_start,
                      "val_s": cost["val"]} if timed else {})},
            extras={name: (extras[name], extra_opts[name]) for name in extras},
            average=averaged.params if averaged is not None else None,
        )
        saved_step = step
        cost["ckpt"] = time.perf_counter() - t0
        return last_path

    def validate() -> TrainEvent:
        nonlocal best, best_step, last_check
        t0 = time.perf_counter()
        with averaged.swapped() if averaged is not None else contextlib.nullcontext():
            net.eval()
            try:
                with torch.no_grad():
                    metrics, preview = recipe.validate(net, dev)
            finally:
                net.train()
            metrics = {k: float(v) for k, v in metrics.items()}
            value = metrics.get(metric, float("nan"))
            new_best = None
            if _better(value, best, higher):
                best, best_step = value, step
                meta: dict[str, Any] = {
                    "task": identity["task"],
                    "recipe": identity["recipe"],
                    "step": step,
                    "total": steps,
                    "metrics": metrics,
                    "primary_metric": metric,
                    "validation_version": val_version,
                }
                if averaged is not None:
                    meta["averaged"] = averaged.state()
                describe = getattr(recipe, "describe", None)
                if callable(describe):
                    meta["training"] = describe()
                new_best = save_weights(
                    best_path, net, arch=identity["arch"], config=identity["config"], meta=meta
                )
        last_check = time.perf_counter()
        cost["val"] = last_check - t0
        return TrainEvent("validation", step, total_now(), metrics=metrics, preview=preview,
                          path=new_best)

    def result(cancelled: bool) -> TrainResult:
        return TrainResult(
            steps=step, total=total_now(), cancelled=cancelled, metric=metric, best_metric=best,
            best_step=best_step, last_path=last_path if last_path.exists() else None,
            best_path=best_path if best_path.exists() else None,
        )

    try:
        if ckpt is None and val_every > 0:
            yield validate()
        while step < steps:
            if cancel is not None and cancel():
                if saved_step != step:
                    save_last()
                finished = True
                yield TrainEvent("cancelled", step, total_now(), path=last_path)
                return result(cancelled=True)
            t_step = time.perf_counter()
            if timed and train_start is None:
                train_start = elapsed()
            recipe.on_step(net, step, total_now())
            lr_now = schedule.lr(step) if not timed else schedule.at(progress())
            for o in all_opts:
                for group in o.param_groups:
                    group["lr"] = lr_now
            inputs, targets = recipe.sample_batch(rng, batch, patch)
            inputs = inputs.to(dev, non_blocking=True)
            targets = targets.to(dev, non_blocking=True)
            if not extras:
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss, logs = recipe.loss(net, inputs, targets)
                loss = loss.float()
                _check_finite({"loss": loss}, step, last_path, saved_step)
                loss.backward()
                opt.step()
            else:
                for o in all_opts:
                    o.zero_grad(set_to_none=True)
                with autocast():
                    losses, logs = recipe.losses(net, extras, inputs, targets)
                losses = {k: v.float() for k, v in losses.items()}
                unknown = sorted(set(losses) - {"net", *extras})
                if "net" not in losses or unknown:
                    raise ValueError(
                        f"{type(recipe).__name__}.losses must return a 'net' loss and losses "
                        f"named after its extra modules {sorted(extras)}; got {sorted(losses)}"
                    )
                _check_finite(losses, step, last_path, saved_step)
                # Each loss into its own module only: the generator's adversarial term must
                # not train the discriminator, and vice versa. The graph is kept until the
                # last backward, in case the losses share parts of it.
                for i, (name, value) in enumerate(losses.items()):
                    module = net if name == "net" else extras[name]
                    value.backward(
                        inputs=[p for p in module.parameters() if p.requires_grad],
                        retain_graph=i < len(losses) - 1,
                    )
                opt.step()
                for name, o in extra_opts.items():
                    if name in losses:
                        o.step()
            step += 1
            if averaged is not None:
                averaged.update()
            for k, v in logs.items():
                ema[k] = float(v) if k not in ema else (1 - _EMA) * ema[k] + _EMA * float(v)
            cost["step"] = time.perf_counter() - t_step
            yield TrainEvent("step", step, total_now(), losses=dict(ema), lr=lr_now)
            final = step == steps or out_of_time()
            due = every_s is not None and time.perf_counter() - last_check >= every_s
            if (val_every > 0 and step % val_every == 0) or final or due:
                yield validate()
            if (ckpt_every > 0 and step % ckpt_every == 0) or final or due:
                save_last()
                yield TrainEvent("checkpoint", step, total_now(), path=last_path)
            if final:
                break
        if saved_step != step:  # a resumed run that was already complete
            save_last()
        finished = True
        yield TrainEvent("done", step, total_now(), path=best_path if best_path.exists() else None,
                         metrics={metric: best} if best is not None else {})
        return result(cancelled=False)
    except GeneratorExit:
        if not finished and saved_step != step and _still_owner(owner_path, token):
            try:
                save_last()
            except Exception as e:  # noqa: BLE001 - closing must not fail; the old file is intact
                warnings.warn(
                    f"could not write {last_path} when training was stopped ({e}); the previous "
                    f"checkpoint (step {saved_step}) is intact",
                    RuntimeWarning,
                    stacklevel=2,
                )
        raise


class _Average:
    """The running average of a network's parameters (``train(average=...)``)."""

    def __init__(self, net: torch.nn.Module, decay: float, ckpt: Any) -> None:
        self.net, self.decay = net, float(decay)
        saved = dict(ckpt.average) if ckpt is not None else {}
        names = [n for n, _ in net.named_parameters()]
        if saved and sorted(saved) == sorted(names):
            self.params = {n: saved[n].to(p.device, p.dtype) for n, p in net.named_parameters()}
            self.updates = int(ckpt.loop.get("average", {}).get("updates", 0))
        else:  # a fresh run, or a checkpoint without an average: start from its weights
            self.params = {n: p.detach().clone() for n, p in net.named_parameters()}
            self.updates = 0

    def state(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in self.net.named_parameters():
            self.params[n].lerp_(p.detach(), 1.0 - d)

    @contextlib.contextmanager
    def swapped(self):
        """The network holds the averaged parameters inside the block, its own after it."""
        live = {n: p.detach().clone() for n, p in self.net.named_parameters()}
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                p.copy_(self.params[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.net.named_parameters():
                    p.copy_(live[n])


def resolve_precision(precision: str, dev: torch.device) -> str:
    """The arithmetic a training step on ``dev`` runs in: ``"fp32"`` or ``"bf16"``.

    ``"auto"`` is bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU
    with AVX-512 BF16 or AMX) and fp32 elsewhere. A CPU without those instructions emulates
    bf16: measured on an AVX2-only 2-core EPYC, one DPE training step took about 60 s in bf16
    against 1.7 s in fp32. An explicit ``"bf16"`` there is honoured, with a warning.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dev.type == "cpu":
        native = cpu_has_bf16()
    elif dev.type == "cuda":
        native = bool(torch.cuda.is_bf16_supported())
    else:
        native = False
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        warnings.warn(
            f"bf16 is not native on this {dev.type.upper()}: it is emulated and trains many "
            "times slower than fp32 (use precision='auto' or 'fp32')",
            RuntimeWarning, stacklevel=3,
        )
    return precision


def _autocast(dev: torch.device, precision: str) -> Callable[[], Any]:
    """A factory of the step's autocast context (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def _check_finite(
    losses: dict[str, torch.Tensor], step: int, last_path: Path, saved_step: int | None
) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value.detach()):
            what = "training loss" if name in ("loss", "net") else f"{name!r} loss"
            raise FloatingPointError(
                f"non-finite {what} ({float(value)}) at step {step + 1}; the last "
                f"checkpoint ({last_path}, step {saved_step}) was left as it was. Try a "
                "lower learning rate."
            )


def _still_owner(path: Path, token: str) -> bool:
    """Whether this run is still the newest one started in its folder."""
    try:
        return path.read_text().strip() == token
    except OSError:
        return False


def _remeasure(recipe: Recipe, path: Path, dev: torch.device, metric: str) -> float | None:
    """``metric`` of the model in ``path`` (``best.safetensors``) by the recipe's current
    validation; None when there is no readable file (the next validation is then the best)."""
    if not path.exists():
        return None
    probe = recipe.build()
    try:
        load_into(probe, path, strict=True, expected_arch=getattr(recipe, "arch", None))
    except WeightsError:
        return None
    probe.to(dev).eval()
    with torch.no_grad():
        metrics, _ = recipe.validate(probe, dev)
    return float(metrics[metric])


def _best_on_disk(
    path: Path,
    identity: dict[str, Any],
    metric: str,
    higher: bool,
    best: float | None,
    best_step: int | None,
    val_version: int = 0,
) -> tuple[float | None, int | None]:
    """Best-so-far from the checkpoint, or from ``best.safetensors`` when that is newer.

    A validation can write a new best after the last checkpoint; when the run then stops
    abruptly and resumes, that file must not be overwritten by a worse model. A file whose
    value was measured by another ``validation_version`` does not count.
    """
    if not path.exists():
        return best, best_step
    try:
        header = read_header(path, expected_arch=identity["arch"])
    except WeightsError:
        return best, best_step
    meta = header["meta"]
    value = (meta.get("metrics") or {}).get(metric)
    if (
        meta.get("task") == identity["task"]
        and header["config"] == identity["config"]
        and meta.get("validation_version", 0) == val_version
        and isinstance(value, (int, float))
        and _better(float(value), best, higher)
    ):
        return float(value), meta.get("step")
    return best, best_step
