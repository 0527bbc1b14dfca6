"""Smoke mode of the cloud examples: the real `hydratune` command against a local fake of the provider's API.

    python -m examples.cloud_smoke experiment=recipe_ner hydra.run.dir=/tmp/recipe-ner
    python -m examples.cloud_smoke experiment=clippy_azure hydra.run.dir=/tmp/clippy

Run it from the repository root. No account, no network, no cost: tests/fake_provider.py is a real HTTP server on
127.0.0.1 that the openai SDK talks to (files, fine-tuning jobs, events, chat completions, Azure deployments). Its
fine-tuned model answers every question of the dataset with the reference answer and its base model does not, so the
report shows what a successful run looks like. The arguments go to `hydratune` unchanged; this script only adds the
fake's address and credentials (and short poll intervals).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fake_provider import FakeProvider
from tests.helpers import compose

KEY = "sk-fake-smoke-0000"
TOKEN = "fake-management-token"
FAST = ["hardware.poll_interval_s=0.01", "hardware.max_poll_interval_s=0.05", "hardware.retry_backoff_s=0.01"]
CLEARED = ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "AZURE_OPENAI_AD_TOKEN", "OPENAI_API_VERSION")


def run(args: list[str]) -> tuple[int, FakeProvider]:
    """Run `hydratune ARGS` against a fresh fake provider; returns the exit code and the fake (its counters)."""
    from trainer.data import load_examples

    cfg = compose(*[a for a in args if not a.startswith("hydra.")])
    rows = load_examples(cfg.dataset)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    with FakeProvider(api_key=KEY, management_token=TOKEN) as fake:
        for row in rows.train + rows.validation:
            question = [m["content"] for m in row["messages"] if m["role"] == "user"][-1]
            fake.answers[question] = row["messages"][-1]["content"]
        extra = list(FAST)
        if cfg.hardware.provider == "azure_openai":
            env.pop("OPENAI_BASE_URL", None)
            env.update(AZURE_OPENAI_API_KEY=KEY, AZURE_OPENAI_ENDPOINT=fake.url, AZURE_MANAGEMENT_TOKEN=TOKEN)
            env.update(AZURE_SUBSCRIPTION_ID="sub-0", AZURE_RESOURCE_GROUP="rg-0", AZURE_OPENAI_RESOURCE_NAME="res-0")
            extra.append(f"hardware.deployment.management_url={fake.url}")
        else:
            env.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=fake.openai_url)
        code = subprocess.run([sys.executable, "-m", "trainer.cli", *args, *extra], env=env).returncode
    return code, fake


def main() -> None:
    code, fake = run(sys.argv[1:])
    seen = ", ".join(f"{k} {fake.counters[k]}" for k in ("uploads", "jobs_created", "chat"))
    if fake.counters["deployments_created"]:
        seen += f", deployments created {fake.counters['deployments_created']}"
        seen += f" / deleted {fake.counters['deployments_deleted']}"
    print(f"fake provider saw: {seen}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
