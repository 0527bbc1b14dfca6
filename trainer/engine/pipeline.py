"""Resolved config -> a fine-tuning run, top to bottom.

tokenizer -> dataset in the objective's shape -> the checks that need the model's config and the data (before any
weights load) -> model and adapter -> the objective's TRL trainer -> base evaluation -> training (resumed from the last
checkpoint when there is one) -> saved weights, recorded in the run's journal (a rerun after a kill goes on from
there: trainer.engine.training) -> fine-tuned evaluation -> report. The training loop is TRL's; this module only
builds things in order and logs what it built.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from trainer import data, models
from trainer.config.endpoints import configured
from trainer.engine import estimate, objectives, shapes, ship_check, template_lint, training
from trainer.engine.before_weights import check_before_weights
from trainer.evaluation import cost, judge, regression
from trainer.evaluation import endpoint as endpoint_eval
from trainer.evaluation import local as evaluation
from trainer.report import files as report_files
from trainer.run import loggers, memory

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (torchrun, deepspeed and accelerate set RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def weight_dtype(cfg: DictConfig, device: str) -> dict:
    """model.dtype resolved for this device (auto: by what torch reports), logged with the reason."""
    dtype, why = models.resolve_dtype(cfg.model.dtype, device, full_weights=cfg.method.peft is None)
    log.info("model.dtype=%s -> %s: %s", cfg.model.dtype, dtype, why)
    return {"device": device, "model_dtype": dtype, "why": why}


def load_tokenizer(cfg: DictConfig):
    """The model's folder (built or converted into the cache once), its tokenizer and the tokens added to it."""
    path = models.resolve_path(cfg.model, cfg.cache_dir)
    tokenizer, added_tokens = models.load_tokenizer(cfg.model, path)
    return path, tokenizer, added_tokens


def load_model(cfg: DictConfig, path: str, tokenizer, device: str, dtype: str):
    model = models.load_model(cfg.model, cfg.method, path, tokenizer, device, dtype, cfg.objective.head)
    log.info(
        "model %s (%s, %.1fM parameters) on %s", cfg.model.name_or_path, path, model.num_parameters() / 1e6, device
    )
    return model


def trainable(cfg: DictConfig, model, added_tokens: int):
    """(model, peft config for the trainer): method=freeze freezes all but the chosen layers; method.init_adapter
    puts the saved adapter on the model (trainable; no new adapter then); else the trainer adds method.peft's."""
    if cfg.method.name == "freeze":
        models.freeze(model, cfg.method, cfg.model.name_or_path)
    if cfg.method.init_adapter is not None:
        return models.load_adapter(model, str(cfg.method.init_adapter)), None
    return model, objectives.peft_config(cfg, added_tokens)


def build_trainer(cfg, run_dir: Path, device: str, model, tokenizer, prepared, peft_config=None):
    """The objective's TRL trainer (objective.trainer: SFTTrainer, DPOTrainer ...) over the prepared data, with the
    objective's extras (GRPO's reward functions, the distillation teacher); the loop is TRL's."""
    trainer_class = objectives.trainer_class(cfg.objective)
    return trainer_class(
        model=model,
        args=objectives.training_args(cfg, run_dir, device, loggers.report_to(cfg.logger, run_dir, cfg.run_name)),
        train_dataset=prepared.train,
        eval_dataset=prepared.validation if len(prepared.validation) else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=loggers.callbacks(cfg.logger, run_dir) + stream_callbacks(cfg, prepared),
        **objectives.extras(cfg, tokenizer, device),
    )


def stream_callbacks(cfg: DictConfig, prepared) -> list:
    """A streamed run's position, saved with each checkpoint and sought on resume (trainer.engine.streaming)."""
    if not cfg.dataset.streaming:
        return []
    from trainer.engine.streaming import StreamPosition

    return [StreamPosition(prepared.train.stream)]


def train(cfg: DictConfig, run_dir: Path, device: str) -> dict:
    from transformers import set_seed

    set_seed(cfg.seed)
    main = is_main_process()  # every rank trains and evaluates; only rank 0 writes files into the run dir
    results: dict = {"hardware": weight_dtype(cfg, device)}
    model_path, tokenizer, added_tokens = load_tokenizer(cfg)
    prepared = objectives.prepare(cfg, tokenizer, run_dir if main else None)
    if not cfg.dataset.streaming:  # a stream has no length
        log.info("dataset: %d training / %d validation rows", len(prepared.train), len(prepared.validation))
    held_out = objectives.held_out(cfg, prepared.examples, cfg.eval.max_examples)
    queries = held_out.queries
    check_before_weights(cfg, model_path, tokenizer, prepared.examples, queries, added_tokens)
    dtype, target = results["hardware"]["model_dtype"], run_dir if main else None
    model = load_model(cfg, model_path, tokenizer, device, dtype)
    template_lint.lint(cfg, tokenizer, model, prepared.examples.train)  # trained answers end where generation stops

    model, peft_config = trainable(cfg, model, added_tokens)
    trainer = build_trainer(cfg, run_dir, device, model, tokenizer, prepared, peft_config)
    trainable_count, total_count = models.log_trainable(trainer.model)
    results["hardware"].update(trainable_parameters=trainable_count, parameters=total_count)

    forecast = None  # the pre-flight estimate models supervised fine-tuning's workload (tokenized sequences)
    if shapes.of(cfg).forecast and not cfg.dataset.streaming:  # a stream has no known length
        args = (cfg, device, dtype, trainer.model, trainer.args, tokenizer, prepared, model_path, target)
        forecast = estimate.for_run(*args)
    if cfg.eval.enabled and cfg.eval.compare_base:
        with before_training(trainer):
            results.update(base_sections(cfg, trainer, tokenizer, held_out, model_path, prepared, main))
        memory.release()  # the evaluation's freed buffers, before training allocates its own

    train_metrics = training.run(cfg, trainer, run_dir, main)  # or what a killed run left of it: never twice
    memory.release()  # training's freed activations, before evaluation allocates its own
    if cfg.eval.enabled:  # on every rank: evaluation is collective (sharded loss; ZeRO-3 gathers weights to generate)
        base = results.get("base")
        results["finetuned"] = objectives.evaluate(trainer, tokenizer, cfg, held_out, "finetuned", base)
        if "regression" in results:  # eval.regression: the probe set again, on the fine-tuned model
            tuned = regression.evaluate(trainer, tokenizer, cfg, "finetuned")
            results["regression"] = regression.section(cfg.eval.regression, results["regression"]["base"], tuned)
    if not main:
        return results
    if cfg.eval.enabled and cfg.eval.ship_check:  # the merged, GGUF and served model answer like the one evaluated
        results["ship_check"] = ship_check.run(cfg, trainer.model, tokenizer, queries, run_dir)
    if cfg.eval.enabled and configured(cfg.eval):
        results["compare"] = endpoint_eval.compare_models(cfg.eval, queries, run_dir=run_dir)
    results["data"] = {"cache_key": prepared.cache_key, "cache_hit": prepared.cache_hit, **prepared.stats}
    if forecast is not None:
        results["estimate"] = estimate.measured(forecast, trainer.state.log_history)
    if cfg.eval.enabled and judge.configured(cfg.eval.judge):
        results["judge"] = judge.run(cfg.eval.judge, results, cfg.cache_dir)
    if cfg.eval.enabled:
        seconds, train_rows = train_metrics.get("train_runtime"), prepared.examples.train
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
    sections |= objectives.control_sections(cfg, trainer, tokenizer, held_out, model_path, prepared.cache_key, main)
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
    path, tokenizer, _ = load_tokenizer(cfg)
    prepared = objectives.prepare(cfg, tokenizer, run_dir)
    held_out = objectives.held_out(cfg, prepared.examples, cfg.eval.max_examples)
    check_before_weights(cfg, path, tokenizer, prepared.examples, held_out.queries)
    model = load_model(cfg, path, tokenizer, device, hardware["model_dtype"])
    trainer = build_trainer(cfg, run_dir, device, model, tokenizer, prepared)
    results = {"hardware": hardware, "base": objectives.evaluate(trainer, tokenizer, cfg, held_out, "base")}
    if configured(cfg.eval):
        results["compare"] = endpoint_eval.compare_models(cfg.eval, held_out.queries, run_dir=run_dir)
    results["objective"] = {"name": cfg.objective.name, "headline": list(cfg.objective.headline)}
    report_files.write_report(run_dir, results, [], f"hydratune eval: {cfg.model.name_or_path}")
    return results
