"""Folder batches at scale: throughput in-process vs a dask LocalCluster, and peak memory of a
memory-mapped volume several times larger than the memory it is given.

    .venv/bin/python benchmarks/bench_batch.py             # writes benchmarks/results_batch.md
    .venv/bin/python benchmarks/bench_batch.py --quick     # small sizes, to check it runs
                                                           # (writes out/results_batch_quick.md)
    .venv/bin/python benchmarks/bench_batch.py --model runs/dran/best.safetensors

**Throughput.** One folder of uint16 TIFF stacks cut from the real nuclei stack is denoised
three times into fresh output folders, one after another: in-process (``scheduler=None``),
then ``scheduler="local"`` with 1 and with 2 worker processes (one dask thread each; torch gets
``cores // workers`` threads per worker). Times are wall clock for the whole batch as a user
sees it, cluster start-up and shutdown included; the fixed cost of a cluster (start it, import
torch and load the model on every worker, close it) is measured on its own and subtracted for
the steady-state rate. Ratios are planes/s relative to in-process.

**Memory.** A uint16 volume of ``--volume-gib`` GiB is built by tiling real nuclei planes into a
``tifffile.memmap`` in the temp folder (``--tmp``), then denoised block by block
(``core.lazy``) into a TIFF beside it: once in a fresh subprocess, once on a LocalCluster worker
with ``memory_limit`` = ``--memory-limit`` (the nanny would restart a worker that went over the
limit, and the file would be reported failed). Peak memory is the kernel's high-water mark of the
process's own address space (``VmHWM``), reset after torch is imported and the model loaded
(``/proc/self/clear_refs``), so the table's 'peak' is the job's. Not ``ru_maxrss``: on Linux it
carries the PARENT's high-water mark across fork + exec, and this script's parent has just
written the whole volume through a memory map (an earlier version of this benchmark reported
the volume's size as the child's peak for that reason).
The memory part uses the tiny untrained DRAN unless ``--memory-model`` names another: the lazy
path's memory does not depend on the weights, and a full-size DRAN on CPU would take hours for
gigabytes of planes. The network's own per-tile activations are on top (see results_denoise.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe  # noqa: E402
import _rss  # noqa: E402
from _rss import peak_rss, reset_peak  # noqa: E402

OUT = Path(__file__).with_name("results_batch.md")
TINY = {"features": 8, "blocks": 1, "layers_per_block": 1, "kernels": 2}


def _nuclei() -> np.ndarray:
    import tifffile

    return tifffile.imread(ROOT / "src/napari_medenhance/sample_data/nuclei_stack.tif")


def resolve_model(name: str | None, tmp: Path) -> tuple[str, str]:
    """(weights path, label for the table): ``name``, the registered ``dran``, or a tiny DRAN."""
    from napari_medenhance.core import zoo

    if name not in (None, "tiny"):
        info = zoo.get_model(name, task="denoise")
        return str(info.path), f"{info.name} ({info.source}, {info.path.name})"
    if name is None:
        try:
            info = zoo.get_model("dran", task="denoise")
            return str(info.path), f"dran ({info.source})"
        except ValueError:
            pass
    import torch

    from napari_medenhance.core.nets.dran import DRAN
    from napari_medenhance.core.weights import save_weights

    torch.manual_seed(0)
    path = tmp / "tiny-untrained.safetensors"
    save_weights(path, DRAN(**TINY), arch="dran", config=TINY, meta={"task": "denoise", "name": "tiny"})
    why = "" if name == "tiny" else "; no trained `dran` was available"
    return str(path), f"tiny-untrained DRAN ({TINY['features']} features, {TINY['blocks']} block, random weights{why})"


# --------------------------------------------------------------------------------------------
# throughput


def make_folder(folder: Path, files: int, planes: int, size: int) -> int:
    """``files`` ImageJ TIFF stacks of ``planes`` x ``size``² real uint16 planes; total planes."""
    import tifffile

    nuclei = _nuclei()
    reps = size // nuclei.shape[1] + 1
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        stack = np.stack([np.tile(nuclei[(f * planes + z) % len(nuclei)], (reps, reps))[:size, :size]
                          for z in range(planes)])
        tifffile.imwrite(folder / f"stack{f:03d}.tif", stack, imagej=True,
                         metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    return files * planes


def _warm(weights: str, device: str) -> None:
    from napari_medenhance.core.batch import load_task_model

    load_task_model("denoise", weights, device)


def cluster_overhead(n_workers: int, weights: str, device: str) -> float:
    """Seconds to start a LocalCluster of ``n_workers`` as the batch does, have every worker
    import torch and load the model, and close it: the fixed cost of a cluster batch."""
    from napari_medenhance.core.cluster import open_client

    t = time.perf_counter()
    with open_client("local", n_workers=n_workers) as client:
        client.run(_warm, weights, device)
    return time.perf_counter() - t


def throughput(weights: str, folder: Path, work: Path, device: str, tile: int | None) -> list[dict]:
    from napari_medenhance.core.batch import batch

    rows = []
    for label, scheduler, n in (("in-process", None, None), ("LocalCluster, 1 worker", "local", 1),
                                ("LocalCluster, 2 workers", "local", 2)):
        out = work / f"out-{label.split(',')[0].lower()}-{n or 0}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        summary = batch(folder, out, model=weights, device=device, tile=tile, scheduler=scheduler,
                        n_workers=n)
        wall = time.perf_counter() - t
        if not summary.ok:
            raise RuntimeError(summary.format())
        overhead = cluster_overhead(n, weights, device) if scheduler else 0.0
        rows.append({"label": label, "planes": summary.planes, "wall": wall, "overhead": overhead})
        print(f"  {label}: {summary.planes} planes in {wall:.1f} s (cluster start/stop {overhead:.1f} s)",
              flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# memory

_CHILD = "--child-lazy"


def make_volume(path: Path, gib: float, size: int) -> tuple[int, ...]:
    """A uint16 TIFF of about ``gib`` GiB: planes of ``size``² tiled from real nuclei planes."""
    import tifffile

    nuclei = _nuclei()
    planes = max(2, int(gib * 2**30) // (size * size * 2))
    reps = size // nuclei.shape[1] + 1
    mm = tifffile.memmap(path, shape=(planes, size, size), dtype=np.uint16)
    for z in range(planes):
        mm[z] = np.tile(nuclei[z % len(nuclei)], (reps, reps))[:size, :size]
        if z % 8 == 7:
            mm.flush()
    mm.flush()
    del mm
    return (planes, size, size)


def child_lazy(src: str, dst: str, weights: str, device: str) -> None:
    """Runs in a fresh process: denoise ``src`` block by block; print peak RSS as JSON."""
    import tifffile

    from napari_medenhance.core import lazy
    from napari_medenhance.core.batch import load_task_model
    from napari_medenhance.core.jobs import drive

    loaded = load_task_model("denoise", weights, device)
    vol = tifffile.memmap(src, mode="r")
    base = reset_peak()
    t = time.perf_counter()
    drive(lazy.iter_process_volume(vol, loaded.module, dst, device=device, **loaded.engine_kwargs))
    secs = time.perf_counter() - t
    peak = peak_rss()
    print(json.dumps({"base": base, "peak": peak, "seconds": secs}))


def memory(weights: str, work: Path, gib: float, size: int, limit: str, device: str) -> dict:
    import distributed
    import tifffile

    from napari_medenhance.core.batch import batch

    src_dir = work / "big"
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / "volume.tif"
    t = time.perf_counter()
    shape = make_volume(src, gib, size)
    nbytes = int(np.prod(shape)) * 2
    print(f"  volume {shape} uint16 = {nbytes / 2**30:.2f} GiB written in {time.perf_counter() - t:.0f} s",
          flush=True)
    res: dict = {"shape": shape, "nbytes": nbytes, "limit": limit}

    dst = work / "lazy-out.tif"
    p = subprocess.run([sys.executable, __file__, _CHILD, str(src), str(dst), weights, device],
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr)
    res["process"] = json.loads(p.stdout.strip().splitlines()[-1])
    with tifffile.TiffFile(dst) as tf:
        assert tf.series[0].shape == shape
    dst.unlink()
    print(f"  in-process: peak RSS {res['process']['peak'] / 2**20:.0f} MiB", flush=True)

    import cloudpickle

    # the workers cannot import benchmarks/_rss.py: send its functions by value
    cloudpickle.register_pickle_by_value(_rss)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  memory_limit=limit, dashboard_address=None,
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        import torch

        client.run(torch.set_num_threads, os.cpu_count() or 1)
        # the worker's footprint before the volume: torch imported, the model loaded
        client.run(_warm, weights, device)
        base = next(iter(client.run(reset_peak).values()))
        t = time.perf_counter()
        summary = batch(src_dir, work / "cluster-out", model=weights, device=device,
                        scheduler=client)
        secs = time.perf_counter() - t
        peak = next(iter(client.run(peak_rss).values()))
    res["worker"] = {"base": base, "peak": peak, "seconds": secs, "status":
                     "written" if summary.ok else summary.format()}
    print(f"  worker (limit {limit}): peak RSS {peak / 2**20:.0f} MiB, {res['worker']['status']}",
          flush=True)
    return res


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    ap.add_argument("--model", default=None,
                    help="throughput model: name or .safetensors (default: dran if available, "
                         "else a tiny untrained DRAN, named as such in the results)")
    ap.add_argument("--memory-model", default="tiny", help="model of the memory part (default tiny)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--files", type=int, default=None, help="files in the throughput folder")
    ap.add_argument("--planes", type=int, default=None, help="planes per file")
    ap.add_argument("--size", type=int, default=None, help="plane edge of the throughput files")
    ap.add_argument("--volume-gib", type=float, default=None, help="size of the memory volume")
    ap.add_argument("--volume-plane", type=int, default=None, help="plane edge of the memory volume")
    ap.add_argument("--memory-limit", default=None, help="LocalCluster worker memory limit")
    ap.add_argument("--tmp", default=None, help="work folder (default: the system temp folder)")
    ap.add_argument("--out", default=None,
                    help=f"results file (default {OUT.name}; with --quick out/results_batch_quick.md)")
    a = ap.parse_args()
    q = a.quick
    files = a.files or (4 if q else 8)
    planes = a.planes or (2 if q else 4)
    size = a.size or (128 if q else 256)
    # Planes of 2048² keep the engine's float64 work arrays for one plane (~200 MiB) well
    # inside a 1 GiB worker; 3 GiB is three times that limit.
    gib = a.volume_gib or (0.0625 if q else 3.0)
    vplane = a.volume_plane or (1024 if q else 2048)
    limit = a.memory_limit or "1GiB"
    out_file = Path(a.out) if a.out else (ROOT / "out" / "results_batch_quick.md" if q else OUT)

    work = Path(tempfile.mkdtemp(prefix="medenhance-bench-", dir=a.tmp))
    try:
        weights, label = resolve_model(a.model, work)
        mem_weights, mem_label = resolve_model(a.memory_model, work)
        folder = work / "in"
        total = make_folder(folder, files, planes, size)
        print(f"throughput: {files} files x {planes} planes of {size}² uint16 ({total} planes), {label}",
              flush=True)
        rows = throughput(weights, folder, work, a.device, a.tile)
        print(f"memory: ~{gib} GiB volume of {vplane}² planes, {mem_label}", flush=True)
        mem = memory(mem_weights, work, gib, vplane, limit, a.device)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0]["planes"] / rows[0]["wall"]
    L = [
        "# Folder batches: throughput and memory" + (" (--quick: sizes too small to judge)" if q else ""),
        "",
        f"Machine: {describe()}",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_batch.py', *map(shlex.quote, sys.argv[1:])])}`",
        "",
        "## Throughput",
        "",
        f"Model: **{label}**. Folder: {files} ImageJ TIFF stacks of {planes} × {size}² uint16 planes "
        f"of real fluorescence ({total} planes). Wall clock of the whole batch, cluster start-up and "
        "shutdown included; the columns on the right subtract the fixed cost of a cluster (start "
        "it, import torch and load the model on every worker, close it), measured on its own.",
        "",
        "| run | seconds | planes/s | ratio to in-process | cluster start+stop (s) | planes/s without it | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["planes"] / r["wall"]
        steady = r["planes"] / max(1e-9, r["wall"] - r["overhead"])
        L.append(f"| {r['label']} | {r['wall']:.1f} | {rate:.2f} | {rate / base:.2f} | "
                 f"{r['overhead']:.1f} | {steady:.2f} | {steady / base:.2f} |")
    v, pr, wk = mem["shape"], mem["process"], mem["worker"]
    gibs = mem["nbytes"] / 2**30
    L += [
        "",
        "## Peak memory of a volume larger than memory",
        "",
        f"Model: **{mem_label}**. Input: a `tifffile.memmap` uint16 volume {v[0]} × {v[1]} × {v[2]} "
        f"= {gibs:.2f} GiB, tiled from real nuclei planes; output: a TIFF of the same size, written "
        "block by block (`core.lazy`). 'before': RSS of the process that ran it after importing "
        "torch and loading the model; 'peak': its peak RSS (`VmHWM`, reset at 'before') during "
        "the job.",
        "",
        "| where | memory limit | RSS before (MiB) | peak RSS (MiB) | peak / volume | seconds | result |",
        "|---|---|---|---|---|---|---|",
        f"| fresh process, in-process lazy | — | {pr['base'] / 2**20:.0f} | {pr['peak'] / 2**20:.0f} | "
        f"{pr['peak'] / mem['nbytes']:.3f} | {pr['seconds']:.1f} | written |",
        f"| LocalCluster worker (1 thread) | {mem['limit']} | {wk['base'] / 2**20:.0f} | "
        f"{wk['peak'] / 2**20:.0f} | {wk['peak'] / mem['nbytes']:.3f} | {wk['seconds']:.1f} | {wk['status']} |",
    ]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(L) + "\n", encoding="utf-8")
    print(f"written to {out_file}")
    print("\n".join(L))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == _CHILD:
        child_lazy(*sys.argv[2:6])
    else:
        main()
