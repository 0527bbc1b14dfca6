"""The migration walkthrough end to end against a local fake of OpenAI's API (no account, no network, no cost):

    python -m examples.migrate_openai_finetune.migrate --out /tmp/migrate           # SmolLM2-135M, 1 epoch
    python -m examples.migrate_openai_finetune.migrate --out /tmp/migrate --smoke   # tiny model, 2 steps (CI)

Run it from the repository root. tests/fake_provider.py is a real HTTP server on 127.0.0.1 that the openai SDK talks
to; here it holds one existing fine-tune, ``ft:gpt-4o-mini-2024-07-18:my-org::migrate1``, that answers each recipe
with its generic ingredients, and drops the last ingredient for about one recipe in eight (a fine-tune is not
perfect, and a model trained on its answers learns its mistakes too). The two steps are the README's two commands;
this script only adds the fake's address and key (and, in smoke mode, a tiny model and 16 prompts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fake_provider import FakeProvider

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: The experiment's record.endpoint.model (conf/experiment/migrate_openai_finetune.yaml).
FINETUNE = "ft:gpt-4o-mini-2024-07-18:my-org::migrate1"
KEY = "sk-fake-migrate-0000"
PROMPTS = "examples/migrate_openai_finetune/data/prompts.jsonl"
RECIPES = REPO / "trainer" / "assets" / "quickstart" / "recipes.jsonl"
SMOKE_RECORD = ["dataset.max_train_examples=16", "record.requests_per_minute=null"]
SMOKE_TRAIN = [
    "model=tiny_random", "hardware=cpu", "hardware.threads=1", "train.max_steps=2", "eval.max_examples=4",
    "eval.generation.max_new_tokens=8",
]  # fmt: skip
CLEARED = ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")


def fake_finetune(fake: FakeProvider) -> None:
    """The fine-tune to migrate off: the recipes' references, the last ingredient dropped for ~1 in 8."""
    fake.finetunes.add(FINETUNE)
    for line in RECIPES.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        question, answer = messages[1]["content"], messages[2]["content"]
        if int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 8 == 0:
            answer = json.dumps(json.loads(answer)[:-1])
        fake.answers[question] = answer


def steps(out: Path, base_url: str, smoke: bool) -> tuple[list[str], list[str]]:
    """The two `hydratune` commands (README.md), pointed at ``base_url``: record the fine-tune, then train and
    compare."""
    recorded = out / "recorded.jsonl"
    common = ["experiment=migrate_openai_finetune", f"record.endpoint.base_url={base_url}"]
    record = ["record", *common, "dataset.format=prompt", "dataset.validation_path=null", f"dataset.path={PROMPTS}",
              f"record.out={recorded}"]  # fmt: skip
    train = [*common, f"dataset.path={recorded}", f"hydra.run.dir={out / 'run'}"]
    if smoke:
        record += SMOKE_RECORD
        train += SMOKE_TRAIN
    return record, train


def table(run_dir: Path) -> str:
    """The three columns of metrics.json for the metrics they share, as a markdown table."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    columns = {
        "OpenAI fine-tune (fake)": metrics["compare"]["openai-finetune"],
        "base model": metrics["base"],
        "fine-tuned here": metrics["finetuned"],
    }
    shared = [
        k for k, v in metrics["finetuned"].items() if isinstance(v, float) and all(k in c for c in columns.values())
    ]
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{c[k]:.4f}" for c in columns.values()) + " |" for k in shared]
    return "\n".join(lines)


def run(out: Path, smoke: bool) -> tuple[int, FakeProvider]:
    """Both steps as subprocesses against a fresh fake; returns the exit code and the fake (its counters)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | {"OPENAI_API_KEY": KEY}
    with FakeProvider(api_key=KEY) as fake:
        fake_finetune(fake)
        for args in steps(out, fake.openai_url, smoke):
            code = subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=REPO).returncode
            if code:
                break
    return code, fake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for recorded.jsonl and the run dir")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 16 prompts")
    opts = parser.parse_args()
    code, fake = run(opts.out.resolve(), opts.smoke)
    print(f"fake OpenAI answered {fake.counters['chat']} chat completions ({len(fake.prompts)} distinct prompts)")
    if code == 0:
        print(table(opts.out.resolve() / "run"))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
