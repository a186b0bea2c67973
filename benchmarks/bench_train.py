"""The trainer against the reference article's training, on IMDB, side by side in one invocation.

Both sides get the same data (IMDB train from ../shared/data, the trainer's fixed validation
split), the same tokenizer and token ids, the same model sizes, batch size and thread count;
each run is a fresh process, and the two alternate. Per side: real (non-padding) tokens/s,
examples/s, padding efficiency (real tokens / computed tokens), peak memory (max RSS), and the
time to reach a target validation accuracy (both validate on the same step schedule, and the time
counts everything after the data are ready). The last line is one JSON object with the medians
and the ratios ``tokens_per_s_speedup`` (ours / baseline) and ``time_to_target_speedup``
(baseline's time / ours): both read above 1 when the trainer is faster.

    python benchmarks/bench_train.py --quick        # about 2 minutes on 2 CPU cores
    python benchmarks/bench_train.py --repeats 3 --target 0.85 -- --train.epochs=2

    python benchmarks/bench_train.py --tiny --out train.json   # a check in seconds, on generated reviews

Arguments after -- go to both sides (trainer-style overrides on the `imdb` preset), which
validates on whole movies where the CSV has IMDB's ``movie_id`` column, else on a random carve.
``--tiny``: 600 generated reviews of 64 tokens at most, a model of 32/32, one epoch in batches of
32. The last line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, imdb_group_overrides, parse, require_file, tiny_reviews_csv  # noqa: E402

# Runs the trainer in this process and reports its peak memory on exit.
OURS = (
    "import json, resource, runpy, sys\n"
    "sys.argv = ['trainer', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('trainer', run_name='__main__')\n"
    "finally:\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "    print(json.dumps({'peak_rss_mb': round(peak)}), file=sys.stderr)\n"
)


def time_to_target(records: list[dict], target: float) -> float | None:
    for record in records:
        if record.get("eval/accuracy", 0) >= target:
            return record["elapsed_s"]
    return None


def run_ours(common: list[str], out: Path, env: dict) -> dict:
    # As ./launch/train.sh runs it on a CPU: bf16 autocast where the CPU runs bf16 natively.
    command = [
        sys.executable,
        "-c",
        OURS,
        "--train.mixed_precision=auto",
        *common,
        f"--train.output_dir={out}",
        "--logging.tracker=none",
        "--logging.plots=false",  # the run folder is temporary
    ]
    command += ["--checkpoint.save_best=false", "--checkpoint.save_final=false"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"trainer failed:\n{result.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/tokens_per_s" in r][1:] or [r for r in records if "train/tokens_per_s" in r]
    peak = json.loads(result.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    evals = [r for r in records if "eval/accuracy" in r]
    return {
        "tokens_per_s": statistics.median(r["train/tokens_per_s"] for r in train),
        "examples_per_s": statistics.median(r["train/examples_per_s"] for r in train),
        "padding_efficiency": padding_efficiency(out),
        "peak_rss_mb": peak,
        "final_val_accuracy": evals[-1]["eval/accuracy"],
        "evals": [(r["elapsed_s"], r["eval/accuracy"]) for r in evals],
    }


def padding_efficiency(run_dir: Path) -> float:
    """Real tokens over computed (padded) tokens for one epoch of the trainer's own batches."""
    sys.path.insert(0, str(REPO))
    from trainer.config import load_config
    from trainer.data import build_dataloaders, prepare_data

    config = load_config(str(run_dir / "config.yaml"), [])
    data = prepare_data(config.data, config.tokenizer)
    precision = json.loads((run_dir / "run_info.json").read_text())["mixed_precision"]
    batch_size = config.train.batch_size
    loader, _ = build_dataloaders(data, config.data, batch_size, batch_size, mixed_precision=precision != "no")
    real = computed = 0
    for batch in loader:
        real += int(batch["lengths"].sum())
        computed += batch["input_ids"].numel()
    return real / computed


def run_baseline(common: list[str], env: dict) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "reference_baseline.py"), *common]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"baseline failed:\n{result.stderr[-2000:]}")
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary, evals = lines[-1], [r for r in lines[:-1] if "eval/accuracy" in r]
    keys = ("tokens_per_s", "examples_per_s", "padding_efficiency", "peak_rss_mb", "final_val_accuracy")
    return {k: summary[k] for k in keys} | {"evals": [(r["elapsed_s"], r["eval/accuracy"]) for r in evals]}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2-minute comparison on a subset")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--target", type=float, default=None, help="validation accuracy to reach")
    parser.add_argument("--data", default=str(IMDB), help="IMDB train CSV (text,label)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("overrides", nargs="*", help="trainer-style overrides for both sides, after --")
    add_options(parser, "600 generated reviews, one epoch: a check of this script, in seconds")
    args = parse(parser)
    with tempfile.TemporaryDirectory() as work:
        if args.tiny:
            args.data = str(tiny_reviews_csv(Path(work) / "reviews.csv"))
        require_file(args.data, "the IMDB train CSV")
        return finish(args, compare(args))


def compare(args: argparse.Namespace) -> dict:
    from trainer.hardware import cpu_info

    common = ["--config", "imdb", f"--data.train_files={args.data}", *imdb_group_overrides(args.data)]
    if args.tiny:
        common += ["--data.max_length=64", "--model.embedding_dim=32", "--model.hidden_dim=32"]
        common += ["--train.batch_size=32", "--train.epochs=1", "--train.eval_every_steps=4"]
    elif args.quick:  # a subset: enough to see both learn, not to reach the full accuracy
        common += [
            "--data.max_train_examples=6000",
            "--data.max_eval_examples=500",
            "--train.epochs=1",
            "--train.eval_every_steps=10",
        ]
    else:
        common += ["--train.eval_every_steps=40"]
    common += args.overrides
    target = args.target if args.target is not None else (0.65 if args.quick else 0.85)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    results: dict[str, list[dict]] = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CACHE_HOME"] = tmp  # a fresh tokenisation cache, filled once by the first run
        for repeat in range(args.repeats):
            results["ours"].append(run_ours(common, Path(tmp) / f"ours-{repeat}", env))
            results["baseline"].append(run_baseline(common, env))
            for side in results:
                r = results[side][-1]
                print(
                    f"{side}: {r['tokens_per_s']:,.0f} tokens/s, accuracy {r['final_val_accuracy']:.3f}",
                    file=sys.stderr,
                )

    def summarise(runs: list[dict]) -> dict:
        times = [time_to_target([{"elapsed_s": t, "eval/accuracy": a} for t, a in r["evals"]], target) for r in runs]
        reached = [t for t in times if t is not None]
        keys = ("tokens_per_s", "examples_per_s", "padding_efficiency", "peak_rss_mb", "final_val_accuracy")
        out = {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}
        out["time_to_target_s"] = round(statistics.median(reached), 1) if len(reached) == len(runs) else None
        return out

    ours, baseline = summarise(results["ours"]), summarise(results["baseline"])
    both_reached = ours["time_to_target_s"] and baseline["time_to_target_s"]
    return {
        "cpu": cpu_info(),
        "quick": args.quick,
        "target_accuracy": target,
        "threads": args.threads,
        "repeats": args.repeats,
        "ours": ours,
        "baseline": baseline,
        "tokens_per_s_speedup": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 3),
        "time_to_target_speedup": (
            round(baseline["time_to_target_s"] / ours["time_to_target_s"], 3) if both_reached else None
        ),
    }


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
