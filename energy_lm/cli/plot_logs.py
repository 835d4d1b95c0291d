"""`energy-lm-plot`: train/valid loss curves of several fairseq runs, as one PNG.

    energy-lm-plot ce=ce.log monarc=monarc.log -o loss_curves.png
    energy-lm-plot ce.log monarc.log --metrics 'lm_loss|loss,elm_loss' --x wall --smooth 0.6
    energy-lm-plot runs/tb-ce runs/tb-monarc          # --tensorboard-logdir folders

Inputs, each `PATH` or `LABEL=PATH` (the label defaults to the file or folder name):

- a log of `fairseq-train --log-format json`, either its captured stdout
  (`... | INFO | train_inner | {...}`) or its `--log-file` (bare JSON lines). Lines that
  are not a JSON object are skipped. A record is classified by its keys, which works for
  both: an unprefixed `num_updates` is a `train_inner` record; `TAG_num_updates` is the
  end-of-epoch `train` record or a validation subset (`valid`, ...), and `TAG_` is
  stripped from its keys. fairseq writes numbers as strings ("11.064"); they are read
  back as floats. When a run logs one update twice (a resumed run) the later record wins.
- a `--tensorboard-logdir` folder: fairseq writes one sub-folder per tag (`train_inner/`,
  `valid/`, `train/`) of event files, read here by tensorboard's own reader: every scalar
  fairseq wrote with `SummaryWriter.add_scalar`; a record still being written, or a
  corrupt one, ends what is read of that file (tensorboard's rule).

Each metric gets one subplot with, per run, the train curve (the `train_inner` records,
or the end-of-epoch `train` records for a log without any) as a solid line and each
validation subset as a dashed line with markers. Values are plotted as logged: fairseq
criterions, ours included, log losses in base 2. `--metrics` takes a comma-separated
list; `a|b` plots, for each run, the first of `a`, `b` it logged (e.g. `lm_loss|loss`
puts MonArc's LM loss next to cross-entropy's loss). The default is every loss-like key
in the logs (`loss`, `nll_loss`, `lm_loss`, `elm_loss`, `ebm_loss`, ...). `--x wall`
uses fairseq's cumulative `wall` seconds; validation records carry none, so they are
placed at the wall time of the training records around their update (interpolated).
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from energy_lm.cli.errors import run_reporting_errors

# tag -> num_updates -> {metric: value}
Points = Dict[str, Dict[int, Dict[str, float]]]

TRAIN_TAGS = ("train_inner", "train")
PREFERRED = ("loss", "nll_loss", "lm_loss", "elm_loss", "ebm_loss")


class PlotLogsError(ValueError):
    pass


@dataclass
class Run:
    label: str
    path: Path
    points: Points

    def keys(self) -> set:
        return {k for by_step in self.points.values() for values in by_step.values()
                for k in values}


# ---------------------------------------------------------------- fairseq JSON logs

def _number(value) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _classify(record: dict):
    """A fairseq stats dict -> (tag, num_updates, {metric: float}), or None."""
    if "num_updates" in record:
        tag, prefix = "train_inner", ""
    else:
        ends = [k for k in record if k.endswith("_num_updates")]
        if not ends:
            return None
        tag = ends[0][: -len("_num_updates")]
        prefix = tag + "_"
    values = {}
    for key, value in record.items():
        number = _number(value)
        if number is None or key in ("epoch", "update") or not key.startswith(prefix):
            continue
        values[key[len(prefix):]] = number
    step = values.pop("num_updates", None)
    return None if step is None else (tag, int(step), values)


def parse_json_log(lines) -> Points:
    decoder = json.JSONDecoder()
    points: Points = {}
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            record, _ = decoder.raw_decode(line, start)
        except ValueError:  # e.g. the Python repr of the config that fairseq logs
            continue
        parsed = _classify(record) if isinstance(record, dict) else None
        if parsed is not None:
            tag, step, values = parsed
            points.setdefault(tag, {})[step] = values
    return points


# ---------------------------------------------------------------- TensorBoard event files

def parse_tensorboard_dir(root: Path) -> Points:
    """Every scalar of every event folder under root, read by tensorboard's own reader
    (`EventAccumulator`, all points kept); the folder's path below root is the tag."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    points: Points = {}
    for folder in sorted({path.parent for path in root.rglob("events.out.tfevents.*")}):
        tag = folder.relative_to(root).as_posix()
        tag = root.name if tag == "." else tag  # pointed at one tag's folder
        events = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep all
        events.Reload()
        for key in events.Tags()["scalars"]:
            for event in events.Scalars(key):
                points.setdefault(tag, {}).setdefault(event.step, {})[key] = event.value
    return points


# ---------------------------------------------------------------- runs and metrics

def load_run(spec: str) -> Run:
    label, path = None, Path(spec)
    if "=" in spec and not path.exists():  # LABEL=PATH (a path with '=' in it still works)
        label, path = spec.split("=", 1)
        path = Path(path)
    if not path.exists():
        raise PlotLogsError(f"log not found: {path}")
    if path.is_dir():
        points = parse_tensorboard_dir(path)
        if not points:
            raise PlotLogsError(f"no TensorBoard scalars (events.out.tfevents.*) under {path}")
    else:
        with open(path, errors="replace") as f:
            points = parse_json_log(f)
        if not points:
            raise PlotLogsError(f"no fairseq JSON records in {path} "
                                "(was it written with --log-format json?)")
    return Run(label or (path.name if path.is_dir() else path.stem), path, points)


def default_metrics(runs: List[Run]) -> List[str]:
    keys = set().union(*(run.keys() for run in runs))
    losses = {k for k in keys if "loss" in k and not k.startswith("best_")}
    return [k for k in PREFERRED if k in losses] + sorted(losses - set(PREFERRED))


def check_metrics(specs: List[str], runs: List[Run]) -> None:
    keys = set().union(*(run.keys() for run in runs))
    for spec in specs:
        if not any(alt in keys for alt in spec.split("|")):
            raise PlotLogsError(f"unknown metric {spec!r}; the logs have: "
                                f"{', '.join(sorted(keys))}")


def series(run: Run, tag: str, key: str, x: str):
    """(xs, ys) of one metric of one tag, in update order."""
    by_step = run.points.get(tag, {})
    steps = sorted(s for s, values in by_step.items() if key in values)
    ys = [by_step[s][key] for s in steps]
    if x == "updates":
        return [float(s) for s in steps], ys
    walls = {}
    for train_tag in reversed(TRAIN_TAGS):  # train_inner wins where both have a step
        by_train_step = run.points.get(train_tag, {})
        walls.update({s: v["wall"] for s, v in by_train_step.items() if "wall" in v})
    if not walls:
        raise PlotLogsError(f"{run.path}: no 'wall' times in the log; use --x updates")
    known = sorted(walls)
    fill = np.interp(steps, known, [walls[s] for s in known])
    return [by_step[s].get("wall", float(w)) for s, w in zip(steps, fill)], ys


def _ema(ys: List[float], alpha: float) -> List[float]:
    out, state = [], None
    for y in ys:
        state = y if state is None else alpha * state + (1 - alpha) * y
        out.append(state)
    return out


def plot_runs(runs: List[Run], metrics: List[str], x: str = "updates", smooth: float = 0.0,
              columns: int = 2, title: Optional[str] = None):
    """A matplotlib Figure (Agg canvas) with one subplot per metric spec."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(metrics)))
    rows = -(-len(metrics) // columns)
    fig = Figure(figsize=(5.0 * columns, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    markers = "os^Dv*"
    for ax, spec in zip(axes, metrics):
        for i, run in enumerate(runs):
            keys = run.keys()
            key = next((alt for alt in spec.split("|") if alt in keys), None)
            if key is None:
                continue
            name = run.label if key == spec else f"{run.label} ({key})"
            train = next((t for t in TRAIN_TAGS if series(run, t, key, x)[0]), None)
            if train is not None:
                xs, ys = series(run, train, key, x)
                ax.plot(xs, _ema(ys, smooth) if smooth else ys, color=f"C{i}", lw=1.3,
                        alpha=0.85, label=f"{name} train")
            valid_tags = sorted(t for t in run.points if t not in TRAIN_TAGS)
            for j, tag in enumerate(valid_tags):
                xs, ys = series(run, tag, key, x)
                if xs:
                    ax.plot(xs, ys, color=f"C{i}", ls="--", marker=markers[j % len(markers)],
                            ms=3.5, lw=1.1, alpha=0.85, label=f"{name} {tag}")
        ax.set_title(spec)
        ax.set_xlabel("updates" if x == "updates" else "wall time (s)")
        if "loss" in spec:
            ax.set_ylabel("as logged (base 2)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy-lm-plot", description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="Inputs: fairseq-train logs written with --log-format json (stdout or "
               "--log-file) or --tensorboard-logdir folders (scalars only). Losses are "
               "plotted as logged (base 2 for fairseq criterions).")
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]PATH",
                        help="a JSON log file or a TensorBoard log folder, optionally labelled")
    parser.add_argument("-o", "--out", default="loss_curves.png", help="PNG to write")
    parser.add_argument("--metrics", help="comma-separated metrics, 'a|b' = first one a run has "
                                          "(default: every loss-like key in the logs)")
    parser.add_argument("--x", choices=["updates", "wall"], default="updates",
                        help="x axis: num_updates or fairseq's wall seconds")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="exponential smoothing of the train curves, in [0, 1) (default 0)")
    parser.add_argument("--min-update", type=int, default=0,
                        help="leave out records before this update (e.g. the warm-up)")
    parser.add_argument("--columns", type=int, default=2, help="subplots per row (default 2)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    """Write the PNG; returns {"png": path, "figure": Figure, "panels": {metric: [labels]}}."""
    args = _parser().parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        raise PlotLogsError(f"--smooth must be in [0, 1), got {args.smooth}")
    runs = [load_run(spec) for spec in args.runs]
    for run in runs:
        run.points = {tag: {s: v for s, v in by_step.items() if s >= args.min_update}
                      for tag, by_step in run.points.items()}
        if not any(run.points.values()):
            raise PlotLogsError(f"{run.path}: no records from update {args.min_update} on")
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        check_metrics(metrics, runs)
    else:
        metrics = default_metrics(runs)
        if not metrics:
            keys = sorted(set().union(*(run.keys() for run in runs)))
            raise PlotLogsError(f"no loss-like metric in the logs; choose with --metrics from: "
                                f"{', '.join(keys)}")
    fig = plot_runs(runs, metrics, x=args.x, smooth=args.smooth, columns=args.columns,
                    title=args.title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    panels = {spec: [line.get_label() for line in ax.lines] for spec, ax in zip(metrics, fig.axes)}
    print(f"wrote {out} ({len(panels)} subplots, {sum(map(len, panels.values()))} curves)")
    return {"png": out, "figure": fig, "panels": panels}


def cli_main() -> None:
    import logging

    # importing fairseq leaves the root logger at DEBUG (its text-to-speech tasks call
    # basicConfig); matplotlib's font search would then flood stderr
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    run_reporting_errors("energy-lm-plot", main, PlotLogsError)


if __name__ == "__main__":
    cli_main()
