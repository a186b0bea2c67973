"""What new batch shapes cost on a CPU: step times of the first epoch against the second, by padding policy.

oneDNN builds kernels for every new input shape, so the first time a run meets a padded width
costs more than the later times. With batches padded to their longest row (a multiple of 1, the
float32 default before length buckets), a run meets up to ``max_length`` widths; rounding widths
up to a multiple, or to a few buckets per doubling of length (``--data.length_buckets``), trades
a little padding for far fewer shapes.

Each variant is a fresh ``python -m trainer`` process (kernel caches start empty) on the same IMDB
examples, 2 epochs, logging every step; variants alternate within each repeat. A step's time is
the gap between its record in ``metrics.jsonl`` and the record before it (validation and checkpoints
are records of their own, so they are not counted). Variants are ``m<multiple>b<buckets>``:
``m1b0`` pads to the longest row, ``m8b0`` to a multiple of 8, ``m1b8`` to 8 buckets per doubling.

    python benchmarks/bench_shapes.py                                 # float32, about 12 minutes
    python benchmarks/bench_shapes.py --precision bf16 --variants m8b0,m8b8 --repeats 1
    python benchmarks/bench_shapes.py --tiny --out shapes.json   # a check in seconds, on generated reviews

``--tiny``: 600 generated reviews (64 tokens at most), variants m1b0 and m8b8 once each, unless
told otherwise. The `imdb` preset validates on whole movies where the CSV has IMDB's
``movie_id`` column, else on a random carve. Prints the CPU, one line per run, and one JSON object
last (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"

from bench_cli import add_options, finish, imdb_group_overrides, parse, require_file, tiny_reviews_csv  # noqa: E402

from trainer.config import load_config  # noqa: E402
from trainer.data import LengthGroupedBatchSampler, lengths_of, prepare_data  # noqa: E402
from trainer.data.tokenizer import padded_width  # noqa: E402
from trainer.errors import UserError  # noqa: E402
from trainer.hardware import cpu_info  # noqa: E402

VARIANT = re.compile(r"^m(\d+)b(\d+)$")


def parse_variant(name: str) -> tuple[int, int]:
    match = VARIANT.match(name)
    if not match:
        raise UserError(f"variant {name!r} is not m<multiple>b<buckets>, e.g. m1b0, m8b0, m1b8")
    return int(match[1]), int(match[2])


def shapes(lengths: list[int], batch_size: int, seed: int, epochs: int, multiple: int, buckets: int) -> dict:
    """New widths met in each epoch, and the share of computed tokens that are real."""
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=seed)
    seen: set[int] = set()
    new_per_epoch, real, computed = [], 0, 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        before = len(seen)
        for batch in sampler:
            width = padded_width(max(lengths[i] for i in batch), multiple, buckets)
            seen.add(width)
            real += sum(lengths[i] for i in batch)
            computed += width * len(batch)
        new_per_epoch.append(len(seen) - before)
    return {"new_widths_per_epoch": new_per_epoch, "padding_efficiency": round(real / computed, 4)}


def step_seconds(metrics: Path) -> dict[int, list[float]]:
    """Each training step's seconds, by epoch (1-based)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    by_epoch: dict[int, list[float]] = {}
    previous = 0.0
    for record in records:
        if "train/loss" in record:
            epoch = int((record["epoch"] - 1e-9) // 1) + 1
            by_epoch.setdefault(epoch, []).append(record["elapsed_s"] - previous)
        previous = record["elapsed_s"]
    return by_epoch


def run(variant: str, args: argparse.Namespace, work: Path, extra: list[str]) -> dict:
    multiple, buckets = parse_variant(variant)
    out = work / f"{variant}-{len(list(work.iterdir()))}"
    command = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        "imdb",
        f"--data.train_files={args.data}",
        *imdb_group_overrides(args.data),
        f"--data.max_train_examples={args.examples}",
        "--data.max_eval_examples=500",
        f"--data.max_length={args.max_length}",
        f"--train.epochs={args.epochs}",
        "--train.log_every_steps=1",
        f"--train.mixed_precision={args.precision}",
        f"--data.pad_to_multiple_of={multiple}",
        f"--data.length_buckets={buckets}",
        "--logging.tracker=none",
        "--logging.plots=false",
        "--checkpoint.save_best=false",
        "--checkpoint.save_final=false",
        f"--train.output_dir={out}",
        *extra,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{variant} failed:\n{result.stderr[-3000:]}")
    by_epoch = step_seconds(out / "metrics.jsonl")
    means = {epoch: statistics.fmean(times) for epoch, times in by_epoch.items()}
    return {"epoch_step_s": means, "train_s": sum(sum(times) for times in by_epoch.values())}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(IMDB), help="IMDB train.csv.gz (../shared/data)")
    parser.add_argument("--variants", help="default m1b0,m8b0,m16b0,m1b8,m1b4 (m1b0,m8b8 with --tiny)")
    parser.add_argument("--precision", default="no", help="no (float32) or bf16")
    parser.add_argument("--examples", type=int, help="training examples (default 6000; 500 with --tiny)")
    parser.add_argument("--max-length", type=int, help="default 512 (64 with --tiny)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="default 2 (1 with --tiny)")
    parser.add_argument("trainer_args", nargs="*", help="after --: more trainer arguments")
    add_options(parser, "600 generated reviews, 2 variants once: a check of this script, in seconds")
    args = parse(parser)
    tiny = {"variants": "m1b0,m8b8", "examples": 500, "max_length": 64, "repeats": 1}
    full = {"variants": "m1b0,m8b0,m16b0,m1b8,m1b4", "examples": 6000, "max_length": 512, "repeats": 2}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    variants = args.variants.split(",")
    for variant in variants:
        parse_variant(variant)
    with tempfile.TemporaryDirectory() as work:
        if args.tiny:
            args.data = str(tiny_reviews_csv(Path(work) / "reviews.csv"))
        require_file(args.data, "IMDB's train.csv.gz (../shared/data)")
        return finish(args, measure(args, variants))


def measure(args: argparse.Namespace, variants: list[str]) -> dict:

    # The data once, here: it fills the cache every run then reads, and gives the batch widths.
    config = load_config(
        "imdb",
        [
            f"--data.train_files={args.data}",
            *imdb_group_overrides(args.data),
            f"--data.max_train_examples={args.examples}",
            "--data.max_eval_examples=500",
            f"--data.max_length={args.max_length}",
        ],
    )
    data = prepare_data(config.data, config.tokenizer)
    lengths = lengths_of(data.train)

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in variants:
                result = run(variant, args, Path(tmp), args.trainer_args)
                runs[variant].append(result)
                steps = ", ".join(f"epoch {e} {s * 1000:.0f} ms" for e, s in result["epoch_step_s"].items())
                print(f"repeat {repeat + 1} {variant}: {steps}; {result['train_s']:.1f} s of steps", flush=True)
    summary = {}
    for variant in variants:
        multiple, buckets = parse_variant(variant)
        epochs = runs[variant][0]["epoch_step_s"].keys()
        step_ms = {
            f"epoch_{e}": round(statistics.median(r["epoch_step_s"][e] for r in runs[variant]) * 1000, 1)
            for e in epochs
        }
        summary[variant] = {
            "step_ms": step_ms,
            "first_over_later": round(step_ms["epoch_1"] / step_ms[f"epoch_{max(epochs)}"], 3),
            "train_s": round(statistics.median(r["train_s"] for r in runs[variant]), 1),
            **shapes(lengths, config.train.batch_size, config.train.seed, args.epochs, multiple, buckets),
        }
    baseline = summary[variants[0]]["train_s"]
    for variant in variants:
        summary[variant]["train_time_vs_first_variant"] = round(summary[variant]["train_s"] / baseline, 3)
    return {
        "cpu": cpu_info(),
        "precision": args.precision,
        "examples": args.examples,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "variants": summary,
    }


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
