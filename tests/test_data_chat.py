"""Chat data: loading, assistant-only labels on any chat template, truncation, seeded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainer.config.errors import UserError
from trainer.config.schema import DatasetSchema
from trainer.data import load_examples, prepare
from trainer.data.tokenize import Encoder

# A Vicuna-like template: no {% generation %} markers, no ChatML, the answer follows "ASSISTANT:" and ends with
# <|endoftext|>; only the end of the conversation gets a trailing newline.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}<|endoftext|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# Not prefix-stable: the last assistant turn is rendered differently from earlier ones.
UNSTABLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
    "{% if loop.last %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello, friend"},
    ],
    [
        {"role": "user", "content": "Q1 quick"},
        {"role": "assistant", "content": "skipped answer", "weight": 0},
        {"role": "user", "content": "Q2 lazy"},
        {"role": "assistant", "content": "second answer 42"},
    ],
    [
        {"role": "user", "content": "fox"},
        {"role": "assistant", "content": "dog"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "brown dog"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    from trainer.models import tiny_tokenizer

    return tiny_tokenizer()


def write_jsonl(path: Path, conversations) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    return path


def root_cfg(tmp_path: Path, max_length: int | None = 256, **dataset) -> OmegaConf:
    ds = OmegaConf.merge(OmegaConf.structured(DatasetSchema), {"name": "t", **dataset})
    return OmegaConf.create(
        {"dataset": ds, "train": {"max_length": max_length}, "cache_dir": str(tmp_path / "cache"), "seed": 0}
    )


def trained_text(tokenizer, row) -> list[str]:
    """The label tokens, decoded run by run (consecutive positions in the loss form one run)."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != -100:
            assert label == token
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.mark.parametrize(
    ("template", "end"),
    [(None, "<|im_end|>"), (PLAIN_TEMPLATE, "<|endoftext|>"), (UNSTABLE_TEMPLATE, "<|im_end|>")],
    ids=["chatml", "no-generation-markers", "not-prefix-stable"],
)
def test_only_trained_assistant_answers_are_labelled(tokenizer, template, end):
    if template is not None:
        tokenizer = tokenizer.__class__.from_pretrained(_saved(tokenizer))
        tokenizer.chat_template = template
    enc = Encoder(tokenizer, max_length=None).encode([{"messages": c} for c in CONVERSATIONS])
    assert enc.kept == [0, 1, 2]
    for conversation, ids, labels in zip(CONVERSATIONS, enc.input_ids, enc.labels, strict=True):
        runs = trained_text(tokenizer, {"input_ids": ids.tolist(), "labels": labels.tolist()})
        wanted = [m["content"] for m in conversation if m["role"] == "assistant" and m.get("weight", 1) == 1]
        assert [r.strip() for r in runs] == [f"{w}{end}" for w in wanted]
        full = tokenizer.apply_chat_template(
            [{k: v for k, v in m.items() if k != "weight"} for m in conversation], tokenize=False
        )
        assert tokenizer.decode(ids.tolist()) == full


_SAVED: dict[int, str] = {}


def _saved(tokenizer) -> str:
    import tempfile

    if id(tokenizer) not in _SAVED:
        folder = tempfile.mkdtemp(prefix="tiny-tok-")
        tokenizer.save_pretrained(folder)
        _SAVED[id(tokenizer)] = folder
    return _SAVED[id(tokenizer)]


def test_train_on_all_tokens_labels_everything(tokenizer):
    enc = Encoder(tokenizer, None, train_on_all_tokens=True).encode([{"messages": CONVERSATIONS[1]}])
    assert enc.labels[0].tolist() == enc.input_ids[0].tolist()


def test_prepare_truncates_and_counts(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 4)
    cfg = root_cfg(tmp_path, max_length=24, path=str(data), validation_size=0)
    prepared = prepare(cfg, tokenizer, tmp_path / "run")
    lengths = [len(r) for r in prepared.train["input_ids"]]
    assert max(lengths) <= 24
    full = Encoder(tokenizer, None).encode([{"messages": c} for c in CONVERSATIONS * 4])
    longer = sum(1 for ids in full.input_ids if len(ids) > 24)
    assert longer > 0
    assert prepared.stats["train"]["truncated"] == longer
    assert any("longer than max_length=24" in w for w in prepared.examples.warnings)
    saved = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert saved["train"]["examples"] == 12
    assert set(saved["train"]["tokens_per_example"]) == {"min", "mean", "median", "p90", "max"}


def test_prepare_gives_validation_rows_with_their_full_messages(tokenizer, tmp_path):
    data = write_jsonl(
        tmp_path / "chat.jsonl",
        [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(20)],
    )
    cfg = root_cfg(tmp_path, path=str(data), validation_size=5)
    prepared = prepare(cfg, tokenizer, None)
    assert len(prepared.examples.validation) == 5 == len(prepared.validation)
    assert all(r["messages"][-1]["role"] == "assistant" for r in prepared.examples.validation)
    assert len(prepared.train) == 15
    assert set(prepared.train.column_names) == {"input_ids", "labels"}


# ---------------------------------------------------------------- splits


def _rows(n: int, dupes: int = 0):
    rows = [
        [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        for i in range(n)
    ]
    return rows + rows[:dupes]


def _split(tmp_path, **kw):
    ds = OmegaConf.merge(OmegaConf.structured(DatasetSchema), {"name": "t", **kw})
    return load_examples(ds)


def test_split_is_seeded_deterministic_and_disjoint(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(100, dupes=10))
    a = _split(tmp_path, path=str(data), validation_size=0.2, split_seed=7)
    b = _split(tmp_path, path=str(data), validation_size=0.2, split_seed=7)
    c = _split(tmp_path, path=str(data), validation_size=0.2, split_seed=8)
    assert a.validation == b.validation and a.train == b.train
    assert a.validation != c.validation
    keys = lambda rows: {json.dumps(r, sort_keys=True) for r in rows}  # noqa: E731
    assert not keys(a.train) & keys(a.validation)
    assert len(a.train) + len(a.validation) == 110
    assert 22 <= len(a.validation) <= 23  # 20% of 110, duplicates kept together (+1 at most)
    assert any("10 examples are duplicates" in w for w in a.warnings)


def test_split_by_count_and_by_file(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(30))
    by_count = _split(tmp_path, path=str(data), validation_size=4)
    assert len(by_count.validation) == 4 and len(by_count.train) == 26
    valid = write_jsonl(tmp_path / "v.jsonl", _rows(3))
    by_file = _split(tmp_path, path=str(data), validation_path=str(valid))
    assert by_file.validation == [{"messages": m} for m in _rows(3)]
    assert len(by_file.train) == 27  # the 3 rows also in the validation file are removed from train
    assert any("also appear in the validation data" in w for w in by_file.warnings)


def test_split_too_large_is_a_user_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(5))
    with pytest.raises(UserError, match="only 5 usable rows"):
        _split(tmp_path, path=str(data), validation_size=5)


TRIM_TEMPLATE = CHATML_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Looks at the content in a way no pattern catches; rows are checked against the full rendering, so it is found.
HIDDEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% set c = m['content'] %}"
    "{% if c is string and c|length > 40 %}LONG {% endif %}{{ c }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    "template",
    [None, PLAIN_TEMPLATE, UNSTABLE_TEMPLATE, TRIM_TEMPLATE, HIDDEN_TEMPLATE],
    ids=["chatml", "plain", "unstable", "trim", "hidden-content-test"],
)
def test_skeleton_rendering_equals_the_full_rendering(tokenizer, template):
    if template is not None:
        tokenizer = tokenizer.__class__.from_pretrained(_saved(tokenizer))
        tokenizer.chat_template = template
    rows = [{"messages": c} for c in CONVERSATIONS] * 3
    rows += [
        {
            "messages": [
                {"role": "user", "content": f"  padded {i}  "},
                {"role": "assistant", "content": "x" * (10 * i) + " \n"},
            ]
        }
        for i in range(8)
    ]
    fast = Encoder(tokenizer, None)
    slow = Encoder(tokenizer, None)
    slow._fast = False
    a, b = fast.encode(rows), slow.encode(rows)
    assert [x.tolist() for x in a.input_ids] == [x.tolist() for x in b.input_ids]
    assert [x.tolist() for x in a.labels] == [x.tolist() for x in b.labels]
    if template in (TRIM_TEMPLATE, HIDDEN_TEMPLATE):
        assert fast._fast is False  # detected: every row was rendered by the template itself
    else:
        assert fast._fast is True and fast._skeletons
