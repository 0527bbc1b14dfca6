"""The training phase, done once: train (resumed from the last complete checkpoint), save the model into run_dir/model
and record the phase in the run's journal (trainer.run.journal); or, in a rerun after a kill, take what the killed
run left instead of training again:

- the journal records the phase and the saved model: load run_dir/model; the phase's figures are the recorded ones;
- the journal records the phase but not the saved model (a kill while saving), or it records nothing and the newest
  checkpoint is the last step's (a kill between that checkpoint and the record): load that checkpoint, save it.

The Trainer itself would train one step too many there: resumed from a checkpoint at the last step, its loop
(transformers 5.24 ``_inner_training_loop``) enters epoch ``global_step // steps_per_epoch`` whenever max_steps is
not a whole number of epochs and checks ``global_step >= max_steps`` only after an optimizer step
(``DefaultFlowCallback.on_step_end``): checkpoint-30 of max_steps=30 trains a step 31. So a checkpoint at (or past)
the planned last step is never resumed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.run import journal, metrics_log

log = logging.getLogger(__name__)

PHASE = "trained"


def run(cfg, trainer, run_dir: Path, main: bool) -> dict[str, Any]:
    """The training phase (or what a killed run left of it, see the module docstring); returns its figures (the
    Trainer's summary metrics: train_runtime, train_loss ...). trainer.state afterwards holds the phase's step,
    epoch and log history, as after an uninterrupted train()."""
    from trainer.engine.checkpoints import last_complete

    record = _recorded(run_dir, trainer.args)
    if record is not None and record.get("saved"):
        log.info("training finished earlier (%s): its model is loaded from %s", journal.JOURNAL, run_dir / "model")
        trainer._load_from_checkpoint(str(run_dir / "model"))
        _restore(trainer, record, run_dir, main)
        if cfg.method.merge_adapter:  # the uninterrupted run evaluates the merged model
            trainer.model.merge_and_unload()
        return record["metrics"]
    checkpoint = last_complete(run_dir / "checkpoints")
    final = _final_state(checkpoint, trainer.args, record)
    if final is not None:
        assert checkpoint is not None
        best = final.best_model_checkpoint if trainer.args.load_best_model_at_end else None
        trainer._load_from_checkpoint(best if best and Path(best).is_dir() else checkpoint)
        if record is None:
            log.warning(
                "%s holds the last step (%d) of training, which ended before its figures were recorded: training "
                "is not resumed (it would train a step too many); the model is taken from it, and the report's "
                "training time is unknown",
                Path(checkpoint).name,
                final.global_step,
            )
            record = _reconstructed(final)
            trainer.state = final
            trainer.state.log_history = list(record["log_history"])
            if main:  # the killed run's records up to the last step (a torn last line dropped)
                metrics_log.truncate_after(run_dir / metrics_log.FILE, final.global_step)
        else:
            log.info("training finished earlier; its model is taken from %s and saved again", Path(checkpoint).name)
            _restore(trainer, record, run_dir, main)
    else:
        if record is not None:
            log.warning("training finished earlier but no checkpoint of its last step is left: it trains again")
        if checkpoint:
            log.info("resuming from %s", checkpoint)
        trained = trainer.train(resume_from_checkpoint=checkpoint)
        record = _record_of(trainer, trained.metrics, run_dir)
    if main:
        journal.record(run_dir, PHASE, record)  # before saving: a kill while saving keeps the figures
    _save(cfg, trainer, run_dir, main)
    if main:
        journal.record(run_dir, PHASE, {**record, "saved": True})
    return record["metrics"]


def planned_steps(args, recorded_max: int) -> int:
    """The step training ends at: train.max_steps, else (epochs) what the Trainer computed when it started."""
    return args.max_steps if args.max_steps > 0 else recorded_max


def _recorded(run_dir: Path, args) -> dict | None:
    record = journal.read(run_dir).get(PHASE)
    if not isinstance(record, dict):
        return None
    if record["global_step"] < planned_steps(args, record["max_steps"]):  # resume.allow_changes: more steps now
        log.warning(
            "training was recorded as finished at step %d; this run plans more: it trains on", record["global_step"]
        )
        return None
    return record


def _final_state(checkpoint: str | None, args, record: dict | None):
    """The TrainerState of ``checkpoint`` when it is the last step's (the recorded one, or the planned last step
    when nothing is recorded), else None (training goes on from it)."""
    if checkpoint is None:
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if record is not None:
        return state if state.global_step == record["global_step"] else None
    return state if state.global_step >= planned_steps(args, state.max_steps) else None


def _record_of(trainer, metrics: dict, run_dir: Path) -> dict:
    state = trainer.state
    return {
        "global_step": state.global_step,
        "epoch": state.epoch,
        "max_steps": state.max_steps,
        "metrics": dict(metrics),
        "log_history": list(state.log_history),
        "metrics_log_records": metrics_log.records(run_dir / metrics_log.FILE),
    }


def _reconstructed(state) -> dict:
    """The phase's figures from a last-step checkpoint's log: train_loss as the Trainer computes it (the mean of
    every step's loss: each logged loss weighs the steps it covers); its time was never recorded."""
    steps = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h and "step" in h]
    covered, total, before = 0, 0.0, 0
    for step, loss in steps:
        total += loss * (step - before)
        covered, before = covered + step - before, step
    metrics = {"total_flos": state.total_flos, "train_loss": total / covered if covered else None}
    return {
        "global_step": state.global_step,
        "epoch": state.epoch,
        "max_steps": state.max_steps,
        "metrics": metrics,
        "log_history": [*state.log_history, {**metrics, "epoch": state.epoch, "step": state.global_step}],
        "metrics_log_records": None,
    }


def _restore(trainer, record: dict, run_dir: Path, main: bool) -> None:
    """trainer.state as the recorded phase left it (the evaluations log at its step), and metrics.jsonl as it was
    then (records a killed evaluation logged after it are logged again)."""
    state = trainer.state
    state.global_step, state.epoch, state.max_steps = record["global_step"], record["epoch"], record["max_steps"]
    state.log_history = list(record["log_history"])
    if main and record.get("metrics_log_records") is not None:
        metrics_log.keep_first(run_dir / metrics_log.FILE, record["metrics_log_records"])


def _save(cfg, trainer, run_dir: Path, main: bool) -> None:
    """The trained model into run_dir/model (and run_dir/merged with method.merge_adapter)."""
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the final model is gathered into one full folder
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # on every rank (ZeRO-3 gathers shards); rank 0 writes it with the tokenizer, through .writing/ (checkpoints.staged)
    trainer.save_model(str(run_dir / "model"))
    generation_config = getattr(trainer.model, "generation_config", None)  # a reward model has none
    if main and generation_config is not None and not (run_dir / "model" / "generation_config.json").is_file():
        generation_config.save_pretrained(run_dir / "model")  # an adapter: its stop ids
    if cfg.method.merge_adapter:
        from trainer import models

        merged = trainer.model.merge_and_unload()
        if main:
            models.save_folder(run_dir / "merged", merged, trainer.processing_class)
