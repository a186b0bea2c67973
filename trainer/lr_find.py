"""The learning-rate range test: ``python -m trainer.lr_find [--config PRESET] [--section.key=value ...]``.

    python -m trainer.lr_find --config imdb --data.train_files=../shared/data/imdb/train.csv.gz --out lr.png

Trains a fresh model of the config for ``--steps`` batches while the learning rate grows
geometrically from ``--start`` to ``--end`` (Smith 2017; fastai's ``lr_find``), records the
smoothed training loss at each rate, stops once it passes 4x its lowest, and prints a suggested
rate: where the smoothed loss falls fastest. It changes no run: nothing is written but the
``--out`` plot (and ``--json`` on standard output). One process; the config's data, model,
optimizer (with its parameter groups' scales), clipping, class weights and precision.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from trainer.config import load_config
from trainer.errors import UserError, check_new_file, exit_for


def lr_range_test(config, start: float, end: float, steps: int) -> dict:
    """{"lr": [...], "loss": [...] (smoothed), "raw_loss": [...], "suggested_lr", "min_loss_lr"}."""
    from accelerate import Accelerator

    from trainer.data.batching import build_dataloaders
    from trainer.data.preparation import Coordination
    from trainer.hardware import choose_precision
    from trainer.models.sentiment import classification_loss
    from trainer.training.optim import build_optimizer
    from trainer.training.task import Classification

    torch.manual_seed(config.train.seed)
    task = Classification()
    data = task.data(config, Coordination())
    loader, _ = build_dataloaders(data, config.data, config.train.batch_size, config.train.batch_size, seed=0)
    on_cpu = config.train.cpu or not torch.accelerator.is_available()
    precision, _ = choose_precision(config.train.mixed_precision, on_cpu)
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision or "no")
    model = task.model(config, data)
    optimizer = build_optimizer(model, config.optim)
    scales = [group["lr"] / config.optim.lr for group in optimizer.param_groups]  # the groups' own scales
    model, optimizer = accelerator.prepare(model, optimizer)
    weights = task.class_weights
    lrs, losses, raw = [], [], []
    smoothed, best, beta = 0.0, math.inf, 0.98
    batches = iter(loader)
    model.train()
    for step in range(steps):
        lr = start * (end / start) ** (step / max(steps - 1, 1))
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = classification_loss(model(batch["input_ids"], batch["lengths"]), batch["labels"], weights=weights)
        accelerator.backward(loss)
        if config.optim.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach().item()
        if not math.isfinite(value):
            break
        smoothed = beta * smoothed + (1 - beta) * value
        debiased = smoothed / (1 - beta ** (step + 1))
        lrs.append(lr)
        raw.append(value)
        losses.append(debiased)
        best = min(best, debiased)
        if step > 10 and debiased > 4 * best:
            break
    if len(lrs) < 5:
        raise UserError(f"the loss diverged after {len(lrs)} steps; start lower (--start={start / 100:g})")
    skip = max(1, len(lrs) // 10)  # the first steps' smoothed loss is mostly the moving average settling
    lowest = min(range(skip, len(losses)), key=losses.__getitem__)
    # The steepest fall of the smoothed loss per unit of log(lr), between the skipped start and its lowest point.
    candidates = range(skip, max(lowest, skip + 1))
    slope = {i: (losses[i + 1] - losses[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1]) for i in candidates}
    steepest = min(slope, key=slope.__getitem__) if slope else lowest
    return {
        "clear": losses[lowest] < 0.95 * losses[skip],  # did the loss fall at all over the range?
        "lr": lrs,
        "loss": losses,
        "raw_loss": raw,
        "suggested_lr": lrs[steepest],
        "min_loss_lr": lrs[lowest],
        "steps": len(lrs),
        "configured_lr": config.optim.lr,
    }


def plot(result: dict, path: Path, title: str) -> None:
    from trainer.plot import _pyplot, save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lr"], result["raw_loss"], color="#bbb", linewidth=0.8, label="loss per batch")
    ax.plot(result["lr"], result["loss"], color="#1f77b4", label="smoothed loss")
    ax.axvline(result["suggested_lr"], color="#d62728", linestyle="--", label=f"suggested {result['suggested_lr']:.2g}")
    ax.axvline(result["configured_lr"], color="#2ca02c", linestyle=":", label=f"config {result['configured_lr']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_ylim(top=min(max(result["raw_loss"]), 2.5 * min(result["loss"]) + 0.5))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save(fig, path, {"loss": len(result["loss"]), "raw_loss": len(result["raw_loss"])})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.lr_find", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="a preset name or a YAML file")
    parser.add_argument("--start", type=float, default=1e-6, help="the first learning rate")
    parser.add_argument("--end", type=float, default=1.0, help="the last learning rate")
    parser.add_argument("--steps", type=int, default=100, help="batches over the range")
    parser.add_argument("--out", default="lr_find.png", help="the plot to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--json", action="store_true", help="print the curve and the suggestion as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args, overrides = parser.parse_known_args(argv)
    try:
        if not 0 < args.start < args.end:
            raise UserError(f"--start={args.start:g} and --end={args.end:g} need 0 < start < end")
        if args.steps < 10:
            raise UserError(f"--steps={args.steps} is too few for a range test; give at least 10")
        out = Path(args.out)
        config = load_config(args.config, overrides)
        data = config.data
        inputs = [*(data.train_files or []), *(data.validation_files or []), config.tokenizer.path]
        check_new_file(out, "--out", args.overwrite, inputs)
        result = lr_range_test(config, args.start, args.end, args.steps)
        plot(result, out, f"LR range test: {Path(args.config).stem}, {result['steps']} steps")
    except Exception as exc:
        return exit_for(exc, args.debug)
    if not result["clear"]:
        print(
            f"note: the smoothed loss fell less than 5% over the range: {result['steps']} steps may be too few for "
            "this data to start learning; give more --steps (or a wider --start/--end)",
            file=sys.stderr,
        )
    print(
        f"suggested lr {result['suggested_lr']:.3g} (the smoothed loss falls fastest there; lowest at "
        f"{result['min_loss_lr']:.3g}; the config has {result['configured_lr']:.3g}); wrote {out}",
        file=sys.stderr,
    )
    if args.json:
        try:
            print(json.dumps(result), flush=True)
        except Exception as exc:  # a full disk, or standard output's reader left (a quiet 0)
            return exit_for(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
