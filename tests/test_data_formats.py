"""Every dataset format, from a small committed fixture, composes, validates, tokenizes and trains the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import ASSETS, compose
from trainer.config.errors import UserError
from trainer.data import load_examples, prepare

DATA = ASSETS / "data"
RECIPES = [json.loads(line)["messages"][-1]["content"] for line in (DATA / "chat.jsonl").read_text().splitlines()]


def config(tmp_path, *overrides):
    return compose("model=tiny_random", f"cache_dir={tmp_path / 'cache'}", "++train.max_length=128", *overrides)


def label_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])


def train_two_steps(prepared, tokenizer, tmp_path, packing: bool = False) -> list[float]:
    from trl import SFTConfig, SFTTrainer

    from trainer.models import tiny_model

    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_length=128,
        padding_free=packing,
        packing=packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=tiny_model(tokenizer), args=args, train_dataset=prepared.train, processing_class=tokenizer
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
    return losses


CASES = {
    "chat": (["dataset=chat_jsonl", f"dataset.path={DATA / 'chat.jsonl'}"], RECIPES),
    "alpaca": (["dataset=alpaca", f"dataset.path={DATA / 'alpaca.json'}"], RECIPES),
    "sharegpt": (
        ["dataset=sharegpt", f"dataset.path={DATA / 'sharegpt.jsonl'}", "+dataset.roles.bot=assistant"],
        RECIPES,
    ),
    "prompt_completion": (["dataset=prompt_completion", f"dataset.path={DATA / 'prompt_completion.csv'}"], RECIPES),
    "text": (["dataset=text", f"dataset.path={DATA / 'text.parquet'}"], ["generic ingredients are"]),
    "template": (["dataset=template", f"dataset.path={DATA / 'recipes.csv'}"], RECIPES),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_format_reaches_training(name, tiny_tokenizer, tmp_path):
    overrides, answers = CASES[name]
    cfg = config(tmp_path, *overrides, "dataset.validation_size=2")
    prepared = prepare(cfg, tiny_tokenizer, tmp_path / "run")
    assert len(prepared.examples.train) == 8 and len(prepared.examples.validation) == 2
    assert len(prepared.train) == 8 and len(prepared.validation) == 2
    for row, ids, labels in zip(
        prepared.examples.train, prepared.train["input_ids"], prepared.train["labels"], strict=True
    ):
        trained = label_text(tiny_tokenizer, ids, labels)
        assert any(a in trained for a in answers), (row, trained)
        if name != "text":  # the prompt is never in the loss
            prompt = row["prompt"] if "prompt" in row else row["messages"][-2]["content"]
            assert prompt.strip() not in trained
    if name == "chat":  # a weight-0 answer is in the input but not in the loss
        weighted = [i for i, r in enumerate(prepared.examples.train) if any("weight" in m for m in r["messages"])]
        assert weighted
        for i in weighted:
            row = prepared.train[i]
            assert '["bread"]' in tiny_tokenizer.decode(row["input_ids"])
            assert '["bread"]' not in label_text(tiny_tokenizer, row["input_ids"], row["labels"])
    train_two_steps(prepared, tiny_tokenizer, tmp_path)


def test_save_to_disk_folder_with_named_splits(tiny_tokenizer, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (DATA / "chat.jsonl").read_text().splitlines()]
    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:7]), "validation": datasets.Dataset.from_list(rows[7:])}
    ).save_to_disk(str(folder))
    cfg = config(tmp_path, "dataset=chat_jsonl", f"dataset.path={folder}", "dataset.validation_split=validation")
    prepared = prepare(cfg, tiny_tokenizer, None)
    # Arrow stores the optional "weight" as null in rows without it: that is not an error
    assert len(prepared.examples.validation) == 3 and len(prepared.examples.train) == 7
    train_two_steps(prepared, tiny_tokenizer, tmp_path)


def test_preference_pairs_load_and_validate_but_do_not_train_with_sft(tiny_tokenizer, tmp_path):
    cfg = config(
        tmp_path, "dataset=preference", f"dataset.path={DATA / 'preference.jsonl'}", "dataset.validation_size=0"
    )
    examples = load_examples(cfg.dataset)
    assert len(examples.train) == 10
    first = examples.train[0]
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    assert first["chosen"] != first["rejected"]
    with pytest.raises(UserError, match="preference objective"):  # the data path alone; compose-time: objectives.check
        prepare(cfg, tiny_tokenizer, None)


def test_implicit_preference_prompt_is_the_shared_beginning(tmp_path):
    user = {"role": "user", "content": "2+2?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "4"}],
        "rejected": [user, {"role": "assistant", "content": "5"}],
    }
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    cfg = config(tmp_path, "dataset=preference", f"dataset.path={path}", "dataset.validation_size=0")
    (ex,) = load_examples(cfg.dataset).train
    assert ex == {"prompt": [user], "chosen": [row["chosen"][1]], "rejected": [row["rejected"][1]]}


def test_column_mapping_and_mixing_with_weights(tiny_tokenizer, tmp_path):
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}", "id": i}) + "\n" for i in range(6)))
    mix = (
        f"+dataset.mix=[{{path: '{renamed}', format: alpaca, weight: 1.5, columns: {{instruction: question, "
        "output: answer}}]"
    )
    cfg = config(
        tmp_path, "dataset=chat_jsonl", f"dataset.path={DATA / 'chat.jsonl'}", "dataset.validation_size=0", mix
    )
    examples = load_examples(cfg.dataset)
    mixed = [r for r in examples.train if r["messages"][0]["content"].startswith("q")]
    assert len(examples.train) == 10 + 9 and len(mixed) == 9  # 6 rows once + a seeded half of them again
    assert {r["messages"][-1]["content"] for r in mixed} == {f"a{i}" for i in range(6)}
    assert any("6 rows have a key 'id'" in w for w in examples.warnings)
    prepared = prepare(cfg, tiny_tokenizer, None)
    assert len(prepared.train) == 19


def test_hub_dataset_id_is_loaded_with_datasets_and_fails_clearly(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(name, split=None, **kw):
        calls.append((name, split))
        if name == "org/missing":
            raise ConnectionError("Couldn't reach 'org/missing' on the Hub (LocalEntryNotFoundError)")
        rows = [json.loads(line) for line in (DATA / "chat.jsonl").read_text().splitlines()]
        return datasets.Dataset.from_list([{"messages": r["messages"][-3:]} for r in rows])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = config(tmp_path, "dataset=chat_jsonl", "dataset.path=org/recipes", "dataset.split='train[:10]'")
    examples = load_examples(cfg.dataset)
    assert calls == [("org/recipes", "train[:10]")] and len(examples.train) + len(examples.validation) == 10
    cfg = config(tmp_path, "dataset=chat_jsonl", "dataset.path=org/missing")
    with pytest.raises(UserError, match=r"org/missing is neither a local file nor a loadable Hugging Face dataset"):
        load_examples(cfg.dataset)


def test_missing_file_and_unknown_template_column_are_user_errors(tmp_path):
    cfg = config(tmp_path, "dataset=chat_jsonl", f"dataset.path={tmp_path / 'nope.jsonl'}")
    with pytest.raises(UserError, match="nope.jsonl does not exist"):
        load_examples(cfg.dataset)
    cfg = config(
        tmp_path, "dataset=template", f"dataset.path={DATA / 'recipes.csv'}", "dataset.templates.user='Recipe {titel}'"
    )
    with pytest.raises(UserError, match=r"\{titel\}.*Did you mean 'title'.*Available columns: title, ingredients, NER"):
        load_examples(cfg.dataset)
