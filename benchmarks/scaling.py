"""CPU scaling: training throughput with 1 process vs 2 processes, one thread each.

Each configuration runs the real trainer through ``accelerate launch`` (weak scaling: the same
per-process batch), threads pinned with OMP_NUM_THREADS=1 and the processes confined to as many
cores as they have processes (taskset). Throughput is real (non-padding) tokens per second over
all processes, from ``metrics.jsonl``, the first logging window (warm-up) left out. Runs
alternate 1, 2, 1, 2, ... and the medians give the efficiency T2 / (2 * T1).

    python benchmarks/scaling.py                 # default preset (built-in data), 120 steps a run
    python benchmarks/scaling.py --repeats 3 --steps 200 -- --config imdb --data.train_files=...
    python benchmarks/scaling.py --tiny --out scaling.json   # a check in seconds: tiny preset, 6 steps, once each

``--tiny`` puts ``--config tiny`` before the trainer arguments and skips the untimed run. The last
line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, parse  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, steps: int, trainer_args: list[str], work: Path) -> float:
    out = work / f"run-{processes}-{len(list(work.iterdir()))}"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    launch = [
        accelerate,
        "launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
    ]
    if processes > 1:
        launch += ["--multi_gpu", "--main_process_port", str(free_port())]
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:processes])
    command = ["taskset", "-c", cores, *launch, "-m", "trainer", *trainer_args]
    log_every = max(1, min(10, steps // 3))  # the first window is left out: two more at least
    command += [f"--train.max_steps={steps}", f"--train.log_every_steps={log_every}", "--logging.tracker=none"]
    command += [f"--train.output_dir={out}", "--checkpoint.save_best=false", "--checkpoint.save_final=false"]
    command.append("--logging.plots=false")  # the run folder is temporary
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"run with {processes} process(es) failed:\n{result.stderr[-2000:]}")
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == processes, f"expected {processes} processes, got {info['world_size']}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
    rates = rates[1:] or rates
    return statistics.median(rates)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (alternating)")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("trainer_args", nargs="*", help="trainer arguments, after --")
    add_options(parser, "the tiny preset, 6 steps, each configuration once: a check of this script, in seconds")
    args = parse(parser)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores")
    trainer_args = args.trainer_args or ["--config", "default"]
    if args.tiny:
        trainer_args = ["--config", "tiny", *args.trainer_args]
        args.repeats, args.steps = 1, 6
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # One untimed run fills the tokenisation cache, so every timed run starts alike.
        if not args.tiny:
            run(1, 10, trainer_args, work)
        for _ in range(args.repeats):
            for processes in (1, 2):
                results[processes].append(run(processes, args.steps, trainer_args, work))
                print(f"{processes} process(es): {results[processes][-1]:,.0f} tokens/s", file=sys.stderr)
    t1, t2 = statistics.median(results[1]), statistics.median(results[2])
    from trainer.hardware import cpu_info

    return finish(
        args,
        {
            "cpu": cpu_info(),
            "trainer_args": trainer_args,
            "steps": args.steps,
            "tokens_per_s_1_process": round(t1),
            "tokens_per_s_2_processes": round(t2),
            "runs": {str(k): [round(v) for v in vs] for k, vs in results.items()},
            "efficiency": round(t2 / (2 * t1), 3),
        },
    )


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
