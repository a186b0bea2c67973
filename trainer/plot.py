"""Training curves as PNG files: ``python -m trainer.plot RUN_DIR [--out DIR]``.

Reads ``RUN_DIR/metrics.jsonl`` and writes into ``RUN_DIR/plots/`` (or ``--out``):
- ``loss.png``: training loss and validation loss against step;
- ``metrics.png``: validation accuracy, F1 (and ROC-AUC for two classes) against step;
- ``lr.png``: the learning rate against step;
- ``throughput.png``: training tokens/s (real tokens, all processes) against step.
The trainer writes them at the end of every run. Each PNG carries the names and lengths of its
series in its ``Description`` text chunk (JSON), for tools and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from trainer.errors import UserError, check_kind, exit_for, flush_stdout, write_file

FIGURES = {
    "loss": ("loss", {"train/loss": "training", "eval/loss": "validation"}),
    "metrics": ("validation", {"eval/accuracy": "accuracy", "eval/f1": "F1", "eval/roc_auc": "ROC-AUC"}),
    "lr": ("learning rate", {"train/lr": "learning rate"}),
    "throughput": ("tokens per second", {"train/tokens_per_s": "training tokens/s"}),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``. A last line without its newline is a record still being
    written (a running job) or cut by a kill, and is left out; any other bad line is an error."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a run folder written by the trainer")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]  # last: "" when the file ends with a newline
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number} is not a JSON line ({exc.msg}); is this a trainer metrics file?") from exc
    if last.strip():
        with contextlib.suppress(json.JSONDecodeError):  # being written, or cut mid-write
            records.append(json.loads(last))
    return records


def save(fig, path: Path, series: dict[str, int]) -> None:
    """Write ``fig`` (its folder made if missing), recording how many points each series has; whole
    or not at all (``write_file``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Description": json.dumps({"series": series})}
    kind = Path(path).suffix.lstrip(".").lower() or "png"  # the temporary's name says none
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format=kind, metadata=metadata))


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the run's curves; returns the files written (figures with no data are skipped)."""
    run_dir = Path(run_dir)
    check_kind(run_dir, "folder", "a run folder written by the trainer (it holds metrics.jsonl)", "run folder")
    records = read_metrics(run_dir / "metrics.jsonl")
    out = Path(out_dir) if out_dir else run_dir / "plots"
    check_kind(out, "folder", "a folder for the PNG files", "--out")
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written = []
    for name, (ylabel, keys) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        series = {}
        for key, label in keys.items():
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            marker = "o" if key.startswith("eval/") else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3)
            series[label] = len(points)
        if series:
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{run_dir.name}: {ylabel}")
            ax.grid(alpha=0.3)
            if name == "loss" and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
                ax.set_yscale("log")
            if len(series) > 1:
                ax.legend()
            save(fig, out / f"{name}.png", series)
            written.append(out / f"{name}.png")
        plt.close(fig)
    return written


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path, title: str) -> Path:
    """A confusion matrix (rows: true label, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    size = 2.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), layout="constrained")
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, f"{count:,}", ha="center", va="center", color="white" if count > peak / 2 else "black")
    path = Path(path)
    save(fig, path, {"confusion_matrix": sum(len(row) for row in matrix)})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder (holds metrics.jsonl)")
    parser.add_argument("--out", help="where to write the PNG files (default RUN_DIR/plots)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        for path in plot_run(args.run_dir, args.out):
            print(path)
        flush_stdout()
    except Exception as exc:
        return exit_for(exc, args.debug)
    return 0


def draw_plots(run_dir: Path) -> None:
    """The run's curves into run_dir/plots; a drawing problem must not fail a finished run."""
    try:
        plot_run(run_dir)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        print(
            f"warning: could not draw the plots ({problem}); retry with python -m trainer.plot {run_dir}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
