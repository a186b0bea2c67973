"""The GPU path, checked and measured in one go; writes one JSON result file.

Needs torch and tokenizers (datasets and wandb are optional). Checks, then measures:
- correctness: the same weights give the same logits on the GPU as on the CPU (float32, TF32
  off), within a stated tolerance under fp16/bf16 autocast; a review's logits do not depend on the
  padding its batch adds; the dtype the LSTM actually runs in under each autocast;
- training steps per second for float32, fp16 (with a GradScaler) and bf16 autocast, for the
  trainer's model on length-grouped batches, the reference article's model on fixed-length batches (float32:
  its sigmoid + BCELoss cannot run under autocast), and a packed fused bidirectional LSTM;
  real (non-padding) tokens/s, computed tokens/s, achieved FLOP/s against the model's own count
  (training ~ 3 x forward, forward = 8 H (I + H) per token per layer and direction), peak memory;
- when ``datasets`` is importable, a short run of the trainer itself on the GPU.

Data: IMDB from ../shared/data when present (tokenised with the trainer's WordPiece), otherwise
random token ids with IMDB's length distribution (log-normal, median 213, mean 288 tokens).

    ./benchmarks/gpu.sh [RESULT.json]                       # one NVIDIA GPU, under 8 minutes
    python benchmarks/bench_gpu.py --device cpu --quick --out result.json   # the same code on a CPU
    python benchmarks/bench_gpu.py --tiny --out result.json   # --device cpu --quick on random ids: a check in seconds
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"

from bench_step import FusedBiLSTM  # noqa: E402
from reference_baseline import ReferenceSentimentRNN, pad_fixed  # noqa: E402

from trainer.hardware import cpu_info  # noqa: E402
from trainer.models.sentiment import ModelConfig, SentimentRNN, classification_loss  # noqa: E402

SIZES = {  # the `imdb` preset's model, and a larger one a GPU is for
    "imdb": ModelConfig(embedding_dim=128, hidden_dim=128, num_layers=1, bidirectional=True, dropout=0.4),
    "large": ModelConfig(embedding_dim=256, hidden_dim=512, num_layers=2, bidirectional=True, dropout=0.4),
}
TINY = ModelConfig(embedding_dim=16, hidden_dim=16, num_layers=2, bidirectional=True, dropout=0.0)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def training_flops_per_token(config: ModelConfig) -> int:
    """3 x the forward multiply-adds x 2 of the recurrent layers (the rest is under 1%)."""
    directions = 2 if config.bidirectional else 1
    forward = 0
    for layer in range(config.num_layers):
        inputs = config.embedding_dim if layer == 0 else config.hidden_dim * directions
        forward += directions * 8 * config.hidden_dim * (inputs + config.hidden_dim)
    return 3 * forward


def load_sequences(
    count: int, max_length: int, vocab_size: int, imdb: bool = True
) -> tuple[list[list[int]], list[int], str]:
    """(token ids, labels, where they came from): IMDB where ``imdb`` and it is present."""
    if imdb and IMDB.is_file():
        from trainer.data.tokenizer import TokenizerConfig, train_tokenizer

        with gzip.open(IMDB, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        random.Random(0).shuffle(rows)
        texts = [r["text"] for r in rows]
        tokenizer = train_tokenizer(
            (texts[i : i + 1000] for i in range(0, len(texts), 1000)),
            TokenizerConfig(model="wordpiece", vocab_size=vocab_size),
        )
        tokenizer.enable_truncation(max_length)
        ids = [e.ids for e in tokenizer.encode_batch_fast(texts[:count])]
        return ids, [int(r["label"]) for r in rows[:count]], f"IMDB train ({IMDB})"
    rng = random.Random(0)
    sigma = math.sqrt(2 * math.log(288 / 213))
    lengths = [min(max_length, max(1, round(rng.lognormvariate(math.log(213), sigma)))) for _ in range(count)]
    ids = [[rng.randrange(2, vocab_size) for _ in range(n)] for n in lengths]
    return ids, [rng.randrange(2) for _ in range(count)], "random ids, IMDB-like lengths"


def grouped_batches(ids: list[list[int]], labels: list[int], batch_size: int) -> list[dict]:
    """The trainer's batches: sorted by length within the pool, right-padded to the longest."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chunk = order[start : start + batch_size]
        lengths = torch.tensor([len(ids[i]) for i in chunk])
        input_ids = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
        batches.append({"input_ids": input_ids, "lengths": lengths, "labels": torch.tensor([labels[i] for i in chunk])})
    random.Random(1).shuffle(batches)
    return batches


def fixed_batches(ids: list[list[int]], labels: list[int], batch_size: int, max_length: int) -> list[dict]:
    """The reference article's batches: every review front-padded or cut to max_length, in data order."""
    out = []
    for start in range(0, len(ids) - batch_size + 1, batch_size):
        chunk = ids[start : start + batch_size]
        out.append(
            {
                "input_ids": pad_fixed(chunk, max_length),
                "lengths": torch.tensor([min(len(x), max_length) for x in chunk]),
                "labels": torch.tensor(labels[start : start + batch_size]),
            }
        )
    return out


def to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward(model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    return model(batch["input_ids"].to(device), batch["lengths"].to(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    kind: str,
    model: nn.Module,
    batches: list[dict],
    device: torch.device,
    precision: str,
    steps: int,
    config: ModelConfig,
) -> dict:
    """Trains ``steps`` timed steps after 3 warm-up steps; tokens/s, FLOP/s, peak memory."""
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    hidden = model.init_hidden(batches[0]["input_ids"].size(0)) if kind == "reference" else None
    criterion = nn.BCELoss()

    def step(batch: dict) -> None:
        nonlocal hidden
        batch = to(batch, device)
        if kind == "reference":  # the article's step, hidden state carried and detached
            hidden = tuple(h.detach() for h in hidden)
            output, hidden = model(batch["input_ids"], hidden)
            loss = criterion(output.squeeze(-1), batch["labels"].float())
        else:
            with torch.autocast(device.type, dtype=DTYPES.get(precision), enabled=precision in DTYPES):
                loss = classification_loss(model(batch["input_ids"], batch["lengths"]), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()

    for batch in batches[:3]:
        step(batch)
    timed = [batches[3 + i % (len(batches) - 3)] for i in range(steps)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    sync(device)
    seconds = time.perf_counter() - started
    real = sum(int(b["lengths"].sum()) for b in timed)
    computed = sum(b["input_ids"].numel() for b in timed)
    flops = training_flops_per_token(config) * computed / seconds
    result = {
        "tokens_per_s": round(real / seconds),
        "computed_tokens_per_s": round(computed / seconds),
        "padding_efficiency": round(real / computed, 3),
        "tflops": round(flops / 1e12, 3),
        "steps_per_s": round(steps / seconds, 2),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def lstm_dtype(model: SentimentRNN, batch: dict, device: torch.device, dtype: torch.dtype) -> str:
    seen = []
    handle = model.layers[0][0].register_forward_hook(lambda m, i, o: seen.append(str(o[0].dtype)))
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        model(batch["input_ids"].to(device), batch["lengths"].to(device))
    handle.remove()
    return seen[0]


def correctness(config: ModelConfig, batch: dict, device: torch.device, vocab_size: int) -> dict:
    """Device vs CPU logits (float32, TF32 off; fp16/bf16 autocast) and padding invariance."""
    torch.manual_seed(0)
    cpu_model = SentimentRNN(config, vocab_size, 2).eval()
    model = copy.deepcopy(cpu_model).to(device).eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            reference = cpu_model(batch["input_ids"], batch["lengths"])
            out = {"float32_max_abs_diff": (forward(model, batch, device).cpu() - reference).abs().max().item()}
            precisions = ("fp16", "bf16") if device.type == "cuda" else ("bf16",)
            for name in precisions:
                with torch.autocast(device.type, dtype=DTYPES[name]):
                    logits = forward(model, batch, device).float().cpu()
                out[f"{name}_max_abs_diff"] = (logits - reference).abs().max().item()
                out[f"lstm_output_dtype_under_{name}_autocast"] = lstm_dtype(model, batch, device, DTYPES[name])
            # The shortest review alone (no padding) against its row in the padded batch.
            row = int(batch["lengths"].argmin())
            n = int(batch["lengths"][row])
            alone = model(batch["input_ids"][row : row + 1, :n].to(device), batch["lengths"][row : row + 1].to(device))
            padded = forward(model, batch, device)[row]
            out["padding_invariance_max_abs_diff"] = (alone[0] - padded).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    autocast_ok = all(out[f"{p}_max_abs_diff"] < 0.05 for p in precisions)
    out["passed"] = out["float32_max_abs_diff"] < 1e-4 and out["padding_invariance_max_abs_diff"] < 1e-5 and autocast_ok
    return out


def trainer_run(device: torch.device, quick: bool) -> dict:
    """A short run of the trainer itself (built-in data), if datasets is installed."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        return {"skipped": "datasets is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        preset, steps = ("tiny", "20") if quick else ("default", "300")
        command = [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            preset,
            f"--train.output_dir={tmp}/run",
            "--logging.tracker=none",
            "--logging.plots=false",
            f"--train.max_steps={steps}",
            "--train.mixed_precision=auto",
            "--checkpoint.save_final=false",
            f"--train.cpu={device.type == 'cpu'}",
            f"--data.cache_dir={tmp}/cache",
        ]
        started = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return {"failed": done.stderr[-1500:]}
        info = json.loads((Path(tmp) / "run" / "run_info.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "device": info["device"],
        "mixed_precision": info["mixed_precision"],
        "steps": info["final_step"],
        "best_accuracy": info["best_metrics"]["accuracy"],
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test of this script")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="--device cpu --quick on random ids: a check in seconds")
    args = parser.parse_args()
    if args.tiny:
        args.device, args.quick = "cpu", True
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible; run with --device cpu to check the script itself")
    started = time.perf_counter()
    sizes = {"tiny": TINY} if args.quick else SIZES
    steps = 2 if args.quick else args.steps
    vocab_size = 500 if args.quick else 20000
    count = args.batch_size * (6 if args.quick else 40)
    ids, labels, source = load_sequences(count, args.max_length, vocab_size, imdb=not args.tiny)
    if args.quick:
        ids = [x[:32] for x in ids]
    grouped = grouped_batches(ids, labels, args.batch_size)
    fixed = fixed_batches(ids, labels, args.batch_size, 32 if args.quick else args.max_length)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "data": source,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    result["correctness"] = correctness(next(iter(sizes.values())), grouped[0], device, vocab_size)
    result["cpu"] = cpu_info()
    write(args.out, result, started)
    precisions = ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16")
    for size, config in sizes.items():
        torch.manual_seed(0)
        ours = SentimentRNN(config, vocab_size, 2)
        runs = {}
        for precision in precisions:
            runs[f"ours_{precision}"] = measure("ours", copy.deepcopy(ours), grouped, device, precision, steps, config)
        reference = ReferenceSentimentRNN(
            config.num_layers,
            vocab_size,
            config.hidden_dim,
            config.embedding_dim,
            1,
            drop_prob=config.dropout,
            bidirectional=config.bidirectional,
        )
        runs["reference_fp32"] = measure("reference", reference, fixed, device, "fp32", steps, config)
        runs["packed_fp32"] = measure("packed", FusedBiLSTM(ours, packed=True), grouped, device, "fp32", steps, config)
        best = max((k for k in runs if k.startswith("ours")), key=lambda k: runs[k]["tokens_per_s"])
        runs["best_ours"] = best
        runs["tokens_per_s_speedup_vs_reference"] = round(
            runs[best]["tokens_per_s"] / runs["reference_fp32"]["tokens_per_s"], 2
        )
        runs["training_flops_per_token"] = training_flops_per_token(config)
        result[size] = {"model": {k: getattr(config, k) for k in ("embedding_dim", "hidden_dim", "num_layers")}} | runs
        print(f"{size}: {json.dumps(runs)}", file=sys.stderr, flush=True)
        write(args.out, result, started)
    result["trainer_run"] = trainer_run(device, args.quick)
    return write(args.out, result, started)


def write(path: str, result: dict, started: float) -> dict:
    """The result so far, rewritten after each measurement: a crash or a time-out keeps what was done."""
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    report = main()
    print(json.dumps({"correct": report["correctness"]["passed"], "seconds": report["seconds"]}))
