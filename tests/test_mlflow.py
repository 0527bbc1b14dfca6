"""logger=mlflow writes a run that MLflow's own client reads back: params, step metrics, artifacts; a sweep's runs
share one experiment; secrets never become params."""

from __future__ import annotations

import json

import pytest

from tests.helpers import hydratune

pytestmark = pytest.mark.slow  # runs a training job (tiny model) or several processes

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the `loggers` extra (mlflow-skinny)")

TINY = ["model=tiny_random", "hardware.threads=1", "train.max_steps=3", "eval=none", "logger=mlflow"]
SECRET = "hf_do_not_log_this_0123456789"


def search_runs(uri: str, **query):
    """mlflow.search_runs (a DataFrame) on the store at ``uri``."""
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(**query)
    finally:
        mlflow.set_tracking_uri(None)


def test_run_has_params_step_metrics_and_artifacts(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = hydratune(
        *TINY, f"hydra.run.dir={run_dir}", f"train.hub_token={SECRET}", "run_name=tracked", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]

    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    runs = search_runs(uri, experiment_names=["tracked"])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.model.source"] == "tiny_random"
    assert float(row["params.train.max_steps"]) == 3
    assert row["params.train.hub_token"] == "***redacted***"
    assert row["params.hardware.threads"] == "1"

    client = mlflow.MlflowClient(tracking_uri=uri)
    losses = client.get_metric_history(row["run_id"], "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    jsonl = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(jsonl) == 3
    assert row["metrics.train_loss"] > 0  # the Trainer's closing log
    stats = json.loads((run_dir / "metrics.json").read_text())["data"]
    assert row["metrics.data.train.examples"] == stats["train"]["examples"]  # metrics.json's numbers

    artifacts = {a.path for a in client.list_artifacts(row["run_id"])}
    assert artifacts == {"report.md", "loss_curve.png", "metrics.json"}
    local = client.download_artifacts(row["run_id"], "report.md", str(tmp_path))
    assert open(local).read() == (run_dir / "report.md").read_text()

    store = [run_dir / "mlflow.db", *(p for p in (run_dir / "mlartifacts").rglob("*") if p.is_file())]
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in store)


def test_sweep_runs_share_one_experiment(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    result = hydratune(
        "-m", *TINY, "train.learning_rate=1e-3,5e-3", f"hydra.sweep.dir={sweep}", cache=cache_dir, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{sweep / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [str(sweep)]
    runs = search_runs(uri, experiment_ids=[experiments[0].experiment_id])
    assert sorted(runs["params.train.learning_rate"].astype(float)) == [1e-3, 5e-3]
    assert set(runs["status"]) == {"FINISHED"}
    assert not list(sweep.glob("*/mlflow.db"))


@pytest.mark.parametrize("env_uri", [None, "http://user:pw@mlflow.example:5000"])
def test_tracking_uri_from_environment_is_not_written(tmp_path, monkeypatch, env_uri):
    from omegaconf import open_dict

    from tests.helpers import compose
    from trainer.run import mlflow_tracking

    if env_uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose("logger=mlflow", "run_name=solo")
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    mlflow_tracking.resolve(cfg)
    # an environment URI may carry credentials: it stays out of config.yaml, and MLflow reads it at run time
    assert cfg.logger.tracking_uri == (None if env_uri else f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cfg.logger.experiment == "solo"
    assert mlflow_tracking._safe(env_uri) == ("http://***redacted***@mlflow.example:5000" if env_uri else "None")
