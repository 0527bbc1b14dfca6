"""Sweeps through the `hydratune` command: a grid, a failing run, an Optuna search resumed from SQLite, parallel
runs with the joblib launcher, the SLURM option; the summary (table, plot, cache reuse) they leave."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import hydratune
from trainer.config.errors import UserError
from trainer.report import sweeps
from trainer.run import rundir
from trainer.run.threads import usable_cores

TINY = ["model=tiny_random", "train.max_steps=2", "eval.max_examples=4", "eval.generation.max_new_tokens=4"]


def multirun(*args: str, sweep_dir: Path, cache: Path, failures: bool = False) -> str:
    result = hydratune("-m", *args, *TINY, f"hydra.sweep.dir={sweep_dir}", cache=cache)
    # A sweep with a failed run exits 1, after finishing the others.
    assert result.returncode == (1 if failures else 0), result.stderr[-3000:]
    if failures:
        assert "run(s) of the sweep did not finish ok" in result.stderr and "Traceback" not in result.stderr
    return result.stdout + result.stderr


def table(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def logs(sweep_dir: Path) -> list[str]:
    return [(d / "hydratune.log").read_text() for d in sorted(sweep_dir.glob("[0-9]*"))]


def compose_with_hydra(*overrides: str):
    from trainer.config import schema

    return schema.compose(list(overrides), hydra_node=True)


# ---------------------------------------------------------------- a 4-run grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    # A cache of its own, so that the first run is the one that tokenizes the data and evaluates the base model.
    cache, sweep_dir = tmp_path_factory.mktemp("grid-cache"), tmp_path_factory.mktemp("grid") / "sweep"
    multirun(
        "method=lora,dora", "train.learning_rate=1e-4,3e-4", "hardware.threads=1", sweep_dir=sweep_dir, cache=cache
    )
    return sweep_dir


@pytest.mark.slow
def test_grid_gives_one_run_dir_per_combination(grid):
    runs = sorted(p.name for p in grid.iterdir() if p.is_dir())
    assert runs == ["0", "1", "2", "3"]
    combos = set()
    for run in runs:
        status = json.loads((grid / run / "status.json").read_text())
        finetuned = json.loads((grid / run / "metrics.json").read_text())["finetuned"]
        assert status["status"] == "ok" and status["objective"] == pytest.approx(finetuned["eval_loss"])
        assert (grid / run / "report.md").is_file()
        config = OmegaConf.load(grid / run / "config.yaml")
        combos.add((config.method.name, config.train.learning_rate))
    assert combos == {("lora", 1e-4), ("lora", 3e-4), ("dora", 1e-4), ("dora", 3e-4)}


@pytest.mark.slow
def test_grid_summary_is_sorted_by_the_objective_with_a_plot(grid):
    rows = table(grid)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    losses = [float(r["finetuned.eval_loss"]) for r in rows]
    assert losses == sorted(losses)
    assert {(r["method"], float(r["train.learning_rate"])) for r in rows} == {
        ("lora", 1e-4),
        ("lora", 3e-4),
        ("dora", 1e-4),
        ("dora", 3e-4),
    }
    assert (grid / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (grid / "summary.md").read_text()
    assert f"**Best: run {rows[0]['run']}**" in markdown and "![finetuned.eval_loss" in markdown


@pytest.mark.slow
def test_grid_tokenizes_the_dataset_once_and_evaluates_the_base_model_once(grid):
    texts = logs(grid)
    assert sum(t.count("dataset cache miss") for t in texts) == 1
    assert sum(t.count("dataset cache hit") for t in texts) == 3
    assert sum(t.count("base evaluation cache hit") for t in texts) == 3
    rows = table(grid)
    assert sorted(r["dataset_cache"] for r in rows) == ["hit", "hit", "hit", "miss"]
    assert sorted(r["base_eval_cache"] for r in rows) == ["hit", "hit", "hit", "miss"]
    assert (
        "Dataset tokenized 1 time(s), reused from the cache 3 time(s); base model evaluated 1 time(s), reused "
        "from the cache 3 time(s)." in (grid / "summary.md").read_text()
    )


@pytest.mark.slow
def test_summary_can_be_rebuilt_with_another_objective(grid, tmp_path):
    copy = shutil.copytree(grid, tmp_path / "sweep", ignore=shutil.ignore_patterns("model", "checkpoints"))
    sweeps.main([str(copy), "finetuned.eval_loss", "maximize"])
    losses = [float(r["finetuned.eval_loss"]) for r in table(copy)]
    assert losses == sorted(losses, reverse=True)


# ---------------------------------------------------------------- failures


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    multirun("train.learning_rate=3e-4,oops", "hardware.threads=1", sweep_dir=sweep_dir, cache=cache_dir, failures=True)
    ok, failed = (json.loads((sweep_dir / n / "status.json").read_text()) for n in ("0", "1"))
    assert ok["status"] == "ok" and (sweep_dir / "0" / "metrics.json").is_file()
    assert failed["status"] == "failed" and "train.learning_rate='oops'" in failed["error"]
    assert failed["traceback"] is None  # a UserError: its one paragraph says it all
    rows = {r["run"]: r for r in table(sweep_dir)}
    assert rows["0"]["status"] == "ok" and rows["1"]["status"] == "failed"
    assert "train.learning_rate='oops'" in rows["1"]["error"]
    assert "run 1 failed: train.learning_rate='oops'" in (sweep_dir / "summary.md").read_text()


def test_summary_counts_the_base_evaluation_and_the_regression_probe_cache_apart(tmp_path):
    """evaluation.cached logs one hit line per cached file: a run whose probe came from the cache but whose base
    evaluation did not was counted as a base-evaluation hit, and the probe's own reuse was never counted."""
    hit = "[trainer.evaluation.local][INFO] - base evaluation cache hit: {}-0123456789abcdef.json\n"
    logs = {"0": "", "1": hit.format("regression"), "2": hit.format("base") + hit.format("regression")}
    for name, log in logs.items():
        run = tmp_path / name
        run.mkdir()
        (run / "status.json").write_text('{"status": "ok"}')
        (run / "overrides.json").write_text(f'["seed={name}"]')
        (run / "metrics.json").write_text('{"base": {}, "regression": {}, "finetuned": {"eval_loss": 1.0}}')
        (run / "hydratune.log").write_text(log)
    runs = sweeps.read_runs(tmp_path, "finetuned.eval_loss")
    assert [(r.base_eval_cache, r.probe_cache) for r in runs] == [("miss", "miss"), ("miss", "hit"), ("hit", "hit")]
    md = sweeps.write_summary(tmp_path, "finetuned.eval_loss", "minimize").read_text()
    assert (
        "base model evaluated 2 time(s), reused from the cache 1 time(s); regression probe asked of the base model "
        "1 time(s), reused from the cache 2 time(s)." in md
    )
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["probe_cache"] for r in rows] == ["miss", "hit", "hit"]


def test_an_unexpected_error_is_recorded_with_its_traceback(tmp_path):
    cfg = OmegaConf.create({"output_dir": str(tmp_path)})

    def crash():
        raise RuntimeError("CUDA out of memory")

    try:
        crash()
    except RuntimeError as exc:
        assert rundir.failed(cfg, "train", 0.0, exc) is None  # None: Optuna records a failed trial
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["error"] == "RuntimeError: CUDA out of memory"
    assert "in crash" in status["traceback"]
    rundir.failed(cfg, "train", 0.0, UserError("bad data"))
    assert json.loads((tmp_path / "status.json").read_text())["traceback"] is None


def test_objective_is_a_dotted_path_into_the_metrics():
    metrics = {"finetuned": {"eval_loss": 1.5, "exact_match": 0}, "job": {"final": {"eval_loss": 2}}, "ok": True}
    assert rundir.objective(metrics) == 1.5
    assert rundir.objective(metrics, "finetuned.exact_match") == 0.0
    assert rundir.objective(metrics, "job.final.eval_loss") == 2.0
    assert rundir.objective(metrics, "finetuned.token_f1") is None
    assert rundir.objective(metrics, "ok") is None


# ---------------------------------------------------------------- Optuna


@pytest.mark.parametrize(
    "option", sorted(p.stem for p in (Path(sweeps.__file__).parents[1] / "conf/hparams_search").glob("*.yaml"))
)
def test_hparams_search_options_compose_and_name_real_keys(option):
    cfg = compose_with_hydra(f"hparams_search={option}")
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_
    assert sweeper.direction == cfg.optimize.direction
    for key in sweeper.params:
        parent, _, leaf = key.rpartition(".")
        assert leaf in (OmegaConf.select(cfg, parent) if parent else cfg), f"{option}: {key} is not a composed key"
    # The option's own objective wins over the root config's default.
    own = OmegaConf.load(Path(sweeps.__file__).parents[1] / "conf" / "hparams_search" / f"{option}.yaml").optimize
    assert cfg.optimize.metric == own.metric and cfg.optimize.direction.name == own.direction


@pytest.mark.slow
def test_optuna_search_writes_best_parameters_and_resumes_from_sqlite(tmp_path, cache_dir):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["hparams_search=lora_lr", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resume"]
    multirun(*search, "hydra.sweeper.n_trials=4", "hardware.threads=1", sweep_dir=tmp_path / "a", cache=cache_dir)
    best = OmegaConf.load(tmp_path / "a" / "optimization_results.yaml")
    assert set(best.best_params) == {"train.learning_rate", "method.peft.r"}
    rows = table(tmp_path / "a")
    assert len(rows) == 4 and float(rows[0]["finetuned.eval_loss"]) == pytest.approx(best.best_value)

    out = multirun(*search, "hydra.sweeper.n_trials=1", "hardware.threads=1", sweep_dir=tmp_path / "b", cache=cache_dir)
    assert "Using an existing study" in out
    study = optuna.load_study(study_name="resume", storage=storage)
    assert len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.slow
def test_optuna_records_a_failed_trial_and_the_search_goes_on(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    search = ["hparams_search=lora_lr", "hydra.sweeper.n_trials=3", "train.weight_decay=choice(0.0,oops)"]
    out = multirun(*search, "hardware.threads=1", sweep_dir=sweep_dir, cache=cache_dir, failures=True)
    rows = table(sweep_dir)
    # Seeded sampler: trials 0 and 1 draw weight_decay 0.0, trial 2 draws 'oops'.
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"] and rows[2]["run"] == "2"
    assert "train.weight_decay='oops'" in rows[2]["error"]
    assert (sweep_dir / "optimization_results.yaml").is_file() and "Best value" in out


# ---------------------------------------------------------------- launchers


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel_sharing_the_cores(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    multirun("hydra/launcher=parallel", "train.learning_rate=1e-4,3e-4", sweep_dir=sweep_dir, cache=cache_dir)
    runs = [json.loads((sweep_dir / n / "status.json").read_text()) for n in ("0", "1")]
    assert all(r["status"] == "ok" for r in runs)
    assert runs[0]["pid"] != runs[1]["pid"]
    # Both were running at the same time: each started before the other finished.
    assert max(r["started"] for r in runs) < min(r["finished"] for r in runs)
    threads = max(1, usable_cores()[0] // 2)
    for n in ("0", "1"):
        assert f"hardware.threads={threads}" in json.loads((sweep_dir / n / "overrides.json").read_text())
        assert OmegaConf.load(sweep_dir / n / "config.yaml").hardware.threads == threads


def test_threads_per_job():
    assert sweeps.threads_per_job(2, 16) == 8
    assert sweeps.threads_per_job(-1, 16) == 1
    assert sweeps.threads_per_job(-2, 16) == 1
    assert sweeps.threads_per_job(32, 16) == 1


@pytest.mark.parametrize(
    ("overrides", "threads"),
    [
        (["hydra/launcher=parallel"], max(1, usable_cores()[0] // 2)),
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=-1"], 1),
        (["hydra/launcher=parallel", "hardware.threads=3"], None),  # the user's own choice stays
        (["hydra/launcher=parallel", "hardware.submit=slurm"], None),  # the job's node decides
        ([], None),  # runs one after another: every core
    ],
)
def test_sweep_callback_sets_threads_per_run(overrides, threads):
    cfg = compose_with_hydra(*overrides)
    before = list(cfg.hydra.overrides.task)
    sweeps.share_threads(cfg)
    added = list(cfg.hydra.overrides.task)[len(before) :]
    assert added == ([f"hardware.threads={threads}"] if threads else [])
