"""Model cards of fine-tuned models: the card data (``NAME.json``) and its markdown (``NAME.md``).

:func:`~.finetune.save_finetuned` registers a run's best model and writes both from the run
record and the weights header. The card is kept apart from the training code because it only
reads what a run left behind (no torch, no data): it can be rewritten or tested on its own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["model_card"]


def _n_params(header: dict[str, Any]) -> int:
    return int(sum(math.prod(t["shape"]) for t in header["tensors"].values()))


def _card_data(record: dict[str, Any], header: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    meta = header["meta"]
    after = {"step": meta.get("step"), "metrics": meta.get("metrics", {})}
    training = meta.get("training") or {}
    return {
        "trained_with": "napari-medenhance fine-tuning (core.training.finetune)",
        "task": record.get("task", meta.get("task")),
        "mode": record.get("mode"),
        "arch": header["arch"],
        "config": header["config"],
        "parameters": _n_params(header),
        "started_from": record.get("start"),
        "data": record.get("data"),
        "settings": record.get("settings"),
        "steps_done": record.get("steps_done"),
        "steps_planned": meta.get("total"),
        "primary_metric": meta.get("primary_metric", record.get("primary_metric")),
        "validation": {"before": record.get("before"), "after": after},
        "recipe": {k: v for k, v in training.items()
                   if k not in ("train_planes", "val_planes")},
        "sessions": record.get("sessions", []),
        "run_folder": str(run_dir),
        "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


_MODE_TEXT = {
    ("denoise", "simulated"): "Gaussian noise (σ ~ U(0, 50)/255) added to your clean images; "
                              "validation at σ = 15, 25, 50",
    ("enhance", "simulated"): "Algorithm 1 of the DPE paper (noise, contrast, brightness) "
                              "applied to your good images",
    ("sr", "simulated"): "your high-resolution images downsampled ×4 (antialiased bicubic)",
    ("enhance", "unpaired"): "unpaired low- and high-quality images (LaMEGAN)",
}


_ROLES = {"data": "images", "hq": "HQ", "lq": "LQ"}
#: Card rows first (the summary metrics), then the rest alphabetically.
_MAIN = ("psnr", "ssim", "lassim", "delta_e", "loss")


def model_card(name: str, card: Mapping[str, Any]) -> str:
    """The readable model card (markdown) of a fine-tuned model, from its card data."""
    task, mode = card.get("task"), card.get("mode")
    start = card.get("started_from")
    started = (f"`{start['name']}` ({start['source']}, {start['arch']})" if start
               else "scratch (a new network)")
    s = card.get("settings") or {}
    val = card.get("validation") or {}
    before = (val.get("before") or {}).get("metrics") or {}
    after_entry = val.get("after") or {}
    after = after_entry.get("metrics") or {}
    how = _MODE_TEXT.get((task, mode), "your real, aligned low-/high-quality pairs"
                         if mode == "paired" else "")
    L = [
        f"# {name} — {task} model fine-tuned on your data",
        "",
        "Trained with napari-medenhance's Train module (the same training loop and recipes as "
        "the shipped models).",
        "",
        "| | |",
        "|---|---|",
        f"| task / mode | {task}, {mode}: {how} |",
        f"| started from | {started} |",
        f"| architecture | `{card.get('arch')}`, config `{json.dumps(card.get('config'), sort_keys=True)}`, "
        f"{card.get('parameters', 0):,} parameters |",
        f"| steps | {card.get('steps_done')} of {card.get('steps_planned')}; saved model from "
        f"step {after_entry.get('step')} (best validation {card.get('primary_metric')}) |",
        f"| settings | batch {s.get('batch')}, patch {s.get('patch')} px, learning rate "
        f"{s.get('lr')} (cosine decay to 1 %), seed {s.get('seed')}, validation every "
        f"{s.get('val_every')} steps |",
        f"| run folder | `{card.get('run_folder')}` |",
        f"| saved | {card.get('saved')} |",
        "",
        "## Data",
        "",
        "| role | source | shape | dtype | planes used | intensities |",
        "|---|---|---|---|---|---|",
    ]
    data = card.get("data") or {}
    splits = []
    for role, d in data.items():
        for src in d.get("sources", []):
            items = [("LQ", src["lq"]), ("HQ", src["hq"])] if "lq" in src and "hq" in src \
                else [(_ROLES.get(role, role), src)]
            for r, x in items:
                L.append(f"| {r} | {x['name']} | {tuple(x['shape'])} | {x['dtype']} | "
                         f"{x['planes_used']} of {x['planes_total']} | {x['normalisation']} |")
        sp = d.get("split") or {}
        splits.append(f"- {role}: {sp.get('how', '?')}; {len(sp.get('train', []))} training / "
                      f"{len(sp.get('val', []))} validation planes (validation: "
                      f"{', '.join(sp.get('val', [])[:8])}{' ...' if len(sp.get('val', [])) > 8 else ''})")
    L += ["", *splits, "",
          "## Validation (on the held-out part of your data)", "",
          "'before' is the starting model, 'after' the saved one, on the same validation set.",
          "",
          "| metric | before | after |", "|---|---|---|"]
    keys = [*after, *(k for k in before if k not in after)]
    keys.sort(key=lambda k: (_MAIN.index(k) if k in _MAIN else len(_MAIN), k))
    for k in keys:
        L.append(f"| {k} | {_fmt(before.get(k))} | {_fmt(after.get(k))} |")
    hw = sorted({x.get("hardware", "?") for x in card.get("sessions", [])})
    L += ["", f"Hardware: {'; '.join(hw) or 'not recorded'}.", ""]
    return "\n".join(L)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return str(v)
