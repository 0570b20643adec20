"""What the 8-view self-ensemble (``ensemble=True``) buys and costs, for every shipped model.

Each model runs through its public function (``denoise``, ``super_resolve``, ``enhance``) on
one validation window of every modality of its own fixed validation split, once as one pass and
once with the self-ensemble, side by side in one process; PSNR (dB, data range 1) against the
clean / high-resolution window, and the time of the two runs as a ratio.

* ``dran``: the central ≤ 256² window of the first validation plane of each modality, with the
  model card's fixed noise at σ = 15 and 50 (/255), not clipped.
* ``msgan-x2`` / ``msgan-x4``: the most structured ≤ 256² window of the first validation plane
  of each modality, made low-resolution by the antialiased bicubic kernel.
* ``dpe``: the central ≤ 256² window of the first validation plane of each modality, in each of
  its fixed Algorithm 1 degradations (the model card's 8 draws; a modality's gain is their mean,
  since one draw alone moves it by tenths of a dB).

    .venv/bin/python benchmarks/bench_ensemble.py            # writes benchmarks/results_ensemble.md
    .venv/bin/python benchmarks/bench_ensemble.py --only dran --out /tmp/e.md

Per-modality numbers are single windows: read the gains, not the absolute PSNR (the model
cards have the whole validation sets).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402

#: A case: (model, setting, modality, input plane, reference plane, rgb, run(input, ensemble)).
Case = tuple[str, str, str, np.ndarray, np.ndarray, bool, Callable[[np.ndarray, bool], np.ndarray]]


def _first_per_modality(items: list[dict], key: Callable[[dict], str]) -> list[dict]:
    seen: dict[str, dict] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


def dran_cases(pool) -> Iterator[Case]:
    import napari_medenhance as me
    from napari_medenhance.core.training import DenoiseRecipe

    recipe = DenoiseRecipe(pool, val_clipped=False)
    sigmas = list(recipe.val_sigmas)
    for item in _first_per_modality(recipe.validation_items(), lambda i: i["plane"].modality):
        plane = item["plane"]
        for s in (15, 50):
            noisy = recipe.to_plane(item["noisy"][sigmas.index(s)], plane.rgb)
            yield ("dran", f"σ {s}", plane.modality, noisy, item["clean"], plane.rgb,
                   lambda x, e, rgb=plane.rgb: me.denoise(x, "dran", rgb=rgb, device="cpu", ensemble=e))


def msgan_cases(pool) -> Iterator[Case]:
    import sr_gate

    import napari_medenhance as me

    recipe = sr_gate.make_recipe(pool=pool)
    for item in _first_per_modality(recipe.validation_items(False), lambda i: i["plane"].modality):
        plane = item["plane"]
        for f in (2, 4):
            lr = recipe.to_plane(item[("lr", f, "bicubic")][0].numpy(), plane.rgb)
            yield (f"msgan-x{f}", "bicubic LR", plane.modality, lr, item["hr"], plane.rgb,
                   lambda x, e, f=f, rgb=plane.rgb: me.super_resolve(
                       x, f, rgb=rgb, device="cpu", ensemble=e))


def dpe_cases(pool) -> Iterator[Case]:
    import enhance_gate

    import napari_medenhance as me
    from napari_medenhance.core import zoo
    from napari_medenhance.core.weights import read_header

    header = read_header(zoo.get_model("dpe", task="enhance").path, expected_arch="dpe")
    recipe = enhance_gate.make_recipe(header["config"], pool, **enhance_gate.recipe_options(header))
    firsts = {id(i["plane"]) for i in _first_per_modality(recipe.validation_items(),
                                                          lambda i: i["plane"].modality)}
    for item in (i for i in recipe.validation_items() if id(i["plane"]) in firsts):
        plane = item["plane"]
        yield ("dpe", "Algorithm 1", plane.modality, item["degraded"], item["clean"], plane.rgb,
               lambda x, e, rgb=plane.rgb: me.enhance(x, "dpe", rgb=rgb, device="cpu", ensemble=e))


CASES = {"dran": dran_cases, "msgan": msgan_cases, "dpe": dpe_cases}


def measure(cases: Iterator[Case]) -> list[dict]:
    from napari_medenhance.metrics import psnr

    rows = []
    for model, setting, modality, x, ref, rgb, run in cases:
        x = np.ascontiguousarray(x, np.float32)
        row = {"model": model, "setting": setting, "modality": modality,
               "mpx": ref.shape[0] * ref.shape[1] / 1e6}
        for name, ens in (("one", False), ("ens", True)):
            t = time.perf_counter()
            out = run(x, ens)
            row[f"t_{name}"] = time.perf_counter() - t
            row[name] = float(psnr(ref, np.clip(out, 0.0, 1.0), data_range=1.0, rgb=rgb))
        rows.append(row)
        print(f"{model:9s} {setting:11s} {modality:15s} one {row['one']:.2f}  ensemble "
              f"{row['ens']:.2f} ({row['ens'] - row['one']:+.3f} dB)  time x"
              f"{row['t_ens'] / row['t_one']:.1f}", flush=True)
    return rows


def report(rows: list[dict], argv: list[str], note: str | None = None) -> list[str]:
    groups = list(dict.fromkeys((r["model"], r["setting"]) for r in rows))
    L = ["# Self-ensemble benchmark", "",
         f"Machine: {describe()}. Command: `.venv/bin/python benchmarks/bench_ensemble.py"
         f"{' ' + shlex.join(argv) if argv else ''}`.", "",
         "`ensemble=True` (`--ensemble`, the widgets' *8-view ensemble* box) runs every tile in "
         "its 8 rotations and flips and averages the outputs turned back. Each shipped model "
         "through its public function, one window per modality of its own validation split "
         "(this script's docstring says which; `dpe`: that window in each of its 8 Algorithm 1 "
         "draws, averaged), one pass and ensemble side by side; PSNR (dB) "
         "against the clean / high-resolution window. Time: both runs of every window summed, "
         "on this CPU (fp32), the whole public call (mapping, tiling, dtype back)."
         + (f" {note}" if note else ""), "",
         "| model | input | one pass | ensemble | gain, mean (lowest … highest modality) | time × one pass |",
         "|---|---|---|---|---|---|"]

    def by_modality(model: str, setting: str) -> dict[str, float]:
        """Mean gain per modality (a modality may have several windows or draws)."""
        sel = [r for r in rows if (r["model"], r["setting"]) == (model, setting)]
        return {m: float(np.mean([r["ens"] - r["one"] for r in sel if r["modality"] == m]))
                for m in dict.fromkeys(r["modality"] for r in sel)}

    for model, setting in groups:
        sel = [r for r in rows if (r["model"], r["setting"]) == (model, setting)]
        gains = list(by_modality(model, setting).values())
        ratio = sum(r["t_ens"] for r in sel) / sum(r["t_one"] for r in sel)
        L.append(f"| `{model}` | {setting} | {np.mean([r['one'] for r in sel]):.2f} | "
                 f"{np.mean([r['ens'] for r in sel]):.2f} | {np.mean(gains):+.3f} "
                 f"({min(gains):+.3f} … {max(gains):+.3f}) | {ratio:.1f} |")
    mods = list(dict.fromkeys(r["modality"] for r in rows))
    L += ["", "Gain per modality (dB):", "",
          "| model | input | " + " | ".join(mods) + " |", "|---|---|" + "---|" * len(mods)]
    for model, setting in groups:
        by = by_modality(model, setting)
        L.append(f"| `{model}` | {setting} | "
                 + " | ".join(f"{by[m]:+.3f}" if m in by else "–" for m in mods) + " |")
    return L + [""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(CASES), action="append",
                    help="one model family (repeatable); default all")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_ensemble.md")
    ap.add_argument("--note", default=None,
                    help="a sentence for the results, e.g. what else ran on the machine")
    a = ap.parse_args(argv)
    from pool import load_pool

    pool = load_pool()
    rows = []
    for name in a.only or list(CASES):
        rows += measure(CASES[name](pool))
        a.out.write_text("\n".join(report(rows, argv, a.note)))  # each family once it is done
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
