"""The template and EOS lint (trainer.engine.template_lint): planted broken templates, stop ids and BOS are caught
before training, with the fix named; a repairable stop id is repaired and said so."""

from __future__ import annotations

import copy
import logging

import pytest

from trainer.config.errors import UserError
from trainer.engine import template_lint
from trainer.models import CHATML_TEMPLATE

ROWS = [
    {"messages": [{"role": "user", "content": "Title: soup"}, {"role": "assistant", "content": '["water", "salt"]'}]},
    {"messages": [{"role": "user", "content": "Title: cake"}, {"role": "assistant", "content": '["flour"]'}]},
]


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return copy.deepcopy(tiny_tokenizer)


def generation_config(eos):
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=eos)


def test_a_sound_template_passes_without_repairs(tokenizer):
    config = generation_config(tokenizer.eos_token_id)
    assert template_lint.check(tokenizer, config, ROWS) == []
    assert config.eos_token_id == tokenizer.eos_token_id


def test_an_end_of_turn_id_missing_from_generation_config_is_added_and_said(tokenizer, caplog):
    # a base model's EOS (<|endoftext|>) in tokenizer and generation_config; the template ends turns with <|im_end|>
    tokenizer.eos_token = "<|endoftext|>"
    config = generation_config(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with caplog.at_level(logging.WARNING):
        repairs = template_lint.check(tokenizer, config, ROWS)
    assert config.eos_token_id == [tokenizer.eos_token_id, end_of_turn]
    assert len(repairs) == 1 and "'<|im_end|>'" in repairs[0] and "fixed: generation_config.eos_token_id=" in repairs[0]
    assert "template lint: the trained answers end with '<|im_end|>'" in caplog.text


def test_a_template_that_drops_the_end_of_turn_token_is_refused(tokenizer):
    tokenizer.chat_template = CHATML_TEMPLATE.replace(" + '<|im_end|>'", "")
    with pytest.raises(UserError, match="not an end-of-turn token, so the model never learns to stop") as e:
        template_lint.check(tokenizer, generation_config(tokenizer.eos_token_id), ROWS)
    assert "Training row 0" in str(e.value) and "model.chat_template" in str(e.value)


def test_a_doubled_bos_is_refused(tokenizer):
    from tokenizers.processors import TemplateProcessing

    tokenizer.bos_token = "<|endoftext|>"
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    rows = [{"text": "<|endoftext|>The quick brown fox"}]
    with pytest.raises(UserError, match="starts with two BOS tokens"):
        template_lint.check(tokenizer, generation_config(tokenizer.eos_token_id), rows)
    template_lint.check(tokenizer, generation_config(tokenizer.eos_token_id), [{"text": "The quick brown fox"}])


def test_an_evaluation_prompt_that_differs_from_training_is_refused(tokenizer):
    # the generation prompt opens the assistant turn differently from the trained turns
    generation_prompt = "'<|im_start|>assistant\\n'"  # as the Jinja source writes it: a backslash and an n
    assert generation_prompt in CHATML_TEMPLATE
    tokenizer.chat_template = CHATML_TEMPLATE.replace(generation_prompt, "'<|im_start|>assistant: '")
    with pytest.raises(UserError, match="prompt evaluation and serving send the model differs"):
        template_lint.check(tokenizer, generation_config(tokenizer.eos_token_id), ROWS)
