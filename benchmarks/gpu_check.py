"""The stages of ``benchmarks/gpu.sh``: the trainer's GPU path, checked and measured on one GPU.

Each stage appends one JSON line to ``OUT/stages.jsonl`` when it ends ({"stage", "ok", "seconds",
...}), so a stage that crashes or runs out of time leaves the ones before it. ``--tiny`` runs every
stage on the CPU at a tiny size, as the tests do, so the script cannot rot on machines without a GPU.

- ``env``: GPU, driver, CUDA, cuDNN, versions;
- ``bench``: ``bench_gpu.py`` (correctness against the CPU, tokens/s of the trainer's model in
  fp32/fp16/bf16 against the reference article's loop, the LSTM's dtype under each autocast);
- ``train-<precision>``: one epoch of the ``imdb`` preset (``--data``: IMDB's train.csv.gz; else
  the built-in data) in float32, fp16 and bf16: time, tokens/s, peak memory, the recurrent dtype;
- ``resume``: a run killed mid-way and resumed ends with the uninterrupted run's weights;
- ``syncs``: host syncs per steady step (``COUNT_SYNCS`` of tests/faults; on a GPU also
  ``torch.cuda.set_sync_debug_mode``);
- ``predict``, ``evaluate``: the exported model on the GPU.

    python benchmarks/gpu_check.py --out OUT [--data ../shared/data/imdb/train.csv.gz]
    python benchmarks/gpu_check.py --out OUT --tiny          # every stage on the CPU, in about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "faults"


class Stages:
    """Runs stages in order, each one's result appended to stages.jsonl as it ends."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "stages.jsonl"

    def run(self, name: str, stage, *args) -> dict:
        started = time.perf_counter()
        try:
            result = {"ok": True, **stage(*args)}
        except Exception as exc:  # one stage's failure is its result; the next stage still runs
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        result = {"stage": name, **result, "seconds": round(time.perf_counter() - started, 1)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result)[:400], file=sys.stderr, flush=True)
        return result


def python_path(*first: Path) -> str:
    """PYTHONPATH with these folders first, then the repository, then what it held (gpu.sh's site)."""
    return os.pathsep.join([*map(str, first), str(REPO), os.environ.get("PYTHONPATH", "")])


def trainer(args: list[str], cwd: Path, module: str = "trainer", env: dict | None = None, expect: int = 0):
    """Runs ``python -m module args``; raises with its last output when its exit code is not ``expect``."""
    environment = {**os.environ, "PYTHONPATH": python_path(), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=environment, capture_output=True, text=True
    )
    if done.returncode != expect:
        raise RuntimeError(f"{module} exited {done.returncode}, expected {expect}: {done.stderr[-2000:]}")
    return done


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class Check:
    def __init__(self, out: Path, data: str | None, tiny: bool) -> None:
        self.out, self.tiny = out, tiny
        self.device = "cpu" if tiny else "cuda"
        if tiny:
            self.common = ["--config", "tiny", "--train.cpu=true"]
        else:
            self.common = ["--config", "imdb"]
        self.common += ["--logging.tracker=none", "--logging.plots=false"]  # needs neither wandb nor matplotlib
        if data:
            self.common += [f"--data.train_files={data}"]
        self.common += [f"--data.cache_dir={out / 'cache'}"]
        self.best: Path | None = None

    def env(self) -> dict:
        import torch

        from trainer.hardware import cpu_info, gpu_info

        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for name in ("accelerate", "datasets", "tokenizers", "omegaconf", "wandb", "onnxruntime"):
            try:
                versions[name] = __import__(name).__version__
            except ImportError:
                versions[name] = None
        gpu = gpu_info(torch.device("cuda", 0)) if torch.cuda.is_available() else None
        return {"gpu": gpu, "cpu": cpu_info()["model"], "versions": versions}

    def bench(self) -> dict:
        out = self.out / "bench.json"  # rewritten after every measurement: a crash keeps what was done
        command = [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--out", str(out)]
        command += ["--device", "cpu", "--quick"] if self.tiny else []
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": python_path()})
        result = read_json(out) if out.is_file() else {}
        if done.returncode:
            raise RuntimeError(f"bench_gpu.py exited {done.returncode}: {done.stderr[-2000:]} (partial: {out})")
        return result

    def train(self, precision: str) -> dict:
        run = self.out / f"train-{precision}"
        args = [*self.common, f"--train.output_dir={run}", f"--train.mixed_precision={precision}", "--overwrite"]
        args += ["--train.epochs=1", "--checkpoint.mistakes=0"]
        trainer(args, self.out)
        info = read_json(run / "run_info.json")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rates = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]  # the first warms up
        self.best = run / "best"
        return {
            "mixed_precision": info["mixed_precision"],
            "recurrent_dtype": info["recurrent_dtype"],
            "epoch_seconds": info["train_seconds"],
            "tokens_per_s": round(sum(rates) / len(rates)) if rates else None,
            "peak_memory_mib": info.get("peak_memory_mib"),
            "accuracy": info["final_metrics"]["accuracy"],
            "gpu": info["processes"][0].get("gpu"),
        }

    def resume(self) -> dict:
        steps = ["--train.max_steps=24", "--checkpoint.save_every_steps=8", "--overwrite"]
        straight, killed = self.out / "resume-straight", self.out / "resume-killed"
        trainer([*self.common, *steps, f"--train.output_dir={straight}"], self.out)
        fault = {"PYTHONPATH": python_path(FAULTS), "FAULT_RANK": "0", "FAULT_AT_STEP": "13"}
        fault["FAULT_KIND"] = "kill"
        trainer([*self.common, *steps, f"--train.output_dir={killed}"], self.out, env=fault, expect=-signal.SIGKILL)
        trainer([*self.common, *steps[:-1], f"--train.output_dir={killed}", "--resume", "auto"], self.out)
        a, b = (read_json(run / "run_info.json") for run in (straight, killed))
        return {
            "resumed_from": b["resumed_from"],
            "bit_exact": a["weight_digests"] == b["weight_digests"],
            "final_loss": [a["final_metrics"]["loss"], b["final_metrics"]["loss"]],
        }

    def syncs(self) -> dict:
        counts = self.out / "syncs.json"
        env = {"PYTHONPATH": python_path(FAULTS), "COUNT_SYNCS": str(counts)}
        run = self.out / "syncs"
        steps = ["--train.max_steps=24", "--train.log_every_steps=10", "--overwrite"]
        trainer([*self.common, *steps, f"--train.output_dir={run}"], self.out, env=env)
        per_step = json.loads(counts.read_text())  # [k]: from optimizer step k to k + 1
        epoch = read_json(run / "run_info.json")["steps_per_epoch"]  # an epoch's end validates and saves
        steady = {k: per_step[k] for k in range(2, 24) if k % 10 and k % epoch}
        return {
            "syncs_per_steady_step": max(len(s) for s in steady.values()),
            "steady_steps": len(steady),
            "where": sorted({place for s in steady.values() for place in s})[:20],
        }

    def predict(self) -> dict:
        texts = ["A wonderful film, I loved every minute.", "Dull, slow and far too long."]
        done = trainer(
            ["--model", str(self.best), "--device", self.device, "--json", *texts], self.out, "trainer.predict"
        )
        return {"predictions": [json.loads(line)["label"] for line in done.stdout.splitlines()]}

    def evaluate(self, data: str | None) -> dict:
        if data is None:  # reviews of the built-in kind, from another seed than the run's
            from trainer.data.corpus import CorpusConfig, generate_corpus

            corpus = generate_corpus(CorpusConfig(num_examples=400, seed=7))
            data = str(self.out / "reviews.jsonl")
            rows = zip(corpus["text"], corpus["label"], strict=True)
            Path(data).write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        args = ["--model", str(self.best), "--data", data, "--json", "--max-examples", "2000"]
        done = trainer(args + (["--cpu"] if self.tiny else []), self.out, "trainer.evaluate")
        result = json.loads(done.stdout)
        return {k: result[k] for k in ("accuracy", "loss", "examples_per_s") if k in result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for stages.jsonl and the runs")
    parser.add_argument("--data", help="IMDB's train.csv.gz (default: the built-in data)")
    parser.add_argument("--tiny", action="store_true", help="every stage on the CPU at a tiny size")
    args = parser.parse_args()
    stages, check = Stages(args.out), Check(args.out, args.data, args.tiny)
    stages.run("env", check.env)
    stages.run("bench", check.bench)
    for precision in ("no", "bf16") if args.tiny else ("no", "fp16", "bf16"):
        stages.run(f"train-{precision}", check.train, precision)
    stages.run("resume", check.resume)
    stages.run("syncs", check.syncs)
    stages.run("predict", check.predict)
    stages.run("evaluate", check.evaluate, args.data)
    results = [json.loads(line) for line in stages.path.read_text().splitlines()]
    failed = [r["stage"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} stages passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
