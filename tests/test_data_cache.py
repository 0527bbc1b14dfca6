"""The preprocessing cache: a second run hits it (log and run dir say so); changing any input gives a new key."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from tests.helpers import ASSETS, compose
from trainer.data import prepare, prepare_once, run_prepare

DATA = ASSETS / "data"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "chat.jsonl"
    shutil.copy(DATA / "chat.jsonl", path)
    return path


def cfg_for(tmp_path, data, *overrides):
    return compose(
        "model=tiny_random",
        "dataset=chat_jsonl",
        f"dataset.path={data}",
        "dataset.validation_size=2",
        f"cache_dir={tmp_path / 'cache'}",
        "++train.max_length=128",
        *overrides,
    )


def test_second_run_hits_the_cache_and_says_so(tiny_tokenizer, tmp_path, data, caplog):
    cfg = cfg_for(tmp_path, data)
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        first = prepare(cfg, tiny_tokenizer, tmp_path / "run1")
        second = prepare(cfg, tiny_tokenizer, tmp_path / "run2")
    assert not first.cache_hit and second.cache_hit and first.cache_key == second.cache_key
    assert f"dataset cache miss {first.cache_key}" in caplog.text
    assert f"dataset cache hit {first.cache_key}" in caplog.text
    recorded = json.loads((tmp_path / "run2" / "data_cache.json").read_text())
    assert recorded["hit"] is True and recorded["key"] == first.cache_key
    assert json.loads((tmp_path / "run2" / "data_stats.json").read_text())["cache_hit"] is True
    assert json.loads((tmp_path / "run1" / "data_cache.json").read_text())["hit"] is False
    assert second.train["input_ids"] == first.train["input_ids"] and second.train["labels"] == first.train["labels"]
    assert second.validation["labels"] == first.validation["labels"]
    assert second.examples == first.examples
    assert second.stats["train"] == first.stats["train"]


def test_a_crashed_write_is_not_a_hit(tiny_tokenizer, tmp_path, data):
    cfg = cfg_for(tmp_path, data)
    key = prepare_once(cfg, tiny_tokenizer)
    entry = tmp_path / "cache" / "datasets" / key
    (entry / "manifest.json").unlink()  # as if the process died before the entry was complete
    assert not prepare(cfg, tiny_tokenizer, None).cache_hit


CHANGES = {
    "max_length": ["++train.max_length=64"],
    "packing": ["+train.packing=true"],
    "train_on_all_tokens": ["dataset.train_on_all_tokens=true"],
    "split size": ["dataset.validation_size=3"],
    "split seed": ["dataset.split_seed=5"],
    "roles mapping": ["+dataset.roles.bot=assistant"],
    "format": [
        "dataset.format=sharegpt",
        "+dataset.columns.messages=messages",
        "+dataset.columns.role=role",
        "+dataset.columns.content=content",
    ],
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_input_is_in_the_key(change, tiny_tokenizer, tmp_path, data):
    from trainer.data import cache

    base = cfg_for(tmp_path, data)
    changed = cfg_for(tmp_path, data, *CHANGES[change])
    settings = {"max_length": 128, "packing": False, "packing_strategy": None}
    from trainer.data import _settings

    assert cache.cache_key(base.dataset, tiny_tokenizer, _settings(base)) == cache.cache_key(
        base.dataset, tiny_tokenizer, settings
    )
    assert cache.cache_key(base.dataset, tiny_tokenizer, _settings(base)) != cache.cache_key(
        changed.dataset, tiny_tokenizer, _settings(changed)
    )


def test_data_content_tokenizer_and_template_are_in_the_key(tiny_tokenizer, tmp_path, data):
    cfg = cfg_for(tmp_path, data)
    first = prepare(cfg, tiny_tokenizer, None)
    data.write_text(data.read_text().replace("Pancakes", "Waffles"))
    assert prepare(cfg, tiny_tokenizer, None).cache_key != first.cache_key
    data.write_text(data.read_text().replace("Waffles", "Pancakes"))
    assert prepare(cfg, tiny_tokenizer, None).cache_hit  # same content, same key
    other = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    other.chat_template = tiny_tokenizer.chat_template.replace("\\n", "\\n\\n")
    assert prepare(cfg, other, None).cache_key != first.cache_key
    templated = compose("dataset=template", f"dataset.path={DATA / 'recipes.csv'}", f"cache_dir={tmp_path / 'c'}")
    retemplated = compose(
        "dataset=template",
        f"dataset.path={DATA / 'recipes.csv'}",
        f"cache_dir={tmp_path / 'c'}",
        "dataset.templates.user='Recipe: {title}'",
    )
    from trainer.data import _settings, cache

    assert cache.cache_key(templated.dataset, tiny_tokenizer, _settings(templated)) != cache.cache_key(
        retemplated.dataset, tiny_tokenizer, _settings(retemplated)
    )


def test_use_cache_false_neither_reads_nor_writes(tiny_tokenizer, tmp_path, data):
    cfg = cfg_for(tmp_path, data, "dataset.use_cache=false")
    assert not prepare(cfg, tiny_tokenizer, None).cache_hit
    assert not prepare(cfg, tiny_tokenizer, None).cache_hit
    assert not (tmp_path / "cache" / "datasets").exists()


def test_run_prepare_prints_and_returns_statistics(tiny_tokenizer, tmp_path, data, capsys):
    stats = run_prepare(cfg_for(tmp_path, data), tiny_tokenizer, tmp_path / "run")
    out = capsys.readouterr().out
    assert "8 train / 2 validation examples" in out and "tokens per example" in out
    assert stats["train"]["examples"] == 8
    saved = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert saved["train"]["tokens_per_example"] == stats["train"]["tokens_per_example"]
    lengths = [len(ids) for ids in prepare(cfg_for(tmp_path, data), tiny_tokenizer, None).train["input_ids"]]
    assert stats["train"]["tokens_per_example"]["max"] == max(lengths)
    assert stats["train"]["tokens_per_example"]["min"] == min(lengths)
    assert stats["train"]["messages_per_example"]["max"] == 5


# ---------------------------------------------------------------- entries are verified by their key


@pytest.mark.parametrize("how", ["symlink", "copy"])
def test_another_keys_entry_under_this_key_is_rebuilt(how, tiny_tokenizer, tmp_path, data, caplog):
    """Issue 31.9: an entry linked or copied under another key's name would train on the other dataset's rows."""
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    other.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1][: len(rows) // 2 + 2]))
    mine, theirs = cfg_for(tmp_path, data), cfg_for(tmp_path, other)
    expected = prepare(mine, tiny_tokenizer, None)
    foreign = prepare(theirs, tiny_tokenizer, None)
    assert foreign.train["input_ids"] != expected.train["input_ids"]
    entries = tmp_path / "cache" / "datasets"
    shutil.rmtree(entries / expected.cache_key)
    if how == "symlink":
        (entries / expected.cache_key).symlink_to(entries / foreign.cache_key, target_is_directory=True)
    else:
        shutil.copytree(entries / foreign.cache_key, entries / expected.cache_key)
    caplog.set_level("WARNING")
    again = prepare(mine, tiny_tokenizer, None)
    assert not again.cache_hit and again.train["input_ids"] == expected.train["input_ids"]
    (line,) = [r.getMessage() for r in caplog.records if "dataset cache entry" in r.getMessage()]
    said = "is a link to" if how == "symlink" else f"holds the entry of another key ({foreign.cache_key})"
    assert expected.cache_key in line and said in line and "rebuilt" in line
    assert not (entries / expected.cache_key).is_symlink()
    assert prepare(theirs, tiny_tokenizer, None).cache_hit  # the other key's own entry is untouched
    assert prepare(mine, tiny_tokenizer, None).cache_hit


@pytest.mark.parametrize("how", ["symlink", "copy"])
def test_another_keys_base_evaluation_under_this_key_is_computed_again(how, tmp_path, caplog):
    from trainer.evaluation import local as evaluation

    mine, theirs = tmp_path / "evals" / "base-mine.json", tmp_path / "evals" / "base-theirs.json"
    evaluation.cached(theirs, lambda: {"eval_loss": 1.0}, True)
    if how == "symlink":
        mine.symlink_to(theirs)
    else:
        shutil.copy(theirs, mine)
    caplog.set_level("WARNING")
    assert evaluation.cached(mine, lambda: {"eval_loss": 6.0}, True) == {"eval_loss": 6.0}
    said = "is a link to" if how == "symlink" else "holds the result of another key (base-theirs)"
    assert "base evaluation cache file base-mine.json is damaged" in caplog.text and said in caplog.text
    assert evaluation.cached(theirs, lambda: {"eval_loss": 9.0}, True) == {"eval_loss": 1.0}  # untouched
    assert evaluation.cached(mine, lambda: {"eval_loss": 9.0}, True) == {"eval_loss": 6.0} and not mine.is_symlink()
