"""Optimizer (AdamW) and learning-rate schedule (warm-up, then constant, linear or cosine decay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer.errors import MAX_COUNT, UserError, check_choice, check_range

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class OptimConfig:
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay (0 = Adam)"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    schedule: str = field(default="linear", metadata={"help": "after warm-up: constant, linear or cosine decay"})
    warmup_steps: int = field(default=0, metadata={"help": "warm-up optimizer steps (overrides warmup_ratio)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "warm-up as a share of all optimizer steps"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final learning rate as a share of lr"})
    max_grad_norm: float = field(default=5.0, metadata={"help": "clip gradients to this norm (0 = no clipping)"})
    embedding_lr_scale: float = field(
        default=1.0, metadata={"help": "the token embedding's learning rate as a multiple of lr"}
    )
    recurrent_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "the recurrent layers' learning rate as a multiple of lr (below 1 with --model.init_from: "
            "ULMFiT's discriminative rates, pre-trained layers moving slower than the new attention and classifier)"
        },
    )

    gradual_unfreezing: int = field(
        default=0,
        metadata={
            "help": "ULMFiT's gradual unfreezing, for a classifier started from --model.init_from: the attention and "
            "classifier train alone for this many epochs, then the recurrent layers join one at a time from the top, "
            "as many epochs apart, and the embedding last (0 = every layer trains from the first step)"
        },
    )

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, 0.0)
        check_range("optim.weight_decay", self.weight_decay, 0.0)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_range("optim.warmup_steps", self.warmup_steps, 0, MAX_COUNT)
        check_range("optim.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("optim.max_grad_norm", self.max_grad_norm, 0.0)
        check_range("optim.embedding_lr_scale", self.embedding_lr_scale, 0.0)
        check_range("optim.recurrent_lr_scale", self.recurrent_lr_scale, 0.0)
        check_range("optim.gradual_unfreezing", self.gradual_unfreezing, 0, MAX_COUNT)
        if len(self.betas) != 2:
            raise UserError(f"optim.betas={self.betas} must hold two numbers, e.g. [0.9,0.999]")
        for i, beta in enumerate(self.betas):  # AdamW's moving averages: 1 or more never forgets, or grows
            check_range(f"optim.betas[{i}]", beta, 0.0, 1.0, open_high=True)
        check_range("optim.eps", self.eps, 0.0, 1.0, open_low=True)  # 0 divides by zero where a gradient is
        if self.lr * self.weight_decay >= 1:
            raise UserError(
                f"optim.weight_decay={self.weight_decay} x optim.lr={self.lr} is 1 or more: each step would shrink "
                "every weight to zero or past it; choose a weight_decay below 1/lr"
            )


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; weight matrices decay, biases do not. With ``embedding_lr_scale`` or
    ``recurrent_lr_scale``, the embedding or the recurrent layers are groups of their own."""
    scaled = [(list(model.embedding.parameters()), config.embedding_lr_scale)]
    scaled.append((list(model.layers.parameters()), config.recurrent_lr_scale))
    scaled = [(params, scale) for params, scale in scaled if scale != 1]
    own = {id(p) for params, _ in scaled for p in params}
    trained = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    groups = [
        {"params": [p for p in trained if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0},
    ]
    for params, scale in scaled:
        lr = config.lr * scale
        groups.append({"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": lr})
        groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr})
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


class GradualUnfreezing:
    """ULMFiT's gradual unfreezing (``optim.gradual_unfreezing``): the layers above the encoder train
    alone for ``epochs`` epochs, then the recurrent layers join from the top, one every ``epochs``
    epochs, and the embedding last. A frozen layer's gradients are dropped before the optimizer step
    (after DDP has averaged them, the same on every process), so AdamW leaves its weights and its
    state untouched, weight decay included, and its steps start afresh when it joins."""

    def __init__(self, model: torch.nn.Module, epochs: int, steps_per_epoch: int) -> None:
        groups = [(f"layers.{i}", layer) for i, layer in reversed(list(enumerate(model.layers)))]
        groups.append(("embedding", model.embedding))
        self.joins = {name: (n + 1) * epochs * steps_per_epoch for n, (name, _) in enumerate(groups)}
        self.groups = [(self.joins[name], list(module.parameters())) for name, module in groups]

    def drop_frozen_gradients(self, step: int) -> None:
        """Before optimizer step ``step + 1``: the gradients of the layers that have not joined yet."""
        for joins, params in self.groups:
            if step < joins:
                for p in params:
                    p.grad = None

    def describe(self) -> str:
        return ", ".join(f"{name} from step {step}" for name, step in self.joins.items())


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> LRScheduler:
    """A schedule over ``total_steps`` optimizer steps; step it once per optimizer step."""
    warmup = config.warmup_steps or round(config.warmup_ratio * total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "cosine":
        decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=config.lr * config.min_lr_ratio)
    elif config.schedule == "linear":
        decay = LinearLR(
            optimizer, start_factor=1.0, end_factor=max(config.min_lr_ratio, 1e-8), total_iters=decay_steps
        )
    else:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return decay
    ramp = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


class MovingAverage(AveragedModel):
    """The exponential moving average of a model's weights (``train.ema_decay``), as torch's
    ``AveragedModel`` with ``get_ema_multi_avg_fn`` keeps it, and saved the same way, but without
    waiting for the device at each update: torch's reads its step counter on the host each time."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.started: bool | None = None  # read from the counter once, at the first update (after a resume too)

    def update_parameters(self, model: torch.nn.Module) -> None:
        if self.started is None:
            self.started = bool(self.n_averaged > 0)
        averaged = [p.detach() for p in self.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if self.started:
            self.multi_avg_fn(averaged, current, self.n_averaged)  # average += (1 - decay) * (current - average)
        else:
            for average, weight in zip(averaged, current, strict=True):
                average.copy_(weight)
            self.started = True
        self.n_averaged += 1
