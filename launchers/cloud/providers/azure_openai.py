"""Azure OpenAI's fine-tuning API (``hardware=azure_openai``): OpenAI's API on an Azure resource, through the
``openai`` SDK's AzureOpenAI client. What differs from OpenAI: credentials and endpoint, the model spelling
(gpt-35-turbo), no job metadata, and evaluation through deployments (the fine-tuned model is deployed through the
management API for the evaluation and deleted after it; the base model through ``hardware.base_deployment``)."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from typing import Any

from launchers.cloud import azure_deploy
from launchers.cloud.providers.openai import OpenAI, sdk_errors
from trainer.config.errors import UserError

log = logging.getLogger(__name__)


class AzureOpenAI(OpenAI):
    name = "azure_openai"

    def make_client(self) -> Any:
        import openai

        hw = self.hw
        if not (hw.api_key or os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_AD_TOKEN")):
            raise UserError(
                "No Azure OpenAI credentials: set the environment variable AZURE_OPENAI_API_KEY (or "
                "AZURE_OPENAI_AD_TOKEN for an Entra ID token)."
            )
        endpoint = hw.base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise UserError(
                "No Azure OpenAI endpoint: set AZURE_OPENAI_ENDPOINT (e.g. "
                "https://RESOURCE.openai.azure.com) or hardware.base_url."
            )
        version = hw.api_version or os.environ.get("OPENAI_API_VERSION")
        if not version:
            raise UserError(
                "No Azure OpenAI API version: set OPENAI_API_VERSION (e.g. 2025-04-01-preview) or hardware.api_version."
            )
        # project= is accepted at run time; the SDK's typed overloads leave it out
        return openai.AzureOpenAI(  # type: ignore[call-overload]
            api_key=hw.api_key or None,
            azure_endpoint=endpoint,
            api_version=version,
            organization=hw.organization,
            project=hw.project,
            max_retries=0,
        )

    def model_name(self, cfg: Any) -> str:
        """Azure spells gpt-3.5 as gpt-35."""
        return str(cfg.model.name_or_path).replace("gpt-3.5", "gpt-35")

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        dep = cfg.hardware.deployment
        if dep.create and not all(dep[k] for k in ("subscription_id", "resource_group", "resource_name")):
            raise UserError(
                "hardware.deployment.create=true needs hardware.deployment.subscription_id, resource_group "
                "and resource_name (the Azure OpenAI resource that will host the fine-tuned model)."
            )

    def metadata(self, run_id: str) -> dict[str, Any]:
        return {}  # Azure's API takes no job metadata

    def base_model(self, cfg: Any) -> str | None:
        if not cfg.hardware.base_deployment:
            log.warning("Azure: hardware.base_deployment is not set, so the base model is not evaluated.")
            return None
        return str(cfg.hardware.base_deployment)

    def serving(self, cfg: Any, state: Any, tuned: str | None) -> AbstractContextManager[str | None]:
        return azure_deploy.deployed(cfg, state, tuned)


__all__ = ["AzureOpenAI", "make", "sdk_errors"]


def make(hw: Any) -> AzureOpenAI:
    return AzureOpenAI(hw)
