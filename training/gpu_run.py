"""Train every shipped model at once on one borrowed GPU, for a wall-clock budget.

    python3 training/gpu_run.py --device cuda --smoke --out $OUT         # ~1 min: imports, CUDA, 2 steps each
    python3 training/gpu_run.py --device cuda --budget 480 --out $OUT    # the run: 8 minutes in all
    python training/gpu_run.py --device cpu --budget 20 --tiny --out /tmp/g --pack /tmp/p.npz  # the test's

The procedure (a smoke run, then the full run at once) is in ``training/README.md``.

What it does
------------
One process per model (``dran``, the MS-GAN generator ``msgan``, ``dpe``) shares the GPU, so a
crash in one loses nothing of the others. Each runs the project's one training loop
(:func:`~napari_medenhance.core.training.train`) with the model's recipe as the CPU scripts
build it (``train_dran.py``, ``train_sr.py``, ``train_dpe.py``; ``tests/test_gpu_run.py`` checks
that the recipes agree), with

* a **wall-clock budget** (``train(budget_s=...)``): every model ends, validates and writes its
  weights before ``--budget`` seconds after the command started, counting its start-up; the
  cosine learning rate follows the time, and so does DRAN's attention-temperature anneal;
* the **starting weights** of the CPU runs: ``training/checkpoints/<name>.safetensors`` where
  one is committed, else the shipped ``models/<file>.safetensors``, else a fresh network
  (``--init name=PATH|scratch`` overrides). The learning rate restarts its cosine from the
  recipe's base rate (a warm restart, Loshchilov & Hutter, ICLR 2017), the discriminator /
  critic of the GANs starts fresh, and a DRAN whose attention temperature has not yet reached
  1 anneals on from where it is;
* bf16 autocast (fp32 master weights) where the device computes bf16 natively (every recent
  GPU; ``--precision auto``, else fp32), ``channels_last`` for the plain conv nets (``msgan``,
  ``dpe``, the VGG16 of their feature losses; not DRAN, whose dynamic convs fold the batch into
  the channels), the recipes' batch and patch sizes (DRAN and DPE: 24 × 128², the papers';
  MS-GAN 16 × 128²);
* batches drawn on the CPU by ``--workers`` DataLoader processes per model (each with its own
  seeded generator: a GPU run is not reproducible bit for bit, the CPU runs are);
* a validation at the start, every ``--every`` seconds and at the end; each new best is written
  at once to ``--out`` as fp16 weights.

What it writes into ``--out`` (at most 8 files, each far below 16 MB)
---------------------------------------------------------------------
``dran.safetensors``, ``msgan-x4.safetensors`` (the whole generator at ×4; ``train_sr.py``
cuts the ×2 model from it), ``dpe.safetensors``: fp16, the best validated weights of the run
(the starting weights when training did not beat them; ``meta.step`` says which), readable by
the zoo; ``gpu_run.json``: per model the starting point, steps, steps per second, the
validation numbers at the start, the best and the end, peak GPU memory and the outcome;
``gpu_run.log``: everything the processes printed. Work files (resumable checkpoints) go to
``--work`` (a temporary folder by default), not to ``--out``.

Only torch, numpy, scipy / scikit-image (metrics) and safetensors are imported: the GPU machine
has no napari, Qt, dask, pydicom or nibabel, and the data come from the pack of
``pack_pool.py`` (``runs/pool-pack.npz``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", Path(__file__).resolve().parent):  # the GPU machine has no installed package
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pack_pool import PACK, load_pack  # noqa: E402

from napari_medenhance.core.tasks import default_model_name  # noqa: E402  (plain data, no torch)

#: Files written into --out besides the weights.
JSON_NAME = "gpu_run.json"
LOG_NAME = "gpu_run.log"
#: The device tool returns at most this many files of at most this size.
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
#: Seconds a model keeps after its training for writing its weights and status.
END_RESERVE_S = 3.0
#: After the deadline, seconds until a model still running is asked to stop (SIGTERM: it
#: stops at its next step and keeps its last best) and then killed.
TERM_GRACE_S = 10.0
KILL_GRACE_S = 20.0
#: DRAN's attention temperature at the start of training (``nets/dran.py``), and the share of a
#: run from scratch over which it anneals to 1 (``train_dran.py``).
DRAN_T0 = 30.0
DRAN_ANNEAL_FRACTION = 0.1


@dataclass(frozen=True)
class ModelSpec:
    """One model of the run: its recipe's paper settings and a tiny variant for tests.

    ``file``: the stem of the weights written (the zoo's name: the task's shipped default, from
    the task table ``napari_medenhance.core.tasks``); ``batch``, ``patch`` (HR pixels),
    ``lr``: the CPU script's defaults; ``tiny`` / ``tiny_extra``: network and discriminator
    configs of ``--tiny`` (tests and CPU smoke runs).
    """

    name: str
    file: str
    arch: str
    batch: int
    patch: int
    lr: float
    channels_last: bool
    seed: int
    tiny: dict[str, Any] = field(default_factory=dict)
    tiny_extra: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    "dran": ModelSpec("dran", default_model_name("denoise"), "dran", 24, 128, 1e-4, False, 0,
                      {"features": 16, "blocks": 1, "layers_per_block": 1}),
    "msgan": ModelSpec("msgan", default_model_name("sr", 4), "msgan", 16, 128, 1e-4, True, 1,
                       {"features": 8, "blocks": 1, "blocks_x2": 1}, {"widths": [8, 8, 16, 16]}),
    "dpe": ModelSpec("dpe", default_model_name("enhance"), "dpe", 24, 128, 5e-4, True, 2,
                     {"widths": [8, 12, 16, 20, 24]}, {"widths": [8, 8, 16, 16, 16, 16, 16, 16]}),
}
#: ``--tiny`` batch and patch.
TINY_BATCH, TINY_PATCH, TINY_VAL_CROP = 2, 32, 64


# ------------------------------------------------------------------------------- recipes


def make_recipe(name: str, pool: Any, config: dict[str, Any], *, tiny: bool = False,
                from_weights: bool = False) -> Any:
    """The model's recipe as its CPU script builds it (``train_dran.py`` etc. defaults).

    ``config``: network config (from the starting weights, ``--tiny``, or {} for the paper's);
    ``tiny`` also shrinks the discriminator / critic and the validation crops;
    ``from_weights``: training starts from trained weights (DRAN: no anneal from 30, as
    ``train_dran.py``; :func:`continue_anneal` finishes one that was under way).
    """
    from napari_medenhance.core.training import DenoiseRecipe, EnhanceRecipe
    from napari_medenhance.core.training.recipes import SRRecipe
    from napari_medenhance.core.training.recipes.sr import KERNELS

    spec = MODELS[name]
    extra = dict(spec.tiny_extra) if tiny else {}
    val_crop = {"val_crop": TINY_VAL_CROP} if tiny else {}
    if name == "dran":
        # train_dran.py: 25 % of the inputs clipped like integer data, clipped validation too.
        return DenoiseRecipe(pool, config=config, clip_fraction=0.25, val_clipped=True,
                             anneal_fraction=0.0 if from_weights else DRAN_ANNEAL_FRACTION,
                             **val_crop)
    if name == "msgan":
        cfg = {k: v for k, v in config.items() if k not in ("output_scale", "scale")}  # fixed ×4
        return SRRecipe(pool, mode="msgan", config=cfg, critic_config=extra, kernels=KERNELS,
                        **val_crop)
    if name == "dpe":
        # train_dpe.py: the luminance check relative to each image, so every modality trains,
        # and the input contrast-stretched by its image's percentiles (as the engine does).
        return EnhanceRecipe(pool, config=config, loss="full", disc_config=extra,
                             luminance_check="relative", relative_luminance=0.5,
                             input_norm="stretch",
                             acceptance_samples=20 if tiny else 200, **val_crop)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def default_init(name: str) -> Path | None:
    """The committed weights a model starts from: an interim CPU checkpoint
    (``training/checkpoints/<name or file>.safetensors``), else the shipped model, else None."""
    spec = MODELS[name]
    for path in (ROOT / "training" / "checkpoints" / f"{spec.name}.safetensors",
                 ROOT / "training" / "checkpoints" / f"{spec.file}.safetensors",
                 ROOT / "models" / f"{spec.file}.safetensors"):
        if path.is_file():
            return path
    return None


# ------------------------------------------------------------------- recipe adaptations
# Set on the recipe instance, not by subclassing: the recipe's class is part of the identity
# recorded in every weights file, and the GPU weights must be the CPU recipe's.


def continue_anneal(recipe: Any, t_start: float) -> None:
    """Make a DRAN recipe anneal the attention temperature from ``t_start`` (the starting
    weights') to 1 instead of from 30: over the share of the run a run from scratch would still
    spend on it (``0.1 × (t_start − 1) / 29``); weights already at 1 stay at 1 from the first
    step on."""
    from napari_medenhance.core.nets.dran import set_temperature, temperature_schedule

    if t_start >= DRAN_T0 - 1e-6:
        return  # a fresh network: the recipe's own schedule
    fraction = DRAN_ANNEAL_FRACTION * max(t_start - 1.0, 0.0) / (DRAN_T0 - 1.0)

    def on_step(net: Any, step: int, total: int) -> None:
        n = math.ceil(fraction * total) if fraction > 0 else 0
        set_temperature(net, temperature_schedule(step, anneal_steps=n, t0=t_start))

    recipe.on_step = on_step


def use_channels_last(recipe: Any) -> None:
    """Build the network, the discriminator / critic and the frozen VGG16 in ``channels_last``
    (NHWC: the layout of the GPU's tensor-core convolutions)."""
    fmt = torch.channels_last
    build = recipe.build
    recipe.build = lambda: build().to(memory_format=fmt)
    build_extras = getattr(recipe, "build_extras", None)
    if callable(build_extras):
        recipe.build_extras = lambda: {k: m.to(memory_format=fmt) for k, m in build_extras().items()}
    for owner in (recipe, getattr(recipe, "objective_fn", None)):
        features = getattr(owner, "features", None)
        if features is not None:
            features.to(memory_format=fmt)


class _BatchStream(torch.utils.data.IterableDataset):
    """An endless stream of ``recipe.sample_batch`` results, for a DataLoader's workers.

    Each worker draws with its own generator, seeded from ``(seed, worker id)``.
    """

    def __init__(self, sample: Any, batch: int, patch: int, seed: int, channels_last: bool):
        super().__init__()
        self.sample, self.batch, self.patch = sample, batch, patch
        self.seed, self.channels_last = seed, channels_last

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info is not None else 0])
        while True:
            x, y = self.sample(rng, self.batch, self.patch)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
                y = y.contiguous(memory_format=torch.channels_last)
            yield x, y


def prefetch_batches(recipe: Any, *, workers: int, seed: int, pin: bool, channels_last: bool) -> Any:
    """Replace ``recipe.sample_batch`` by batches from a DataLoader with ``workers`` processes
    (0: drawn in this process). Returns a ``close()`` callable that stops the workers.

    The loop's generator is not used (each worker has its own). The workers are forked when
    the first batch is asked for, after the recipe's samplers were built here (so they share
    them rather than each building its own).
    """
    import multiprocessing

    sample = recipe.sample_batch  # the recipe's own method, bound before it is replaced
    state: dict[str, Any] = {"key": None, "it": None}

    def close() -> None:
        state["it"], state["key"] = None, None  # the iterator's finaliser ends its workers

    def sample_batch(rng: Any, batch: int, patch: int) -> tuple[Any, Any]:  # noqa: ARG001
        if state["key"] != (batch, patch):
            close()
            recipe.sampler(patch)  # build the (cached) patch sampler before the workers fork
            ctx = "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None
            loader = torch.utils.data.DataLoader(
                _BatchStream(sample, batch, patch, seed, channels_last), batch_size=None,
                num_workers=workers, pin_memory=pin, prefetch_factor=4 if workers else None,
                multiprocessing_context=ctx,
            )
            state["it"], state["key"] = iter(loader), (batch, patch)
        return next(state["it"])

    recipe.sample_batch = sample_batch
    return close


# ------------------------------------------------------------------------- one model


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _init_info(path: Path | None, arch: str) -> dict[str, Any]:
    """What the starting weights are: path, config, CPU step, metrics, temperature (DRAN)."""
    if path is None:
        return {"path": None}
    from napari_medenhance.core.weights import load_state_dict

    state, header = load_state_dict(path, expected_arch=arch)
    temps = [float(v) for k, v in state.items() if k.endswith("temperature")]
    meta = header["meta"]
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {"path": shown, "config": header["config"], "step": meta.get("step"),
            "metrics": meta.get("metrics"), "temperature": temps[0] if temps else None}


def export_fp16(best: Path, dest: Path, spec: ModelSpec, gpu: dict[str, Any]) -> Path:
    """Write the run's best weights (``best``, fp32) as fp16 ``dest`` with a zoo header."""
    from napari_medenhance.core.weights import load_state_dict, save_weights

    state, header = load_state_dict(best, expected_arch=spec.arch)
    meta = dict(header["meta"])
    meta.update(name=spec.file, storage="fp16")
    if spec.arch == "msgan":
        meta["scale"] = 4
    meta["training"] = {**(meta.get("training") or {}), "gpu_run": gpu}
    return save_weights(dest, state, arch=header["arch"], config=header["config"], meta=meta,
                        dtype=torch.float16)


def run_model(args: argparse.Namespace) -> int:
    """One model's process (``--child NAME``): train until the deadline, export, report."""
    name = args.child
    spec = MODELS[name]
    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {"name": name, "arch": spec.arch, "file": f"{spec.file}.safetensors",
                              "outcome": "starting", "steps": 0}
    status_path = work / "status.json"
    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop["requested"] = True  # the loop stops at its next step, keeping its checkpoint

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def say(msg: str) -> None:
        print(msg, flush=True)

    close = None
    try:
        from napari_medenhance.core.engine import resolve_device
        from napari_medenhance.core.training import BEST, train
        from napari_medenhance.core.training.loop import resolve_precision

        dev = resolve_device(args.device)
        precision = resolve_precision(args.precision, dev)
        cpus = os.cpu_count() or 1
        torch.set_num_threads(max(1, cpus // (2 * len(args.model_list))))
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest convs once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        pool = load_pack(args.pack)
        init = args.init_paths.get(name, None if args.tiny else default_init(name))
        info = _init_info(init, spec.arch)
        config = dict(info.get("config") or (spec.tiny if args.tiny else {}))
        recipe = make_recipe(name, pool, config, tiny=args.tiny, from_weights=init is not None)
        if name == "dran" and info.get("temperature") is not None:
            continue_anneal(recipe, info["temperature"])
        batch = args.batch.get(name, TINY_BATCH if args.tiny else spec.batch)
        patch = args.patch.get(name, TINY_PATCH if args.tiny else spec.patch)
        lr = args.lr.get(name, spec.lr)
        channels_last = spec.channels_last if args.channels_last is None else name in args.channels_last
        if channels_last:
            use_channels_last(recipe)
        status.update(init=info, config=recipe.config, batch=batch, patch=patch, lr=lr,
                      precision=precision, channels_last=channels_last,
                      workers=args.workers, device=str(dev))
        say(f"device {dev}, start {info['path'] or 'scratch'}"
            + (f" (step {info['step']})" if info.get("step") is not None else "")
            + f", batch {batch}, patch {patch}, lr {lr:g}, {precision}, "
            f"channels_last {'on' if channels_last else 'off'}, {args.workers} workers, "
            f"pool {len(pool.train)}/{len(pool.val)} planes, ready after {time.time() - t_start:.1f} s")
        close = prefetch_batches(recipe, workers=args.workers, seed=args.seed * 1000 + spec.seed,
                                 pin=dev.type == "cuda", channels_last=channels_last)
        dest = Path(args.out) / f"{spec.file}.safetensors"
        gpu_meta = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
                    "init": info["path"], "init_step": info.get("step"), "batch": batch,
                    "patch": patch, "lr": lr, "precision": precision, "budget_s": args.budget}
        validations: list[dict[str, Any]] = []
        status.update(validations=validations, outcome="training")
        _write_json(status_path, status)
        best_value = -math.inf  # every recipe here picks its best by PSNR (higher is better)

        while True:  # more than once only when a batch does not fit in GPU memory
            budget = max(1.0, args.deadline - time.time() - END_RESERVE_S)
            gen = train(recipe, steps=args.max_steps, out_dir=work, batch=batch, patch=patch, lr=lr,
                        device=dev, val_every=10**9, ckpt_every=0, seed=args.seed + spec.seed,
                        resume=False, init_weights=init, cancel=lambda: stop["requested"],
                        precision=precision, budget_s=budget, every_s=args.every)
            t_train = time.perf_counter()
            prev_t, prev_kind, step_s, counted, t_report = t_train, None, 0.0, 0, t_train
            try:
                for ev in gen:
                    now = time.perf_counter()
                    if ev.kind == "step":
                        if prev_kind == "step":  # time between two steps: no validation inside
                            step_s, counted = step_s + now - prev_t, counted + 1
                        status["steps"] = ev.step
                        if counted and now - t_report >= args.report_every:
                            t_report = now
                            losses = " ".join(f"{k} {v:.4g}" for k, v in ev.losses.items())
                            say(f"step {ev.step}/~{ev.total} {counted / step_s:.2f} steps/s "
                                f"lr {ev.lr:.2e} {losses}")
                    elif ev.kind == "validation":
                        m = ev.metrics
                        better = ev.path is not None and m[recipe.primary_metric] > best_value
                        entry = {"step": ev.step, "elapsed_s": round(time.time() - t_start, 1),
                                 "metrics": m, "best": better}
                        validations.append(entry)
                        if better:
                            best_value = m[recipe.primary_metric]
                            export_fp16(work / BEST, dest, spec, {**gpu_meta, "steps": ev.step})
                        say(f"validation at step {ev.step}: "
                            + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k in
                                        ("psnr", "ssim", "lassim", "psnr_x2", "loss"))
                            + (f"  * best -> {dest.name}" if better else ""))
                        status.update(_summary(validations), steps_per_s=_rate(counted, step_s),
                                      train_s=round(now - t_train, 1))
                        _write_json(status_path, status)
                    elif ev.kind in ("done", "cancelled"):
                        status["outcome"] = "completed" if ev.kind == "done" else "stopped"
                    prev_t, prev_kind = now, ev.kind
                break
            except torch.cuda.OutOfMemoryError:
                if batch <= 1 or args.deadline - time.time() < 30:
                    raise
                batch //= 2
                status["batch"] = gpu_meta["batch"] = batch
                status["restarts"] = status.get("restarts", 0) + 1
                if (work / BEST).exists():  # go on from the best weights so far
                    init = work / f"restart-{status['restarts']}.safetensors"
                    (work / BEST).replace(init)
                    if name == "dran":
                        continue_anneal(recipe, _init_info(init, spec.arch)["temperature"])
                say(f"out of GPU memory: starting again with batch {batch} from {init or 'scratch'}")
                torch.cuda.empty_cache()
        status.update(_summary(validations), steps_per_s=_rate(counted, step_s),
                      train_s=round(time.perf_counter() - t_train, 1), timed_steps=counted)
        if dev.type == "cuda":
            status["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        if dest.exists():
            status["size_bytes"] = dest.stat().st_size
        say(f"{status['outcome']}: {status['steps']} steps, {status.get('steps_per_s')} steps/s, "
            f"best {status.get('best', {}).get('metrics', {}).get('psnr')} at step "
            f"{status.get('best', {}).get('step')}")
        return 0
    except BaseException as e:  # noqa: BLE001 - report every failure, the best file stays
        status["outcome"] = "failed"
        status["error"] = f"{type(e).__name__}: {e}"
        say("".join(traceback.format_exception(e)).rstrip())
        return 1
    finally:
        status["wall_s"] = round(time.time() - t_start, 1)
        _write_json(status_path, status)
        if close is not None:
            close()


def _rate(counted: int, seconds: float) -> float | None:
    return round(counted / seconds, 3) if seconds > 0 and counted else None


def _summary(validations: list[dict[str, Any]]) -> dict[str, Any]:
    """``start`` / ``best`` / ``last`` validations (step and metrics)."""
    if not validations:
        return {}
    best = [v for v in validations if v["best"]]
    pick = lambda v: {"step": v["step"], "metrics": v["metrics"]}  # noqa: E731
    out = {"start": pick(validations[0]), "last": pick(validations[-1])}
    if best:
        out["best"] = pick(best[-1])
    return out


# ------------------------------------------------------------------------ the command


class _Log:
    """Lines to the log file and to stdout, from several threads."""

    def __init__(self, path: Path, t0: float):
        self.f = path.open("a", encoding="utf-8")
        self.t0, self.lock = t0, threading.Lock()

    def __call__(self, who: str, line: str) -> None:
        text = f"[{time.time() - self.t0:6.1f}s {who:5s}] {line}"
        with self.lock:
            self.f.write(text + "\n")
            self.f.flush()
            print(text, flush=True)

    def close(self) -> None:
        self.f.close()


def _hardware(device: str) -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def run_all(args: argparse.Namespace, argv: list[str]) -> int:
    """Start one process per model, relay their output, stop them at the deadline, write the
    JSON; 0 when every model trained and wrote its weights."""
    t0 = args.t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_run-"))
    log = _Log(out / LOG_NAME, t0)
    report: dict[str, Any] = {"command": " ".join(["gpu_run.py", *argv]),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
                              "budget_s": args.budget, "tiny": args.tiny, "smoke": args.smoke,
                              "models": {}}
    try:
        report["hardware"] = hw = _hardware(args.device)
        log("main", f"python {hw['python']}, torch {hw['torch']}, {hw['cpus']} CPUs, CUDA "
            + (f"seen: {hw['gpu']} ({hw['gpu_gib']} GiB), CUDA {hw['cuda']}" if hw["cuda_available"]
               else "not available"))
        if args.device.startswith("cuda") and not hw["cuda_available"]:
            raise SystemExit("--device cuda but torch sees no CUDA device")
        pack = Path(args.pack)
        if not pack.is_file():
            raise SystemExit(f"no pool pack at {pack}: make it with python training/pack_pool.py "
                             "and send it (carry runs/pool-pack.npz)")
        report["pack"] = {"path": str(pack), "bytes": pack.stat().st_size}
        log("main", f"budget {args.budget:g} s, models {', '.join(args.model_list)}, pack {pack} "
            f"({pack.stat().st_size / 1e6:.1f} MB), work {work}")
    except (SystemExit, Exception) as e:  # noqa: BLE001
        log("main", f"error: {e}")
        report["error"] = str(e)
        _write_json(out / JSON_NAME, report)
        log.close()
        return 2

    procs: dict[str, subprocess.Popen] = {}
    pumps = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in args.model_list:
        cmd = [sys.executable, "-u", str(Path(__file__).resolve()), *argv, "--child", name,
               "--deadline", f"{args.deadline:.3f}", "--work", str(work / name)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1, env=env, cwd=ROOT)
        procs[name] = p

        def pump(name: str = name, p: subprocess.Popen = p) -> None:
            for line in p.stdout:
                log(name, line.rstrip("\n"))

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        pumps.append(t)

    def gather(final: bool) -> None:
        for name, p in procs.items():
            st_path = work / name / "status.json"
            try:
                st = json.loads(st_path.read_text())
            except (OSError, ValueError):
                st = {"name": name, "outcome": "no status"}
            st["returncode"] = p.poll()
            if final and st.get("outcome") in ("starting", "training"):
                st["outcome"] = "killed"  # it never reported an end
            report["models"][name] = st
        report["wall_s"] = round(time.time() - t0, 1)
        for _ in range(2):  # the second time the listing holds the JSON itself
            report["files"] = {f.name: f.stat().st_size for f in sorted(out.iterdir())
                               if f.is_file() and not f.name.startswith(".")}
            _write_json(out / JSON_NAME, report)

    termed = killed = False
    last_json = time.time()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(0.5)
        now = time.time()
        if not termed and now > args.deadline + TERM_GRACE_S:
            termed = True
            for name, p in procs.items():
                if p.poll() is None:
                    log("main", f"{name} is past the deadline: asking it to stop")
                    p.send_signal(signal.SIGTERM)
        if not killed and now > args.deadline + KILL_GRACE_S:
            killed = True
            for name, p in procs.items():
                if p.poll() is None:
                    log("main", f"{name} did not stop: killed")
                    p.kill()
        if now - last_json > 30:
            gather(final=False)
            last_json = now
    for t in pumps:
        t.join(timeout=5)
    for stray in out.glob(".*.tmp"):  # a write cut short by a kill
        stray.unlink(missing_ok=True)
    gather(final=True)
    ok = True
    for name, st in report["models"].items():
        good = st.get("outcome") in ("completed", "stopped") and st.get("steps", 0) >= 1 \
            and (out / str(st.get("file"))).is_file()
        ok &= good
        best = st.get("best") or {}
        log("main", f"{name}: {st.get('outcome')}, {st.get('steps', 0)} steps, "
            f"{st.get('steps_per_s')} steps/s, start psnr {_psnr(st.get('start'))}, best psnr "
            f"{_psnr(best)} at step {best.get('step')}" + ("" if good else "  <-- FAILED"))
    files = report["files"]
    if len(files) > MAX_FILES or any(v >= MAX_FILE_BYTES for v in files.values()):
        log("main", f"warning: {len(files)} files in {out}, largest {max(files.values()) / 2**20:.1f} "
            f"MiB: the device tool returns at most {MAX_FILES} files of < 16 MiB")
        ok = False
    log("main", ("SMOKE " if args.smoke else "") + ("OK" if ok else "FAILED")
        + f" after {time.time() - t0:.0f} s; files: "
        + ", ".join(f"{k} ({v / 1e6:.2f} MB)" for k, v in files.items()))
    log.close()
    return 0 if ok else 1


def _psnr(entry: dict[str, Any] | None) -> str:
    v = ((entry or {}).get("metrics") or {}).get("psnr")
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


# ---------------------------------------------------------------------------- arguments


def _per_model(kind: type):
    """argparse type of ``name=value`` (repeatable), e.g. ``--batch dran=32``."""
    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        if not sep or name not in MODELS:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME in {', '.join(MODELS)}")
        return name, kind(value)
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (tests)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole command, start-up included (default 480; --smoke 150)")
    p.add_argument("--out", type=Path, required=True, help="folder for the weights, JSON and log ($OUT)")
    p.add_argument("--pack", type=Path, default=PACK, help="pool pack from pack_pool.py")
    p.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp dir)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--smoke", action="store_true",
                   help="a check: 2 steps per model (unless --max-steps), budget 150 s")
    p.add_argument("--max-steps", type=int, default=None, help="stop a model after this many steps")
    p.add_argument("--tiny", action="store_true", help="tiny networks, batch 2, patch 32 (tests)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16 autocast where the GPU or CPU computes it natively (auto), else fp32")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers per model (default: (CPUs − 4) / 3, at least 1)")
    p.add_argument("--every", type=float, default=90.0, help="validate every this many seconds")
    p.add_argument("--report-every", type=float, default=20.0, help="progress line every this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_per_model(int), action="append", default=[], metavar="NAME=N")
    p.add_argument("--patch", type=_per_model(int), action="append", default=[], metavar="NAME=N")
    p.add_argument("--lr", type=_per_model(float), action="append", default=[], metavar="NAME=LR")
    p.add_argument("--init", type=_per_model(str), action="append", default=[], metavar="NAME=PATH",
                   help="starting weights of a model, or NAME=scratch")
    p.add_argument("--channels-last", default=None,
                   help="comma-separated models to run channels_last (default: msgan,dpe; '' none)")
    p.add_argument("--child", choices=list(MODELS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in MODELS]
    if unknown or not args.model_list:
        p.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.budget is None:
        args.budget = 150.0 if args.smoke else 480.0
    if args.max_steps is None:
        args.max_steps = 2 if args.smoke else 10**9
    if args.workers is None:
        args.workers = max(1, ((os.cpu_count() or 1) - 4) // 3)
    if args.channels_last is not None:
        args.channels_last = {m.strip() for m in args.channels_last.split(",") if m.strip()}
    for key in ("batch", "patch", "lr"):
        setattr(args, key, dict(getattr(args, key)))
    args.init_paths = {k: (None if v == "scratch" else Path(v)) for k, v in args.init}
    args.t0 = time.time()
    if args.deadline is None:
        args.deadline = args.t0 + args.budget
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        return run_model(args)
    return run_all(args, argv)


if __name__ == "__main__":
    sys.exit(main())
