"""How each stage's cost grows with the corpus: 25k, 250k and 2.5M reviews.

The corpora are Amazon-polarity-like: a ``title`` and a ``content`` column, reviews of 10 to 250
words (one to three of the built-in generator's reviews of the same label, cut at 250 words),
written once under ``--cache`` as parquet shards of at most 250,000 rows and as one CSV. They
have no movie ids, so the ``imdb`` preset carves its validation split at random
(``--data.group_column=null``), as it does on Amazon's shards. Each stage runs in a fresh process:

- file load (parquet shards, and the CSV) with the cleaning up to tokenisation;
- tokenizer training (the ``imdb`` preset's WordPiece, on its ``tokenizer.train_sample``);
- tokenisation (seconds, MB/s) with the tokenizer on 1 thread, on all cores, and in
  ``data.num_proc`` processes;
- the whole preparation's peak memory (the largest process's peak RSS, and the summed PSS of it and
  its forked tokenisers) and the cache's size on disk;
- a cached restart of ``python -m trainer`` until it reports its run folder (setup done; the next
  thing is the first step), the sampler's and loaders' start-up until the first batch;
- steady training (``imdb`` preset, no accumulation) in steps/s on 1 and on 2 processes;
- a cold start on 2 processes (the main one prepares, the other memory-maps its cache), with each
  process's peak RSS and anonymous memory.

    python benchmarks/bench_scale.py [--quick] [--sizes 25000,250000,2500000] [--cache DIR]
                                     [--stages load,tokenizer,tokenize,cold_start,prepare]
    python benchmarks/bench_scale.py --tiny --out scale.json   # a check in seconds

``--quick`` stops at 250k. ``--tiny`` runs every stage once on 400 reviews in 3 shards, in this
process, training a 32/32 model for 6 steps (the cached start on 1 process only, after the cold
start on 2), with its corpus and caches in a temporary folder
unless ``--cache`` is given: a check of the script, not a measurement (its growth is 1). The last
line printed is one JSON object (``--out FILE``: also written there): per size, every stage; and
``growth``, each stage's time per review (per step for training) at the largest size over the
smallest, with ``peak_rss_mb`` per size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_cli import add_options, finish, parse
from bench_data import seconds_to_run_folder

REPO = Path(__file__).resolve().parents[1]
SHARD_ROWS = 250_000
# Two columns joined; validation capped (a 10% carve of 2.5M reviews would take minutes per evaluation).
TEXT = "--data.text_column=title,content"
EVAL = "--data.max_eval_examples=2000"
# Amazon-like reviews have no movie ids: the imdb preset's validation on whole movies cannot apply.
GROUPS = "--data.group_column=null"
# --tiny: stages in this process (fresh() calls the function here), a small model for a few steps,
# the cached start on 1 process only (the cold start has run 2).
TINY = {"in_process": False, "model": [], "steps": {}, "processes": (1, 2)}


def build_corpus(size: int, root: Path, shard_rows: int = SHARD_ROWS) -> Path:
    """``root/<size>/`` with ``shards/*.parquet`` and ``all.csv``; written once."""
    import datasets

    from trainer.data.corpus import CorpusConfig, generate_corpus

    folder = root / str(size)
    if (folder / "done").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a corpus left half-written
    (folder / "shards").mkdir(parents=True)
    base = generate_corpus(CorpusConfig(num_examples=min(size, 200_000), seed=size))
    by_label = {0: [], 1: []}
    for text, label in zip(base["text"], base["label"], strict=True):
        by_label[label].append(text)
    rng = random.Random(size)
    csv = (folder / "all.csv").open("wb")  # the shards one after the other, one header
    for start in range(0, size, shard_rows):
        titles, contents, labels = [], [], []
        for _ in range(min(shard_rows, size - start)):
            label = rng.randrange(2)
            parts = 1 + (rng.random() < 0.5) + (rng.random() < 0.25)
            words = " ".join(rng.choice(by_label[label]) for _ in range(parts)).split()[:250]
            titles.append(" ".join(words[: rng.randint(2, 8)]) if rng.random() < 0.95 else "")
            contents.append(" ".join(words))
            labels.append(label)
        shard = datasets.Dataset.from_dict({"title": titles, "content": contents, "label": labels})
        shard.to_parquet(str(folder / "shards" / f"train-{start // shard_rows:05d}.parquet"))
        shard.to_csv(csv, header=start == 0, index=False)
    csv.close()
    (folder / "done").write_text("")
    return folder


def config_for(files: str, cache: str, extra: list[str] = ()):
    from trainer.config import load_config

    return load_config("imdb", [f"--data.train_files={files}", f"--data.cache_dir={cache}", TEXT, EVAL, GROUPS, *extra])


def peak_rss_mb() -> float:
    """Peak resident memory of this process or its largest child (the kernel's count, which includes
    the pages of memory-mapped Arrow files it has read: those are page cache, given back on demand)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


class TreePeak:
    """Memory of the process tree under ``pid`` (a launcher and its workers, or a preparation and the
    datasets library's forked tokenisers), sampled every 100 ms by a thread:

    - per process (named by its ``RANK``; "launcher" where it has none): the peak RSS (the
      kernel's VmHWM, which counts the pages of memory-mapped Arrow files it has read: page cache,
      given back on demand) and the peak anonymous memory (RssAnon: what it allocated);
    - for the whole tree at once: the peak of the summed PSS (each shared page divided among the
      processes that map it, so a fork's copy-on-write pages count once), and of its anonymous
      part (Pss_Anon)."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.peaks: dict[int, dict] = {}
        self.total = {"peak_total_pss_mb": 0.0, "peak_total_anonymous_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):  # it has ended
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return pids

    @staticmethod
    def _fields(path: str) -> dict[str, int]:
        """kB figures of a /proc status-like file."""
        fields = {}
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0])
        return fields

    def _watch(self) -> None:
        while not self._stop.is_set():
            pss = pss_anon = 0
            for pid in self._tree():
                try:
                    status = self._fields(f"/proc/{pid}/status")
                    rollup = self._fields(f"/proc/{pid}/smaps_rollup")
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:  # it has ended
                    continue
                if "VmHWM" not in status:  # a zombie
                    continue
                pss, pss_anon = pss + rollup.get("Pss", 0), pss_anon + rollup.get("Pss_Anon", 0)
                rank = next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), "launcher")
                peak = self.peaks.setdefault(pid, {"rank": rank, "peak_rss_mb": 0.0, "peak_anonymous_mb": 0.0})
                for key, field in (("peak_rss_mb", "VmHWM"), ("peak_anonymous_mb", "RssAnon")):
                    peak[key] = max(peak[key], status[field] / 1024)
            self.total["peak_total_pss_mb"] = max(self.total["peak_total_pss_mb"], pss / 1024)
            self.total["peak_total_anonymous_mb"] = max(self.total["peak_total_anonymous_mb"], pss_anon / 1024)
            self._stop.wait(0.1)

    def stop(self) -> dict:
        """The totals, and the processes' peaks, largest RSS first."""
        self._stop.set()
        self._thread.join()
        found = [{k: round(v, 1) if isinstance(v, float) else v for k, v in p.items()} for p in self.peaks.values()]
        processes = sorted(found, key=lambda p: -p["peak_rss_mb"])
        return {**{k: round(v, 1) for k, v in self.total.items()}, "processes": processes}


def stage_load(files: str, cache: str) -> dict:
    from trainer.data import clean_splits, load_raw_splits

    config = config_for(files, cache).data
    started = time.perf_counter()
    splits, _, _ = clean_splits(load_raw_splits(config), config)
    seconds = time.perf_counter() - started
    rows = len(splits["train"]) + len(splits["validation"])
    return {"seconds": seconds, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def stage_tokenizer(files: str, cache: str) -> dict:
    from trainer.data import build_tokenizer, clean_splits, load_raw_splits

    config = config_for(files, cache)
    splits, _, _ = clean_splits(load_raw_splits(config.data), config.data)
    started = time.perf_counter()
    _, source = build_tokenizer(splits["train"], config.tokenizer, Path(tempfile.mkdtemp()), "bench")
    assert source == "trained"
    return {"seconds": time.perf_counter() - started, "sample": config.tokenizer.train_sample}


def stage_tokenize(files: str, cache: str, num_proc: str) -> dict:
    """Tokenisation alone (the tokenizer cached by a first call), into a fresh cache file."""
    from trainer.data import build_tokenizer, clean_splits, load_raw_splits, tokenize_split

    config = config_for(files, cache)
    splits, _, _ = clean_splits(load_raw_splits(config.data), config.data)
    tokenizer, _ = build_tokenizer(splits["train"], config.tokenizer, Path(cache), "bench")
    ds = splits["train"]
    megabytes = sum(
        len(t.encode()) for batch in ds.with_format("arrow").iter(100_000) for t in batch["text"].to_pylist()
    )
    out = Path(tempfile.mkdtemp(dir=cache)) / "tokens.arrow"
    started = time.perf_counter()
    tokenize_split(ds, tokenizer, config.data.max_length, out, int(num_proc))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb": megabytes / 1e6, "mb_per_s": megabytes / 1e6 / seconds}


def stage_prepare(files: str, cache: str) -> dict:
    """The whole preparation, cold: its peak RSS, and the cache it leaves."""
    from trainer.data import prepare_data

    config = config_for(files, cache)
    memory = TreePeak(os.getpid())
    started = time.perf_counter()
    data = prepare_data(config.data, config.tokenizer)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        **memory.stop(),
        "cache_mb": size / 1e6,
        "rows": len(data.train),
        "cache_hit": data.stats["train_tokens_cache_hit"],
    }


def stage_loaders(files: str, cache: str) -> dict:
    """From prepared (cached) data to the first training batch: sampler, loaders, first batch."""
    from trainer.data import build_dataloaders, prepare_data

    config = config_for(files, cache)
    data = prepare_data(config.data, config.tokenizer)
    assert data.stats["train_tokens_cache_hit"]
    started = time.perf_counter()
    train, _ = build_dataloaders(data, config.data, config.train.batch_size, 2 * config.train.batch_size)
    next(iter(train))
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def fresh(function: str, files: str, cache: str, *args: str, env: dict | None = None) -> dict:
    """``function(files, cache, *args)`` of this module in a fresh process, with the datasets
    library's own cache in ``cache`` too (a fresh ``cache`` is a cold start)."""
    if TINY["in_process"]:
        return globals()[function](files, cache, *args)
    code = f"import json, sys, bench_scale as b; print(json.dumps(b.{function}(*sys.argv[1:])))"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": f"{cache}/hf", **(env or {})}
    args = (files, cache, *args)
    command = [sys.executable, "-c", code, *args]
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, cwd=Path(__file__).parent)
    if result.returncode != 0:
        sys.exit(f"{function} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def trainer_run(files: str, cache: str, processes: int, steps: int) -> dict:
    """A cached start of ``python -m trainer`` (seconds to its run-folder line) and its steady steps/s."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(2 // processes)}
    env["HF_DATASETS_CACHE"] = f"{cache}/hf"
    launcher = [sys.executable]
    if processes > 1:
        config = str(REPO / "accelerate_configs" / "cpu_multi.yaml")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        launcher += ["--num_processes", str(processes)]
    with tempfile.TemporaryDirectory() as out:
        steps = TINY["steps"].get(steps, steps)
        command = [*launcher, "-m", "trainer", "--config", "imdb", f"--data.train_files={files}", TEXT, EVAL, GROUPS]
        command += [f"--data.cache_dir={cache}", f"--train.output_dir={out}/run", f"--train.max_steps={steps}"]
        log_every = max(1, min(10, steps // 3))  # the first window is left out: two more at least
        command += [
            f"--train.log_every_steps={log_every}",
            "--logging.tracker=none",
            "--logging.plots=false",
            *TINY["model"],
        ]
        command += ["--checkpoint.save_final=false", "--checkpoint.save_best=false"]
        started = time.perf_counter()
        with open(f"{out}/stderr", "w+") as err:  # a file: a pipe nobody reads can fill and stop the trainer
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            peaks = TreePeak(proc.pid)
            ready = seconds_to_run_folder(proc, started)
            proc.wait()
            memory = peaks.stop()
            if proc.returncode != 0:
                err.seek(0)
                sys.exit(f"trainer failed:\n{err.read()[-3000:]}")
        records = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/examples_per_s"] for r in records if "train/examples_per_s" in r][1:]  # past warm-up
    global_batch = 64 * processes  # the imdb preset's batch size per process
    return {"start_s": ready, "steps_per_s": sum(rates) / len(rates) / global_batch, **memory}


STAGES = ("load", "tokenizer", "tokenize", "cold_start", "prepare")


def measure(size: int, root: Path, shard_rows: int = SHARD_ROWS, stages=STAGES) -> dict:
    folder = build_corpus(size, root, shard_rows)
    shards, csv = str(folder / "shards"), str(folder / "all.csv")
    result: dict = {"reviews": size}
    if "load" in stages:
        with tempfile.TemporaryDirectory() as cache:
            result["load_parquet"] = fresh("stage_load", shards, cache)
        with tempfile.TemporaryDirectory() as cache:
            result["load_csv"] = fresh("stage_load", csv, cache)
    if "tokenizer" in stages:
        with tempfile.TemporaryDirectory() as cache:
            result["tokenizer_training"] = fresh("stage_tokenizer", shards, cache)
    if "tokenize" in stages:
        all_cores = str(len(os.sched_getaffinity(0)))
        with tempfile.TemporaryDirectory() as cache:
            result["tokenize_1_thread"] = fresh("stage_tokenize", shards, cache, "1", env={"RAYON_NUM_THREADS": "1"})
            result["tokenize_all_cores"] = fresh("stage_tokenize", shards, cache, "1")
            result["tokenize_num_proc"] = fresh("stage_tokenize", shards, cache, all_cores)
    if "cold_start" in stages:
        with tempfile.TemporaryDirectory() as cache:  # on 2 processes: the main one prepares, the other maps
            result["train_2_process_cold"] = trainer_run(shards, cache, 2, steps=30)
    if "prepare" in stages:
        with tempfile.TemporaryDirectory() as cache:
            result["prepare"] = fresh("stage_prepare", shards, cache)
            result["cached_prepare"] = fresh("stage_prepare", shards, cache)
            result["loaders"] = fresh("stage_loaders", shards, cache)
            for processes in TINY["processes"]:
                result[f"train_{processes}_process"] = trainer_run(shards, cache, processes, steps=60)
    return result


def growth(small: dict, large: dict) -> dict:
    """Time per review at the large size over the small one (per step for training; a cached start
    absolute: it should not grow at all), for the stages measured."""
    ratios = {}
    per_review = ["load_parquet", "load_csv", "tokenizer_training", "tokenize_1_thread", "tokenize_all_cores"]
    for stage in [*per_review, "tokenize_num_proc", "prepare", "cached_prepare", "loaders"]:
        if stage in large and small[stage]["seconds"] > 0:
            ratios[stage] = (large[stage]["seconds"] / large["reviews"]) / (small[stage]["seconds"] / small["reviews"])
    for processes in (1, 2):
        key = f"train_{processes}_process"
        if key in large:
            ratios[f"cached_start_{processes}_process"] = large[key]["start_s"] / small[key]["start_s"]
    cold = "train_2_process_cold"
    if cold in large:
        per_review_start = [r[cold]["start_s"] / r["reviews"] for r in (large, small)]
        ratios["cold_start_2_process"] = per_review_start[0] / per_review_start[1]
    for processes in (1, 2):
        key = f"train_{processes}_process"
        if key in large:
            ratios[f"train_step_{processes}_process"] = small[key]["steps_per_s"] / large[key]["steps_per_s"]
    return {k: round(v, 2) for k, v in ratios.items()}


def rounded(tree):
    if isinstance(tree, dict):
        return {k: rounded(v) for k, v in tree.items()}
    return round(tree, 3) if isinstance(tree, float) else tree


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop at 250k reviews")
    parser.add_argument("--sizes", default="25000,250000,2500000")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per parquet shard")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"some of {', '.join(STAGES)}")
    parser.add_argument(
        "--cache", help="where corpora are written once (default ~/.cache/sentiment-trainer/bench_scale)"
    )
    add_options(parser, "400 reviews, every stage once in this process: a check of this script, in seconds")
    args = parse(parser)
    with tempfile.TemporaryDirectory() as work:
        if args.tiny:
            args.sizes, args.shard_rows, args.cache = "400", 150, args.cache or work
            os.environ["HF_DATASETS_CACHE"] = f"{work}/hf"  # the stages run here: the datasets cache with them
            TINY.update(in_process=True, model=["--model.embedding_dim=32", "--model.hidden_dim=32"])
            TINY.update(steps={30: 6, 60: 6}, processes=(1,))
        args.cache = args.cache or str(Path.home() / ".cache" / "sentiment-trainer" / "bench_scale")
        return finish(args, measure_sizes(args))


def measure_sizes(args: argparse.Namespace) -> dict:
    from trainer.hardware import describe_cpu

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 250_000]
    started = time.perf_counter()
    results = {}
    for size in sizes:
        results[size] = rounded(measure(size, Path(args.cache), args.shard_rows, args.stages.split(",")))
        print(json.dumps(results[size]), flush=True)
    small, large = results[sizes[0]], results[sizes[-1]]
    return {
        "cpu": describe_cpu(),
        "sizes": results,
        "growth": growth(small, large),
        # the whole preparation: the larger of its largest process's peak RSS and its tree's summed PSS
        "peak_rss_mb": {
            size: max(r["prepare"]["peak_rss_mb"], r["prepare"]["peak_total_pss_mb"])
            for size, r in results.items()
            if "prepare" in r
        },
        "peak_total_pss_mb": {size: r["prepare"]["peak_total_pss_mb"] for size, r in results.items() if "prepare" in r},
        "cold_2_process_peaks": {
            size: r["train_2_process_cold"]["processes"] for size, r in results.items() if "train_2_process_cold" in r
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
