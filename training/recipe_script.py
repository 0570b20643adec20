"""What the training scripts (``train_dran.py``, ``train_dpe.py``, ``train_sr.py``) share.

Running a recipe through the one training loop with a terminal bar and a clean Ctrl-C, the
record of each session in ``run.json``, the hardware line and the helpers of model export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medenhance.core.jobs import drive
from napari_medenhance.core.training import train
from napari_medenhance.core.training.driver import GracefulStop, hardware
from napari_medenhance.core.training.loop import resolve_precision
from napari_medenhance.core.training.runs import read_record, write_record


class AdaptiveThreads:
    """Picks torch's CPU thread count between steps by measuring it, again and again.

    On a machine that also does other work, a training step split over every core waits at
    each parallel region for the slowest thread, and a core taken by another process makes
    that thread slow: measured on a 2-core machine, DRAN took 0.55 s a step on 2 threads when
    quiet but 1.7–6 s while tests ran beside it, where 1 thread takes about 1.1 s either way;
    MS-GAN went from 0.4 to 7 s a step on 2 threads when another process started.
    So every ``period`` steps the other count is tried for ``window`` steps and the faster
    one kept (median step time; steps next to a validation or checkpoint are not timed). A
    trial also starts at once when the last ``recent`` steps are ``slower`` times slower than
    the steps the last choice was made on (another process has started: waiting ``period``
    such steps could take half an hour), and a trial ends early after ``recent`` steps that are
    already ``slower`` times slower than the current count's.
    """

    def __init__(self, counts: Sequence[int], period: int = 200, window: int = 20,
                 recent: int = 5, slower: float = 1.5) -> None:
        self.counts = sorted(set(int(c) for c in counts if c >= 1), reverse=True)
        self.period, self.window = int(period), int(window)
        self.recent, self.slower = int(recent), float(slower)
        self.current = self.counts[0]
        self.times: dict[int, list[float]] = {c: [] for c in self.counts}
        self.ref: float | None = None  # median step time of the current count when chosen
        self.trying: int | None = None
        self.since = 0
        self.last: float | None = None
        torch.set_num_threads(self.current)

    def interrupted(self) -> None:
        """A validation or checkpoint happened since the last step: do not time across it."""
        self.last = None

    def _median(self, n: int, last: int | None = None) -> float:
        t = self.times[n][-last:] if last else self.times[n]
        return float(np.median(t)) if t else float("inf")

    def step(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            n = self.trying or self.current
            self.times[n] = (self.times[n] + [now - self.last])[-self.window:]
        self.last = now
        self.since += 1
        if len(self.counts) < 2:
            return
        if self.trying is None:
            cur = self.times[self.current]
            if self.ref is None and len(cur) >= self.recent:
                self.ref = self._median(self.current)
            slowed = (self.ref is not None and len(cur) >= self.recent
                      and self._median(self.current, self.recent) > self.slower * self.ref)
            if self.since >= self.period or slowed:
                self.trying = next(c for c in self.counts if c != self.current)
                self.times[self.trying] = []
                self.since = 0
                torch.set_num_threads(self.trying)
            return
        tried = self.times[self.trying]
        clearly_worse = (len(tried) >= self.recent and self._median(self.trying)
                         > self.slower * self._median(self.current, self.recent))
        if self.since >= self.window or clearly_worse:
            if self._median(self.trying) < self._median(self.current, self.recent):
                self.current = self.trying
            self.trying, self.since = None, 0
            self.times = {c: (t[-self.recent:] if c == self.current else [])
                          for c, t in self.times.items()}
            self.ref = self._median(self.current)
            torch.set_num_threads(self.current)

    @property
    def threads(self) -> int:
        return self.trying or self.current


#: The repository root; committed weights live under it.
ROOT = Path(__file__).resolve().parents[1]
#: Interim weights (below a model's ship gate), committed so that the next run starts from them.
INTERIM_DIR = ROOT / "training" / "checkpoints"


def add_cpu_args(p: argparse.ArgumentParser) -> None:
    """The options every training script shares for long CPU runs across sessions."""
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast of the training step (fp32 master weights); 'auto' "
                        "(default) uses it where the CPU or GPU computes bf16 natively, "
                        "fp32 elsewhere (emulated bf16 is many times slower)")
    p.add_argument("--scratch", action="store_true",
                   help="start a new run from random weights even if weights are committed")
    p.add_argument("--average", type=float, default=None, metavar="DECAY",
                   help="validate and export an exponential moving average of the weights "
                        "with this decay per step (e.g. 0.999: about the last 1,000 steps); "
                        "default: the weights as trained")


def average_flag(run_args: dict[str, Any]) -> str:
    """The ``--average`` option of a card's reproduction command ('' when the run had none)."""
    return f" --average {run_args['average']:g}" if run_args.get("average") else ""


def averaged_note(meta: dict[str, Any]) -> str:
    """What a card's "selected at" row adds when the weights are a running average."""
    a = meta.get("averaged")
    if not a:
        return ""
    return (f"; the parameters are the exponential moving average of the trained ones (decay "
            f"{a['decay']:g}, {a['updates']:,} steps averaged)")


def committed_weights(file_stem: str, root: Path | None = None,
                      interim: Path | None = None) -> Path | None:
    """The newest committed weights ``<file_stem>.safetensors``: the interim checkpoint (below
    the ship gate, ``training/checkpoints/``) or the shipped model (``models/``); None if
    neither exists. A run whose folder is gone starts from these, so no CPU hour is lost
    between sessions."""
    for folder in (interim or INTERIM_DIR, (root or ROOT) / "models"):
        path = folder / f"{file_stem}.safetensors"
        if path.is_file():
            return path
    return None


def retire_interim(stems: Sequence[str], interim: Path | None = None) -> list[Path]:
    """Remove the interim files (weights, card, curve) of models that have just shipped: the
    shipped model supersedes them, and :func:`committed_weights` would otherwise keep starting
    new runs from the older interim weights. Returns what was removed."""
    folder = interim or INTERIM_DIR
    gone = []
    for stem in stems:
        for path in (folder / f"{stem}.safetensors", folder / f"{stem}.md",
                     folder / f"{stem}-curve.png"):
            if path.is_file():
                path.unlink()
                gone.append(path)
    return gone


def resolve_start(args: argparse.Namespace, file_stem: str, **where: Path) -> bool:
    """Set ``args.init_weights`` to the committed weights when the run folder has no checkpoint
    (and none was given, and not ``--scratch``); True when the run starts from trained weights."""
    from napari_medenhance.core.training import LAST

    fresh = not (args.out / LAST).exists() or not args.resume
    if (fresh and args.init_weights is None and not getattr(args, "scratch", False)
            and not getattr(args, "export", False)):
        args.init_weights = committed_weights(file_stem, **where)
        if args.init_weights is not None:
            print(f"no checkpoint in {args.out}: starting from the committed {args.init_weights}")
    return args.init_weights is not None


def run_training(
    args: argparse.Namespace,
    recipe: Any,
    dev: torch.device,
    *,
    describe: Callable[[dict[str, float]], str],
    shown: Sequence[str] | None = None,
    fmt: str = ".4f",
) -> bool:
    """Train (or resume) with a tqdm bar and a clean Ctrl-C; True when the run reached ``--steps``.

    ``describe(metrics)`` is the recipe's one-line validation summary; ``shown`` the loss names
    on the bar (all when None), formatted with ``fmt``. The session (hardware, steps, speed) is
    appended to ``<out>/run.json`` for the model card.
    """
    from tqdm import tqdm

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest conv once
    # A machine that is shut down sends SIGTERM: stop at the next step with a checkpoint too.
    # The stretch records the arithmetic it really ran in ('auto' resolved on this machine).
    precision = resolve_precision(getattr(args, "precision", "fp32"), dev)
    with GracefulStop(tqdm.write, term=True) as stop:
        # "id" tells two sessions apart that start within the same second (a short resume).
        session: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "id": uuid.uuid4().hex[:12],
                                   "hardware": hardware(dev), "torch": torch.__version__}
        gen = train(
            recipe, steps=args.steps, out_dir=args.out, batch=args.batch, patch=args.patch,
            lr=args.lr, device=dev, val_every=args.val_every, ckpt_every=args.ckpt_every,
            seed=args.seed, resume=args.resume, init_weights=args.init_weights,
            cancel=lambda: stop.requested, precision=precision,
            average=getattr(args, "average", None),
        )
        bar = None
        first = None
        t0 = time.perf_counter()
        result = None
        threads = AdaptiveThreads([torch.get_num_threads(), 1]) if dev.type == "cpu" else None

        def record_stretch(last: int) -> None:
            dt = time.perf_counter() - t0
            session.update(first_step=first, last_step=last,
                           steps_per_s=round((last - first) / dt, 3) if dt > 0 else None,
                           batch=args.batch, patch=args.patch,
                           precision=precision, planned=args.steps,
                           average=getattr(args, "average", None))
            upsert_session(args, session)

        def show(ev) -> None:
            nonlocal bar, first, t0
            if threads is not None and ev.kind == "step":
                threads.step()
            elif threads is not None:
                threads.interrupted()
            if bar is None:
                bar = tqdm(total=ev.total, initial=ev.step - 1 if ev.kind == "step" else ev.step,
                           unit="step", dynamic_ncols=True)
            if ev.kind == "step":
                if first is None:
                    first, t0 = ev.step, time.perf_counter()
                bar.update(1)
                losses = {k: format(v, fmt) for k, v in ev.losses.items() if shown is None or k in shown}
                extra = {"threads": threads.threads} if threads is not None else {}
                bar.set_postfix({**losses, "lr": f"{ev.lr:.2e}", **extra}, refresh=False)
            elif ev.kind == "validation":
                tqdm.write(f"step {ev.step}: {describe(ev.metrics)}" + ("  * best" if ev.path else ""))
                record_validation(args.out, ev.step, ev.metrics, best=ev.path is not None)
            elif ev.kind == "checkpoint" and first is not None:
                # run.json is kept current at every checkpoint, so a run killed without warning
                # still has its stretch (hardware, steps, speed) on record for the model card.
                record_stretch(ev.step)
            elif ev.kind == "cancelled":
                tqdm.write(f"stopped at step {ev.step}; resume with the same command ({ev.path})")

        try:
            result = drive(gen, show)
        finally:
            if bar is not None:
                bar.close()
            if first is not None and result is not None:
                record_stretch(result.steps)
    return bool(result is not None and not result.cancelled)


def upsert_session(args: argparse.Namespace, session: dict[str, Any]) -> None:
    """Add this session to ``<out>/run.json`` (or update it: same ``started``), atomically, with
    the run-record reader and writer of the training library (``core.training.runs``)."""
    info = read_record(args.out)
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if getattr(args, "init_weights", None) and "init_weights" not in info:
        # The weights the run started from (a stage's predecessor), kept across resumes.
        info["init_weights"] = str(Path(args.init_weights).resolve())
        # A committed file is replaced when a later export ships: its hash tells them apart.
        info["init_sha256"] = sha256(Path(args.init_weights))
    sessions = [s for s in info.get("sessions", [])
                if s.get("id", s.get("started")) != session.get("id", session["started"])]
    info["sessions"] = [*sessions, dict(session)]
    write_record(args.out, info)


#: The command-line settings a stage records (scripts may add their own).
STAGE_ARGS = ("batch", "patch", "lr", "seed", "precision", "average")

#: Stages of weights exported before their headers carried ``stages``, keyed by the weights'
#: sha256 (reconstructed from the cards committed with them), so that a model's card and curve
#: still cover every step trained since it started from random weights.
RECORDED_STAGES = Path(__file__).resolve().parent / "recorded_stages.json"


def committed_stages(weights: Path | None, arch: str) -> list[dict[str, Any]]:
    """The training stages behind ``weights``: their header's ``stages``, else those
    :data:`RECORDED_STAGES` holds for this very file (by sha256), else none."""
    from napari_medenhance.core.weights import read_header

    if weights is None or not Path(weights).is_file():
        return []
    stages = read_header(weights, expected_arch=arch)["meta"].get("stages")
    if stages:
        return list(stages)
    if RECORDED_STAGES.is_file():
        known = json.loads(RECORDED_STAGES.read_text(encoding="utf-8"))
        entry = known.get(sha256(Path(weights)))
        if entry:
            return list(entry["stages"])
    return []


def training_stages(out: Path, meta: dict[str, Any], objective: str, *, arch: str,
                    describe: Callable[[dict[str, Any]], str],
                    psnr: float | None = None, extra_args: Sequence[str] = (),
                    recorded: Sequence[dict] = ()) -> list[dict]:
    """The training stages behind a run's best weights, oldest first: the stages recorded in
    the weights the run started from (an exported model keeps its ``stages``; a run's best is
    described by its header, ``describe(meta)`` naming its objective, and the ``run.json``
    beside it), then this run (``out``, its best weights' header ``meta``, ``objective``).

    Each stage: ``objective, run`` (folder), ``from`` (starting weights' file name or None),
    ``steps`` (the stage's length), ``selected_step``, ``psnr``, ``sessions`` (``run.json``),
    ``args`` (the :data:`STAGE_ARGS` and ``extra_args`` it ran with), ``history`` (its
    validations, :func:`compact_history`, so a model's curve outlives its run folders).

    ``recorded``: the stages a committed model records (:func:`committed_stages`). When the
    weights this run started from are gone (interim weights retired once the model shipped,
    or a committed file replaced since: ``run.json`` keeps its sha256), the stages before this
    run are taken from there, so exporting the run again keeps them.
    """
    from napari_medenhance.core.weights import read_header

    keys = (*STAGE_ARGS, *extra_args)

    def record(folder: Path) -> dict[str, Any]:
        path = folder / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def chain(folder: Path, meta: dict[str, Any], objective: str, psnr: float | None,
              depth: int) -> list[dict]:
        run = record(folder)
        init = run.get("init_weights") or run.get("args", {}).get("init_weights")
        # A stage is this run when its folder, starting weights and first session are this
        # run's: a later run in a folder of the same name (a fresh machine) is a new stage.
        first = (run.get("sessions") or [{}])[0].get("started")
        start = Path(init).name if init else None

        def is_this_run(st: dict) -> bool:
            if (Path(st.get("run") or "").resolve() != folder.resolve()
                    or st.get("from", start) != start):
                return False
            theirs = (st.get("sessions") or [{}])[0].get("started")
            return theirs is None or first is None or theirs == first

        before: list[dict] = []
        same = bool(init) and Path(init).is_file() and (
            "init_sha256" not in run or sha256(Path(init)) == run["init_sha256"])
        if same:
            h = read_header(init, expected_arch=arch)["meta"]
            # An exported model carries its stages; a run's best weights lead to the run
            # folder beside them, whose own start is followed in turn.
            before = committed_stages(Path(init), arch)
            if not before and depth < 10 and Path(init).parent.resolve() != folder.resolve():
                before = chain(Path(init).parent, h, describe(h),
                               (h.get("metrics") or {}).get("psnr"), depth + 1)
        elif init and depth == 0:
            here = [i for i, st in enumerate(recorded) if is_this_run(st)]
            if here:
                before = list(recorded[:here[0]])
        # Weights that record this very run (it was exported, then re-read) end the chain there.
        mine = [i for i, st in enumerate(before) if is_this_run(st)]
        before = [with_history(st) for st in before[:mine[0] if mine else len(before)]]
        this = {"objective": objective, "run": str(folder),
                "from": start,
                "steps": meta.get("total"), "selected_step": meta.get("step"),
                "psnr": psnr if psnr is not None else (meta.get("metrics") or {}).get("psnr"),
                "sessions": run.get("sessions", []),
                "args": {k: run.get("args", {}).get(k) for k in keys},
                "history": compact_history(read_history(folder))}
        if not this["history"] and meta.get("metrics") and meta.get("step") is not None:
            # weights whose run folder is gone: their own validation is the one point known
            this["history"] = compact_history([{"step": meta["step"], "metrics": meta["metrics"]}])
        return [*before, this]

    return chain(Path(out), meta, objective, psnr, 0)


def stretch_steps(session: dict[str, Any]) -> str:
    """A session's steps for a card: "2302–4059", with the run's planned length (its cosine
    schedule) and weight averaging when they were recorded: "2302–4059 of 20000, averaged"."""
    text = f"{session.get('first_step', '?')}–{session.get('last_step', '?')}"
    if session.get("planned"):
        text += f" of {session['planned']}"
    if session.get("average"):
        text += f", averaged ({session['average']:g})"
    return text


def stages_table(stages: Sequence[dict[str, Any]],
                 columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]] = ()) -> list[str]:
    """Markdown rows of a model's card, one per training stage (oldest first): objective, the
    extra ``(heading, cell(stage))`` columns, starting weights, batch × patch and learning
    rate, planned steps, selected step, CPU hours and the selected weights' mean validation PSNR."""
    head = ["stage", "objective", *(h for h, _ in columns), "started from", "batch × patch, lr",
            "steps", "selected at", "CPU hours", "mean val PSNR"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, st in enumerate(stages, 1):
        psnr = st.get("psnr")
        a = st.get("args") or {}
        rows.append(f"| {i} | {st['objective']} | "
                    + "".join(f"{cell(st)} | " for _, cell in columns)
                    + f"{st.get('from') or 'random'} | "
                    f"{a.get('batch', '?')} × {a.get('patch', '?')}, {a.get('lr', '?')} | "
                    f"{st.get('steps')} | {st.get('selected_step')} | {cpu_hours(st):.2f} | "
                    + (f"{psnr:.2f} dB" if isinstance(psnr, (int, float)) else "—") + " |")
    return rows


def stretches_table(stages: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows of a model's card, one per session of every stage: when it started, the
    hardware and torch, its steps (:func:`stretch_steps`), speed, batch × patch and precision."""
    rows = ["| stage | started | hardware | torch | steps | steps/s | batch × patch | precision |",
            "|---|---|---|---|---|---|---|---|"]
    for i, st in enumerate(stages, 1):
        for s in st.get("sessions") or [{"hardware": "not recorded"}]:
            speed = f"{s.get('steps_per_s', '?')}" + (f" ({s['note']})" if s.get("note") else "")
            rows.append(f"| {i} | {s.get('started', '?')} | {s.get('hardware')} | "
                        f"{s.get('torch', '?')} | {stretch_steps(s)} | {speed} | "
                        f"{s.get('batch', '?')} × {s.get('patch', '?')} | "
                        f"{s.get('precision', 'fp32')} |")
    return rows


def cpu_hours(stage: dict) -> float:
    """Training time of a stage from its sessions (steps / steps per second)."""
    return sum((s["last_step"] - s["first_step"]) / s["steps_per_s"] / 3600.0
               for s in stage.get("sessions", [])
               if s.get("steps_per_s") and s.get("last_step") is not None
               and s.get("first_step") is not None)


#: One JSON line per validation: the curve of a run (``plot_history``), kept across resumes.
HISTORY = "history.jsonl"


def record_validation(out: Path, step: int, metrics: dict[str, float], *, best: bool) -> None:
    with (Path(out) / HISTORY).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "best": best, "metrics": metrics}) + "\n")


def read_history(out: Path) -> list[dict[str, Any]]:
    """The validations of a run, by step (a step validated twice, e.g. after a resume, keeps
    its last record)."""
    path = Path(out) / HISTORY
    if not path.exists():
        return []
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["step"]] = r
    return [rows[k] for k in sorted(rows)]


def compact_history(hist: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"step", "metrics"}]`` of :func:`read_history` rows, numbers rounded to 4 decimals:
    small enough to travel in a weights header."""
    return [{"step": int(h["step"]),
             "metrics": {k: round(float(v), 4) for k, v in (h.get("metrics") or {}).items()
                         if isinstance(v, (int, float)) and np.isfinite(v)}}
            for h in hist]


def with_history(stage: dict[str, Any]) -> dict[str, Any]:
    """``stage`` with its ``history`` (as recorded, else from its run folder's
    ``history.jsonl`` when that folder still holds this stage: the selected step was validated
    there and nothing past the stage's length was, so a folder a later stage reused is not
    taken for this one's)."""
    if stage.get("history") or not stage.get("run"):
        return stage
    hist = read_history(Path(stage["run"]))
    steps = {h["step"] for h in hist}
    if (not hist or stage.get("selected_step") not in steps
            or (stage.get("steps") is not None and max(steps) > int(stage["steps"]))):
        return stage
    return {**stage, "history": compact_history(hist)}


def steps_trained(stage: dict[str, Any]) -> int:
    """Steps a stage has trained: its sessions' last step (a stage still running, or cut
    short), else its planned length, else (weights that recorded neither) its selected step."""
    done = [int(x["last_step"]) for x in stage.get("sessions") or [] if x.get("last_step") is not None]
    return max(done) if done else int(stage.get("steps") or stage.get("selected_step") or 0)


def stage_curves(stages: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any], list[dict]]]:
    """``[(offset, stage, history)]`` oldest first: each stage's validations on one axis of
    training steps in the order they were trained (a stage's step 0 comes after every step of
    the stages before it, though it starts from their selected weights). A stage without a
    history gives its selected step's ``psnr`` only (``history`` one row with ``{"psnr"}``)."""
    out = []
    offset = 0
    for st in stages:
        st = with_history(st)
        hist = st.get("history") or []
        if not hist and st.get("psnr") is not None and st.get("selected_step") is not None:
            hist = [{"step": int(st["selected_step"]), "metrics": {"psnr": float(st["psnr"])}}]
        out.append((offset, st, list(hist)))
        offset += steps_trained(st)
    return out


def gain_over_last_third(stages: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """How much the best validation ``key`` grew over the last third of the stages' training:
    ``{"total_steps"`` (every step trained, all stages), ``"end"`` (the last validated step
    on :func:`stage_curves`' axis), ``"from_step"`` (where the last third starts),
    ``"before"`` (best up to there), ``"after"`` (best overall), ``"gain"``}``; None without
    validations. The done-when rule of the training issues: less than 0.05 dB over the last
    third of at least N steps."""
    pts = [(off + h["step"], h["metrics"][key]) for off, _, hist in stage_curves(stages)
           for h in hist if key in h["metrics"]]
    if not pts:
        return None
    end = max(x for x, _ in pts)
    start = end - end / 3
    before = max((v for x, v in pts if x <= start), default=float("nan"))
    after = max(v for _, v in pts)
    return {"total_steps": float(sum(steps_trained(st) for st in stages)),
            "end": float(end), "from_step": float(start), "before": before, "after": after,
            "gain": after - before}


def print_last_third(stages: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Print :func:`gain_over_last_third` of ``key`` as the ``--curve`` option of the training
    scripts reports it; returns it."""
    gain = gain_over_last_third(stages, key)
    if gain:
        print(f"{key}: best {gain['before']:.3f} dB up to step {gain['from_step']:,.0f} of "
              f"{gain['end']:,.0f} trained, {gain['after']:.3f} after: {gain['gain']:+.3f} dB "
              f"over the last third; {gain['total_steps']:,.0f} steps trained in all")
    return gain


def averaged_at(step: int, sessions: Sequence[dict[str, Any]]) -> bool:
    """Whether validation at ``step`` saw averaged weights: a session that averaged ran it."""
    return any(s.get("average") and s.get("first_step") is not None
               and s.get("last_step") is not None and s["first_step"] <= step <= s["last_step"]
               for s in sessions)


def history_table(hist: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                  sessions: Sequence[dict[str, Any]] = (), fmt: str = ".2f") -> list[str]:
    """Markdown rows of a run's validations (``read_history``): the step, whether the weights
    were averaged then, one column per ``(metric key, heading)`` and the best mark, so a card
    carries the numbers behind its curve instead of a hand-written summary of them."""
    head = ["step", "averaged", *(h for _, h in columns), "best so far"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for h in hist:
        m = h["metrics"]
        cells = [f"{h['step']:,}", "yes" if averaged_at(h["step"], sessions) else "no",
                 *(format(m[k], fmt) if k in m else "–" for k, _ in columns),
                 "**yes**" if h.get("best") else ""]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def curve_figure():
    """``(fig, ax)``: a new 6.4 × 3.6 inch figure for a validation curve (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 3.6), dpi=100)


def save_curve(fig, ax, png: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend ``ax``, write ``fig`` to ``png`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(ax.get_lines()) > 4 else 1)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def as_fp16_then_fp32(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
