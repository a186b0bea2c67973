"""The training loop's pieces, each alone: no process is started, nothing is trained."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from trainer.training.checkpoint import CheckpointConfig, TrainState
from trainer.training.loop import CheckpointPolicy, Epochs, Stop
from trainer.training.task import Classification
from trainer.training.validation import Validator


def test_the_checkpoint_policy_saves_every_n_steps_before_the_last_and_on_a_signal():
    policy = CheckpointPolicy(every=3, total_steps=10)
    assert [step for step in range(1, 11) if policy.after_step(step, signalled=False)] == [3, 6, 9]
    assert policy.after_step(10, signalled=True) and policy.after_step(4, signalled=True)
    assert policy.at_epoch_end(9) and not policy.at_epoch_end(10), "the end of training exports instead"
    never = CheckpointPolicy(every=0, total_steps=10)
    assert not any(never.after_step(step, signalled=False) for step in range(1, 11))


class Recorder:
    """A sampler or loader that records the epochs it is set to."""

    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def fake_run(total_steps, steps_per_epoch, state):
    skipped = []
    accelerator = SimpleNamespace(skip_first_batches=lambda loader, n: skipped.append(n) or ("skipped", n))
    run = SimpleNamespace(state=state, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    run.sampler, run.train_loader, run.accelerator = Recorder(), Recorder(), accelerator
    return run, skipped


def test_epochs_set_the_epoch_on_sampler_and_loader_and_skip_what_a_resume_has_done():
    state = TrainState(epoch=1, batches_in_epoch=5)
    run, skipped = fake_run(total_steps=10, steps_per_epoch=4, state=state)  # 3 epochs, the last one short
    epochs = Epochs(run)
    seen = []
    for loader in epochs:
        seen.append(loader)
        epochs.end()
    assert seen == [("skipped", 5), run.train_loader], "mid-epoch: the loader past the batches done"
    assert skipped == [5] and run.sampler.epochs == run.train_loader.epochs == [1, 2]
    assert state.epoch == 3 and state.batches_in_epoch == 0
    fresh, _ = fake_run(total_steps=8, steps_per_epoch=4, state=TrainState())
    assert next(iter(Epochs(fresh))) is fresh.train_loader and Epochs(fresh).count == 2


def validator_for(losses, patience=0, save_best=True):
    """A Validator over a run whose validations give ``losses`` in turn, recording what it exports."""
    state = TrainState()
    config = SimpleNamespace(
        checkpoint=CheckpointConfig(best_metric="loss", early_stopping_patience=patience, save_best=save_best),
        train=SimpleNamespace(eval_every_steps=5),
    )
    logged, exported, notes = [], [], []
    run = SimpleNamespace(
        state=state,
        config=config,
        steps_per_epoch=10,
        weights=lambda: None,
        eval_loader=None,
        accelerator=SimpleNamespace(autocast=nullcontext, is_main_process=True),
        log=SimpleNamespace(write=lambda record, step: logged.append((step, record))),
    )
    guard = SimpleNamespace(check=lambda step: None, diverged=lambda step, what: pytest.fail(f"diverged: {what}"))
    metrics = iter({"loss": loss, "accuracy": 1 - loss, "f1": 1 - loss} for loss in losses)
    run.task = SimpleNamespace(evaluate=lambda run: next(metrics), summary=Classification().summary)
    validator = Validator(run, guard, notes.append, lambda step, m: exported.append((step, m["loss"])))
    return validator, state, metrics, logged, exported, notes


def test_the_validator_keeps_the_best_model_and_stops_after_patience_evaluations():
    validator, state, _, logged, exported, notes = validator_for([0.5, 0.4, 0.45, 0.42, 0.3], patience=2)
    decisions = [validator(step) for step in (10, 20, 30)]
    assert decisions == [False, False, False] and exported == [(10, 0.5), (20, 0.4)]
    assert state.best_step == 20 and state.evals_without_improvement == 1
    assert validator(40), "a second evaluation without improvement: stop"
    assert "early stopping: no better validation loss in 2 evaluations" in notes
    assert validator.last_step == 40 and validator.metrics["loss"] == 0.42
    assert [step for step, _ in logged] == [10, 20, 30, 40] and "eval/loss" in logged[0][1]
    assert [validator.due(step) for step in (5, 7, 10)] == [True, False, True]


def test_without_patience_the_validator_never_stops_and_save_best_off_exports_nothing():
    validator, state, _, _, exported, _ = validator_for([0.5, 0.6, 0.7, 0.8], save_best=False)
    assert not any(validator(step) for step in (1, 2, 3, 4))
    assert exported == [] and state.best_step == 1 and state.evals_without_improvement == 3


def test_stop_reasons_are_an_enum():
    assert {reason.value for reason in Stop} == {"early stopping", "signal"}
