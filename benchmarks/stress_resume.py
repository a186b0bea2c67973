"""Kill a training run at random moments, resume it each time, and compare with an uninterrupted run.

The run (tiny preset by default, one process, a full checkpoint every few steps) is killed with
SIGKILL at a random moment, resumed with ``--resume auto``, killed again, ... ``--kills`` times,
then resumed to the end. Its final weights are compared bit for bit with a run that was never
interrupted. Reports kills survived, checkpoints lost (found corrupted or incomplete on resume),
saves the kills interrupted, and whether the final weights are equal, as one JSON object on the
last line.

    python benchmarks/stress_resume.py                    # 20 kills, about 3 minutes on 2 cores
    python benchmarks/stress_resume.py --kills 5 -- --config tiny --train.epochs=3
    python benchmarks/stress_resume.py --tiny --out stress.json   # a check in seconds: one kill, 2 epochs

``--tiny``: one kill of a 2-epoch tiny run (checkpoints every 7 steps) unless told otherwise. The
last line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, parse  # noqa: E402


def command(run: Path, trainer_args: list[str]) -> list[str]:
    tracking = ["--logging.tracker=none", "--logging.plots=false"]  # the run folders are temporary
    return [sys.executable, "-m", "trainer", *trainer_args, f"--train.output_dir={run}", *tracking]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, help="kills (default 20; 1 with --tiny)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("trainer_args", nargs="*", help="trainer arguments, after --")
    add_options(parser, "one kill of a 2-epoch tiny run: a check of this script, in seconds")
    args = parse(parser)
    epochs = 2 if args.tiny else 60
    trainer_args = args.trainer_args or [
        "--config",
        "tiny",
        f"--train.epochs={epochs}",
        "--checkpoint.save_every_steps=7",
    ]
    if args.kills is None:
        args.kills = 1 if args.tiny else 20
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference, stressed = Path(tmp) / "reference", Path(tmp) / "stressed"
        started = time.monotonic()
        subprocess.run(command(reference, trainer_args), env=env, check=True, capture_output=True)
        uninterrupted_s = time.monotonic() - started
        loop_s = json.loads((reference / "run_info.json").read_text())["train_seconds"]
        kills, lost, output, interrupted_saves = 0, 0, [], set()
        for attempt in range(args.kills):
            interrupted_saves |= {p.name for p in (stressed / "checkpoints").glob(".tmp-step-*")}
            resume = ["--resume", "auto"] if attempt else []
            proc = subprocess.Popen(
                command(stressed, [*trainer_args, *resume]),
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            for line in proc.stdout:  # start-up: until the run folder line, training starts after it
                output.append(line)
                if line.startswith("run folder"):
                    break
            # A random moment of training: on average half of 1/kills of it goes by before each
            # kill, so all the kills happen before the end, anywhere, during saves too.
            time.sleep(rng.uniform(0, loop_s / args.kills))
            if proc.poll() is not None:
                break  # it reached the end before its kill
            proc.send_signal(signal.SIGKILL)
            output += proc.stdout.read().splitlines()
            proc.wait()
            kills += 1
            print(f"kill {kills}", file=sys.stderr)
        info = stressed / "run_info.json"
        if "final_step" not in (json.loads(info.read_text()) if info.is_file() else {}):
            # Not finished (a run that reached its end before a kill has nothing left to resume).
            result = subprocess.run(
                command(stressed, [*trainer_args, "--resume", "auto"]), env=env, capture_output=True, text=True
            )
            if result.returncode != 0:
                sys.exit(result.stderr[-2000:])
            output += result.stdout.splitlines()
        lost = sum(" is corrupted" in line or " is incomplete" in line for line in output)
        ref = json.loads((reference / "run_info.json").read_text())["weight_digests"]
        got = json.loads((stressed / "run_info.json").read_text())["weight_digests"]
    from trainer.hardware import cpu_info

    return finish(
        args,
        {
            "cpu": cpu_info(),
            "kills_survived": kills,
            "checkpoints_lost": lost,
            "saves_interrupted": len(interrupted_saves),
            "final_weights_equal": ref == got,
            "uninterrupted_seconds": round(uninterrupted_s, 1),
            "trainer_args": trainer_args,
        },
    )


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
