"""Prediction speed, size and accuracy of one trained model in each runtime: eager PyTorch float32,
eager bfloat16 (autocast; only where the CPU has native bf16), ONNX float32 and ONNX int8.

    python benchmarks/bench_predict.py runs/imdb/best [--reviews 2500] [--repeats 3]
    python benchmarks/bench_predict.py --tiny --out predict.json   # a tiny model trained first: a check in seconds

The ONNX folders are exported into a temporary folder first (``python -m trainer.export``'s code).
The texts are the run's own validation split, rebuilt from its config.yaml (the run folder above
the model), so accuracy is measured on reviews the model never trained on; ``--data CSV`` takes
the first ``--reviews`` labelled rows of a file instead. Per runtime, in one process and alternating
runtimes between repeats: reviews/s at batch 1 and 32 (``load_model(...).predict``, tokenising
included, after a warm-up), the same batches through the network alone (tokenised and padded
ahead), p50/p99 latency of single reviews, the weights file's size, accuracy.
``--tiny`` trains a model with the tiny preset first where none is given, and times 64 reviews once.
The last line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, parse  # noqa: E402

from trainer.errors import UserError  # noqa: E402
from trainer.export import export_onnx_folder  # noqa: E402
from trainer.hardware import cpu_info  # noqa: E402
from trainer.inference import load_model  # noqa: E402
from trainer.inference.folder import ONNX_NAME, WEIGHTS_NAME  # noqa: E402


def validation_texts(model_dir: Path, data: str | None, limit: int) -> tuple[list[str], list[str], str]:
    """(texts, label names, where they came from)."""
    from trainer.evaluate import load_labelled

    if data:
        ds, _ = load_labelled(data, "train", "text", "label", None)
        ds = ds.select(range(min(limit, len(ds))))
        return list(ds["text"]), [str(label) for label in ds["label"]], f"the first {len(ds)} rows of {data}"
    from trainer.config import load_config
    from trainer.data import clean_splits, load_raw_splits

    config_file = model_dir.parent / "config.yaml"
    if not config_file.is_file():
        sys.exit(f"{config_file} not found: give a model inside its run folder, or --data CSV")
    config = load_config(str(config_file), [])
    splits, label_map, _ = clean_splits(load_raw_splits(config.data), config.data)
    ds = splits["validation"].select(range(min(limit, len(splits["validation"]))))
    labels = [label_map.names[i] for i in ds["label"]]
    return list(ds["text"]), labels, f"{len(ds)} reviews of the validation split of {config_file.parent}"


def timed(predict, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    predict(texts, batch_size=batch_size)
    return time.perf_counter() - started


def padded_batches(model, texts: list[str], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches ``predict`` runs (similar lengths together), tokenised and padded ahead of time."""
    from trainer.data.tokenizer import pad_batch

    encodings = sorted(model.encode(texts), key=lambda e: len(e.ids))
    return [
        pad_batch([e.ids for e in encodings[i : i + batch_size]], model.pad_id)
        for i in range(0, len(encodings), batch_size)
    ]


def timed_network(network, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for ids, lengths in batches:
            network(ids, lengths)
    return time.perf_counter() - started


def tiny_model(work: Path) -> Path:
    """A model of the tiny preset, trained in ``work``."""
    command = [sys.executable, "-m", "trainer", "--config", "tiny", f"--train.output_dir={work / 'run'}"]
    command += ["--logging.plots=false", "--checkpoint.mistakes=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training the tiny model failed:\n{done.stderr[-2000:]}")
    return work / "run" / "best"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an exported model folder (runs/<run>/best)")
    parser.add_argument("--data", help="a labelled CSV instead of the run's validation split")
    parser.add_argument("--reviews", type=int, default=2500, help="reviews scored for accuracy and batch 32")
    parser.add_argument("--single", type=int, default=300, help="reviews timed one at a time (batch 1)")
    parser.add_argument("--repeats", type=int, default=3)
    add_options(parser, "a tiny model (trained first if none is given), 64 reviews timed once: a check in seconds")
    args = parse(parser)
    if not (args.model or args.tiny):
        raise UserError("give a model folder (runs/<run>/best), or --tiny to time a tiny model trained first")
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    atexit.register(shutil.rmtree, work, True)
    if args.tiny:
        args.reviews, args.single, args.repeats = 64, 8, 1
        args.model = args.model or str(tiny_model(work))
    model_dir = Path(args.model)
    texts, labels, source = validation_texts(model_dir, args.data, args.reviews)
    cpu = cpu_info()
    folders = {"eager fp32": model_dir}
    for name, quantize in (("onnx fp32", None), ("onnx int8", "int8")):
        folders[name] = work / name.replace(" ", "-")
        export_onnx_folder(model_dir, folders[name], quantize, str(model_dir))
    models = {name: load_model(folder) for name, folder in folders.items()}
    autocast = {name: contextlib.nullcontext for name in models}
    if cpu.get("native_bf16"):  # bf16 is emulated (slower) without native support
        models["eager bf16"] = models["eager fp32"]
        autocast["eager bf16"] = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    single = texts[: args.single]
    speed: dict[str, dict[str, list[float]]] = {name: {"1": [], "32": [], "net": [], "latency": []} for name in models}
    batches = padded_batches(models["eager fp32"], texts, 32)  # every model here has the same tokenizer
    results: dict[str, dict] = {}
    for name, model in models.items():  # warm-up, and accuracy on every review
        with autocast[name]():
            model.predict(texts[:64], batch_size=32)
            predicted = [p.label for p in model.predict(texts, batch_size=32)]
        weights = folders.get(name, model_dir)
        weights = weights / (ONNX_NAME if "onnx" in name else WEIGHTS_NAME)
        results[name] = {
            "accuracy": round(sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels), 4),
            "size_mb": round(weights.stat().st_size / 1e6, 2),
        }
    for _ in range(args.repeats):  # runtimes alternate, so drifts of the machine reach them all alike
        for name, model in models.items():
            with autocast[name]():
                speed[name]["32"].append(len(texts) / timed(model.predict, texts, 32))
                speed[name]["net"].append(len(texts) / timed_network(model.model, batches))
                latencies = [timed(model.predict, [text], 1) for text in single]
            speed[name]["1"].append(len(single) / sum(latencies))
            speed[name]["latency"].extend(latencies)
    for name, measured in speed.items():
        latencies = sorted(measured["latency"])
        results[name] |= {
            "reviews_per_s_batch_1": round(statistics.median(measured["1"]), 1),
            "reviews_per_s_batch_32": round(statistics.median(measured["32"]), 1),
            "network_reviews_per_s_batch_32": round(statistics.median(measured["net"]), 1),
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2),
            "latency_ms_p99": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        }
    base = results["eager fp32"]
    for result in results.values():
        result["speedup_batch_32"] = round(result["reviews_per_s_batch_32"] / base["reviews_per_s_batch_32"], 2)
        result["network_speedup_batch_32"] = round(
            result["network_reviews_per_s_batch_32"] / base["network_reviews_per_s_batch_32"], 2
        )
        result["speedup_batch_1"] = round(result["reviews_per_s_batch_1"] / base["reviews_per_s_batch_1"], 2)
        result["size_ratio"] = round(result["size_mb"] / base["size_mb"], 3)
        result["accuracy_change_points"] = round(100 * (result["accuracy"] - base["accuracy"]), 2)
    tokens = [len(e.ids) for e in models["eager fp32"].encode(texts)]
    return finish(
        args,
        {
            "cpu": cpu,
            "model": str(model_dir),
            "texts": source,
            "mean_tokens_per_review": round(sum(tokens) / len(tokens), 1),
            "max_length": models["eager fp32"].max_length,
            "threads": torch.get_num_threads(),
            "runtimes": results,
        },
    )


def cli() -> dict:
    report = main()
    for name, row in report["runtimes"].items():
        print(
            f"{name:11s} batch 32 {row['reviews_per_s_batch_32']:8.1f}/s ({row['speedup_batch_32']:.2f}x; "
            f"network alone {row['network_speedup_batch_32']:.2f}x)  batch 1 "
            f"{row['reviews_per_s_batch_1']:7.1f}/s ({row['speedup_batch_1']:.2f}x)  p50 {row['latency_ms_p50']:.1f} "
            f"ms p99 {row['latency_ms_p99']:.1f} ms  {row['size_mb']:.1f} MB  accuracy {row['accuracy']:.4f}",
            file=sys.stderr,
        )
    return report


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(cli)
