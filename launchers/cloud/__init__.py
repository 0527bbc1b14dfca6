"""Cloud hardware: fine-tune at OpenAI, Azure OpenAI or Together AI with the same dataset, evaluation and report as a
local run (providers: launchers/cloud/provider.py).

hydratune prepare hardware=openai model=gpt_4o_mini     # validate, count tokens, print the cost estimate
hydratune hardware=openai model=gpt_4o_mini             # upload, train, evaluate base vs fine-tuned, report
hydratune job-status hydra.run.dir=DIR                  # also job-attach, job-cancel
"""

from __future__ import annotations

from launchers.cloud.checks import check
from launchers.cloud.job_cli import job_command, job_main
from launchers.cloud.training import run

__all__ = ["check", "job_command", "job_main", "run"]
