"""Packing with correct loss: no attention across examples, and the loss of a packed batch equals the unpacked one.

What we found (transformers 5.24, CPU): with padding-free batches TRL's collator passes ``position_ids`` that
restart at 0 for every example and no attention mask; transformers then builds a block-diagonal causal mask from
the position resets (masking_utils.find_packed_sequence_indices) for eager and sdpa alike, but only when no KV
cache is created. SFTTrainer.compute_loss passes ``use_cache=False``, so training is exact; a bare
``model(**batch)`` with ``config.use_cache=True`` would let tokens attend across examples (checked below).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.helpers import ASSETS, compose
from trainer.data import prepare

DATA = ASSETS / "data"


@pytest.fixture(scope="module")
def prepared_pair(tiny_tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    common = [
        "model=tiny_random",
        "dataset=chat_jsonl",
        f"dataset.path={DATA / 'chat.jsonl'}",
        "dataset.validation_size=0",
        f"cache_dir={tmp / 'cache'}",
        "++train.max_length=256",
    ]
    plain = prepare(compose(*common), tiny_tokenizer, None)
    packed = prepare(compose(*common, "+train.packing=true"), tiny_tokenizer, None)
    return plain, packed


def test_packing_keeps_every_example_whole(prepared_pair):
    plain, packed = prepared_pair
    assert "seq_lengths" in packed.train.column_names and len(packed.train) < len(plain.train)
    pieces = []
    for row in packed.train:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= 256
        start = 0
        for n in row["seq_lengths"]:
            pieces.append((tuple(row["input_ids"][start : start + n]), tuple(row["labels"][start : start + n])))
            start += n
    whole = [(tuple(r["input_ids"]), tuple(r["labels"])) for r in plain.train]
    assert Counter(pieces) == Counter(whole)
    assert packed.stats["packed_sequences"] == len(packed.train)
    assert len(packed.validation) == len(plain.validation)  # validation is never packed


def _losses(model, tokenizer, plain, packed, out):
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    unpacked_batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(list(plain.train))
    packed_batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        list(packed.train)
    )
    args = SFTConfig(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        packing=True,
        padding_free=True,
        max_length=256,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=packed.train, processing_class=tokenizer)
    model.eval()
    with torch.no_grad():
        return (
            trainer.compute_loss(model, dict(unpacked_batch)).item(),
            trainer.compute_loss(model, dict(packed_batch)).item(),
            packed_batch,
        )


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(attn, tiny_tokenizer, prepared_pair, tmp_path):
    from trainer.models import tiny_model

    plain, packed = prepared_pair
    model = tiny_model(tiny_tokenizer)
    model.config._attn_implementation = attn
    unpacked_loss, packed_loss, batch = _losses(model, tiny_tokenizer, plain, packed, tmp_path)
    assert packed_loss == pytest.approx(unpacked_loss, abs=1e-5)

    # Control: the same packed tokens without position resets attend across examples and give another loss.
    flat = {k: batch[k] for k in ("input_ids", "labels")}
    flat["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        leaky = model(**flat, use_cache=False).loss.item()
    assert abs(leaky - unpacked_loss) > 1e-4


@pytest.mark.slow
def test_packed_training_runs(tiny_tokenizer, prepared_pair, tmp_path):
    from tests.test_data_formats import train_two_steps

    train_two_steps(prepared_pair[1], tiny_tokenizer, tmp_path, packing=True)


def test_wrapped_packing_is_refused(tiny_tokenizer, tmp_path):
    from trainer.config.errors import UserError

    cfg = compose(
        "dataset=chat_jsonl",
        f"dataset.path={DATA / 'chat.jsonl'}",
        f"cache_dir={tmp_path}",
        "+train.packing=true",
        "+train.packing_strategy=wrapped",
    )
    with pytest.raises(UserError, match="wrapped"):
        prepare(cfg, tiny_tokenizer, None)
