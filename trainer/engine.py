"""Resolved config -> a fine-tuning run, top to bottom.

model and tokenizer -> dataset in the objective's shape -> adapter -> the objective's TRL trainer -> base evaluation
-> training (resumed from the last checkpoint when there is one) -> saved weights -> fine-tuned evaluation ->
report. The training loop is TRL's; this module only builds things in order and logs what it built.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from trainer import (
    cost,
    data,
    endpoint_eval,
    estimate,
    evaluation,
    judge,
    loggers,
    memory,
    models,
    objectives,
    regression,
    report_files,
)
from trainer.config_checks import check_generation_length

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (torchrun, deepspeed and accelerate set RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def weight_dtype(cfg: DictConfig, device: str) -> dict:
    """model.dtype resolved for this device (auto: by what torch reports), logged with the reason."""
    dtype, why = models.resolve_dtype(cfg.model.dtype, device, full_weights=cfg.method.peft is None)
    log.info("model.dtype=%s -> %s: %s", cfg.model.dtype, dtype, why)
    return {"device": device, "model_dtype": dtype, "why": why}


def load_model_and_tokenizer(cfg: DictConfig, device: str, dtype: str):
    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, added_tokens = models.load_tokenizer(cfg.model, path)
    model = models.load_model(cfg.model, cfg.method, path, tokenizer, device, dtype, cfg.objective.head)
    check_generation_length(cfg.eval, model.config)  # before any training: eval.generation.max_new_tokens fits
    log.info(
        "model %s (%s, %.1fM parameters) on %s", cfg.model.name_or_path, path, model.num_parameters() / 1e6, device
    )
    return path, tokenizer, added_tokens, model


def build_trainer(cfg, run_dir: Path, device: str, model, tokenizer, prepared, peft_config=None):
    """The objective's TRL trainer (objective.trainer: SFTTrainer, DPOTrainer ...) over the prepared data, with the
    objective's extras (GRPO's reward functions, the distillation teacher); the loop is TRL's."""
    trainer_class = objectives.trainer_class(cfg.objective)
    return trainer_class(
        model=model,
        args=objectives.training_args(cfg, run_dir, device, loggers.report_to(cfg.logger, run_dir)),
        train_dataset=prepared.train,
        eval_dataset=prepared.validation if len(prepared.validation) else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=loggers.callbacks(cfg.logger, run_dir),
        **objectives.extras(cfg, tokenizer, device),
    )


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint; torn ones (a kill while writing) are set aside with a warning."""
    from trainer.checkpoints import last_complete

    return last_complete(run_dir / "checkpoints")


def train(cfg: DictConfig, run_dir: Path, device: str) -> dict:
    from transformers import set_seed

    set_seed(cfg.seed)
    main = is_main_process()  # every rank trains and evaluates; only rank 0 writes files into the run dir
    results: dict = {"hardware": weight_dtype(cfg, device)}
    model_path, tokenizer, added_tokens, model = load_model_and_tokenizer(
        cfg, device, results["hardware"]["model_dtype"]
    )
    prepared = objectives.prepare(cfg, tokenizer, run_dir if main else None)
    log.info("dataset: %d training / %d validation rows", len(prepared.train), len(prepared.validation))

    peft_config = objectives.peft_config(cfg, added_tokens)
    trainer = build_trainer(cfg, run_dir, device, model, tokenizer, prepared, peft_config)
    if peft_config is not None:
        trainer.model.print_trainable_parameters()

    held_out = objectives.held_out(cfg, prepared.examples, cfg.eval.max_examples)
    queries = held_out.queries
    dtype, target = results["hardware"]["model_dtype"], run_dir if main else None
    forecast = None  # the pre-flight estimate models supervised fine-tuning's workload (tokenized sequences)
    if cfg.objective.data == "supervised":
        args = (cfg, device, dtype, trainer.model, trainer.args, tokenizer, prepared, model_path, target)
        forecast = estimate.for_run(*args)
    if cfg.eval.enabled and cfg.eval.compare_base:
        with before_training(trainer):
            results.update(base_sections(cfg, trainer, tokenizer, held_out, model_path, prepared, main))
        memory.release()  # the evaluation's freed buffers, before training allocates its own

    checkpoint = last_checkpoint(run_dir)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    trained = trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the final model is gathered into one full folder
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(run_dir / "model"))  # on every rank (ZeRO-3 gathers shards); the Trainer writes on rank 0
    if main:
        tokenizer.save_pretrained(run_dir / "model")
    if cfg.method.merge_adapter:
        merged = trainer.model.merge_and_unload()
        if main:
            merged.save_pretrained(run_dir / "merged")
            tokenizer.save_pretrained(run_dir / "merged")

    memory.release()  # training's freed activations, before evaluation allocates its own
    if cfg.eval.enabled:  # on every rank: evaluation is collective (sharded loss; ZeRO-3 gathers weights to generate)
        base = results.get("base")
        results["finetuned"] = objectives.evaluate(trainer, tokenizer, cfg, held_out, "finetuned", base)
        if "regression" in results:  # eval.regression: the probe set again, on the fine-tuned model
            tuned = regression.evaluate(trainer, tokenizer, cfg, "finetuned")
            results["regression"] = regression.section(cfg.eval.regression, results["regression"]["base"], tuned)
    if not main:
        return results
    if cfg.eval.enabled and endpoint_eval.configured(cfg.eval):
        results["compare"] = endpoint_eval.compare_models(cfg.eval, queries, run_dir=run_dir)
    results["data"] = {"cache_key": prepared.cache_key, "cache_hit": prepared.cache_hit, **prepared.stats}
    if forecast is not None:
        results["estimate"] = estimate.measured(forecast, trainer.state.log_history)
    if cfg.eval.enabled and judge.configured(cfg.eval.judge):
        results["judge"] = judge.run(cfg.eval.judge, results, cfg.cache_dir)
    if cfg.eval.enabled:
        seconds, train_rows = trained.metrics["train_runtime"], prepared.examples.train
        results["break_even"] = cost.local(cfg, seconds, results, tokenizer, queries, train_rows)
    results["objective"] = {"name": cfg.objective.name, "headline": list(cfg.objective.headline)}  # the verdict's
    title = f"hydratune run: {cfg.run_name} (objective={cfg.objective.name})"
    report_files.write_report(run_dir, results, trainer.state.log_history, title)
    loggers.finish(trainer)
    log.info("report: %s (and report.html)", run_dir / "report.md")
    return results


@contextmanager
def before_training(trainer):
    """Evaluate the base model without spoiling how train() prepares it. evaluate() registers the model with accelerate
    unwrapped (train() would then skip DDP's gradient averaging: each rank would train alone), refuses DeepSpeed under
    ZeRO-1/2 (every rank holds the whole model then: evaluate it plainly) and under ZeRO-3 starts an inference-only
    engine (no optimizer). Afterwards train() prepares the model afresh."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    deepspeed = trainer.is_deepspeed_enabled
    trainer.is_deepspeed_enabled = deepspeed and is_deepspeed_zero3_enabled()
    try:
        yield
    finally:
        trainer.is_deepspeed_enabled = deepspeed
        trainer.deepspeed, trainer.model_wrapped = None, trainer.model
        trainer.accelerator._models.clear()
        trainer.model._is_accelerate_prepared = False


def base_sections(cfg, trainer, tokenizer, held_out, model_path, prepared, main: bool = True) -> dict:
    """The base model's results (and, with eval.few_shot=K, the base model prompted with K demonstrations),
    cached across runs that share model, data and eval settings. Ranks other than 0 read the cache, never write it
    (a cache file this run writes appears only after the collective evaluation every rank has entered)."""
    sections, queries = {}, held_out.queries
    file = evaluation.base_cache_file(cfg, model_path, queries, prepared.cache_key, "base")
    sections["base"] = evaluation.cached(
        file,
        lambda: objectives.evaluate(trainer, tokenizer, cfg, held_out, "base"),
        cfg.eval.cache_base and (main or file.exists()),
    )
    if cfg.eval.regression:
        probe = regression.queries(cfg.eval.regression)  # in the key: an edited probe file is asked again
        file = evaluation.base_cache_file(cfg, model_path, probe, prepared.cache_key, "regression")
        sections["regression"] = {
            "base": evaluation.cached(
                file,
                lambda: regression.evaluate(trainer, tokenizer, cfg, "base"),
                cfg.eval.cache_base and (main or file.exists()),
            )
        }
    if cfg.eval.few_shot > 0:
        demos = evaluation.queries(prepared.examples.train, cfg.eval.few_shot)
        shots = [evaluation.with_demonstrations(q, demos) for q in queries]
        file = evaluation.base_cache_file(cfg, model_path, shots, prepared.cache_key, "few_shot")
        sections["few_shot"] = evaluation.cached(
            file,
            lambda: evaluation.evaluate(trainer, tokenizer, cfg, shots, "few_shot", run_loss=False),
            cfg.eval.cache_base and (main or file.exists()),
        )
    return sections


def evaluate_only(cfg: DictConfig, run_dir: Path, device: str) -> dict:
    """``hydratune eval``: the configured model on the held-out split, no training (one 'base' section), or with
    eval.endpoint the model behind that endpoint (no weights load), plus eval.compare_models."""
    from transformers import set_seed

    set_seed(cfg.seed)
    if cfg.eval.endpoint.base_url:
        examples = data.load_examples(cfg.dataset, run_dir)
        queries = evaluation.queries(examples.validation, cfg.eval.max_examples)
        results = {"compare": endpoint_eval.compare_models(cfg.eval, queries, run_dir=run_dir)}
        report_files.write_report(
            run_dir, results, [], f"hydratune eval: {cfg.eval.endpoint.model} at {cfg.eval.endpoint.base_url}"
        )
        return results
    hardware = weight_dtype(cfg, device)
    _, tokenizer, _, model = load_model_and_tokenizer(cfg, device, hardware["model_dtype"])
    prepared = objectives.prepare(cfg, tokenizer, run_dir)
    trainer = build_trainer(cfg, run_dir, device, model, tokenizer, prepared)
    held_out = objectives.held_out(cfg, prepared.examples, cfg.eval.max_examples)
    results = {"hardware": hardware, "base": objectives.evaluate(trainer, tokenizer, cfg, held_out, "base")}
    if endpoint_eval.configured(cfg.eval):
        results["compare"] = endpoint_eval.compare_models(cfg.eval, held_out.queries, run_dir=run_dir)
    results["objective"] = {"name": cfg.objective.name, "headline": list(cfg.objective.headline)}
    report_files.write_report(run_dir, results, [], f"hydratune eval: {cfg.model.name_or_path}")
    return results
