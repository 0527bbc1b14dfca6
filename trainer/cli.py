"""The `hydratune` console command: ``hydratune [COMMAND] [OVERRIDES...]``.

The first word picks the command (train when it is an override or absent); Hydra composes and validates
the config; the hardware strategy's launcher runs it. Nothing here imports torch: ``--help`` and
``--cfg job`` stay fast.

    hydratune model=tiny_random train.max_steps=3 hydra.run.dir=/tmp/run
    hydratune prepare dataset=chat_jsonl dataset.path=data.jsonl
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from trainer import schema
from trainer.compose_errors import explain_composition_error
from trainer.errors import UserError

#: Act on the provider job a cloud run dir recorded: `hydratune job-status hydra.run.dir=DIR`.
JOB_COMMANDS = ("job-status", "job-attach", "job-cancel")
#: Tools that write files instead of running: `hydratune convert-autotrain PATH [--out FILE]` (trainer/autotrain.py),
#: `hydratune report DIR [DIR...]` (trainer/report_command.py), `hydratune record [OVERRIDES]` (a model's answers to
#: the dataset's prompts as a chat JSONL dataset: launchers/cloud/record.py).
TOOL_COMMANDS = ("convert-autotrain", "report", "record")
#: Host a finished run: `hydratune serve|export hydra.run.dir=RUN` (trainer/serving.py, trainer/export.py).
HOSTING_COMMANDS = ("serve", "export")
COMMANDS = ("train", "prepare", "eval", *JOB_COMMANDS, *TOOL_COMMANDS, *HOSTING_COMMANDS)
_PASS_THROUGH = tuple(f"{node}." for node in ("train", "method.peft", "method.quantization"))
_command = "train"


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def _task(cfg: DictConfig) -> float | None:
    from launchers import launch
    from trainer import rundir
    from trainer.atomic import explain_io_error

    started = time.time()
    try:
        launch(cfg, _command)
        return rundir.finished(cfg, _command, started)  # status.json; the configured objective, for Optuna
    except KeyboardInterrupt:
        rundir.interrupted(cfg, _command, started)
        _interrupted(cfg.output_dir)
    except Exception as exc:
        # A full or read-only disk, a wandb server that refuses the key: one paragraph.
        exc = explain_io_error(exc, cfg.output_dir) or exc
        if not isinstance(exc, UserError):  # trainer.loggers imports transformers: not for a config mistake
            from trainer.loggers import explain_wandb_error

            exc = explain_wandb_error(exc) or exc
        if rundir.in_multirun():  # one failed run of a sweep is recorded in its status.json; the others go on
            rundir.failed(cfg, _command, started, exc)
            return None  # Optuna records a failed trial
        rundir.failed(cfg, _command, started, exc, quiet=True)
        if isinstance(exc, UserError):
            _fail(str(exc))  # SystemExit passes through Hydra's job runner without its "Error executing job" line
        raise
    finally:
        rundir.release()


def main(argv: list[str] | None = None) -> None:
    global _command
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and "=" not in args[0]:
        word = args.pop(0)
        if word not in COMMANDS:
            _fail(f"Unknown command '{word}'. Commands: {', '.join(COMMANDS)} (train is the default).")
        _command = word
    if _command in JOB_COMMANDS:
        return _job(_command, args)
    if _command in TOOL_COMMANDS:
        return _tool(_command, args)
    if _command in HOSTING_COMMANDS:
        return _hosting(_command, args)
    args = [_pass_through(arg) for arg in args]
    schema.register()
    if "--help" in args or "-h" in args:
        return _help(_overrides(args))
    if "--cfg" in args or "-c" in args:  # Hydra prints the config and runs nothing: refuse what a run would refuse
        from launchers import check

        try:
            check(_compose(_overrides(args)))
        except UserError as exc:
            _fail(str(exc))
    # Hydra prints composition errors with a hint to set HYDRA_FULL_ERROR; we catch them ourselves instead and
    # print one paragraph that names the key and the allowed values.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *args]
    printing = any(a in ("--cfg", "-c", "--info", "-i") or a.startswith(("--cfg=", "--info=")) for a in args)
    try:
        if printing:  # Hydra prints the config itself: redact what it prints
            from trainer.secrets import printed_redacted

            with printed_redacted():
                _task()
        else:
            _task()
        _sweep_failures()
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted(None)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - only composition and I/O errors are rewritten, the rest re-raised
        if _is_composition_error(exc):
            _fail(explain_composition_error(exc))
        from trainer.atomic import explain_io_error

        # Hydra creating the run dir or its log: a file in the way, a read-only or full disk.
        explained = explain_io_error(exc, getattr(exc, "filename", None) or ".")
        if explained is None:
            raise
        _fail(str(explained))


def _pass_through(arg: str) -> str:
    """``train.max_steps=5`` -> ``++train.max_steps=5``: library pass-through nodes take any of the library's
    arguments, listed in the default config or not; trainer.config_checks then checks the name and type."""
    if arg.startswith(_PASS_THROUGH) and "=" in arg:
        return "++" + arg
    return arg


def _help(overrides: list[str]) -> None:
    """``hydratune --help``: the groups and their options, then the config these overrides compose. Hydra's own
    help deep-copies its config repository once per listed group (most of 4 s here); this composes once."""
    from importlib import resources

    import yaml
    from omegaconf import OmegaConf

    conf = resources.files("conf")
    groups = sorted(d.name for d in conf.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__"))
    listing = "\n".join(
        f"{group}: {', '.join(sorted(f.name[:-5] for f in (conf / group).iterdir() if f.name.endswith('.yaml')))}"
        for group in groups
    )
    cfg = _compose(overrides)
    listing += "\n"  # as Hydra's page
    text = yaml.safe_load((conf / "hydra" / "help" / "hydratune.yaml").read_text())
    page = text["template"].replace("${hydra.help.header}", text["header"])
    page = page.replace("${hydra.help.footer}", text["footer"]).replace("$APP_CONFIG_GROUPS", listing)
    sys.stdout.write(page.replace("$CONFIG", OmegaConf.to_yaml(cfg)) + "\n")


def _compose(overrides: list[str]) -> DictConfig:
    """The config these overrides compose, outside a run (composition errors become one paragraph)."""
    try:
        return schema.compose(overrides)
    except Exception as exc:  # noqa: BLE001 - composition errors become one paragraph, as for a run
        if not _is_composition_error(exc):
            raise
        _fail(explain_composition_error(exc))


def _overrides(args: list[str]) -> list[str]:
    """The overrides among Hydra's command-line flags (``--cfg job``, ``-p PACKAGE``, ``--resolve`` ...)."""
    flags_with_value = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp")
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in flags_with_value
        else:
            out.append(arg)
    return out


def _job(word: str, args: list[str]) -> None:
    from launchers.cloud import job_main

    try:
        job_main(word.removeprefix("job-"), args)
    except UserError as exc:
        _fail(str(exc))


def _tool(word: str, args: list[str]) -> None:
    import importlib

    module = importlib.import_module(
        {
            "convert-autotrain": "trainer.autotrain",
            "report": "trainer.report_command",
            "record": "launchers.cloud.record",
        }[word]
    )
    try:
        module.main(args)
    except UserError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - record composes a config: composition errors become one paragraph
        if not _is_composition_error(exc):
            raise
        _fail(explain_composition_error(exc))


def _hosting(word: str, args: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for chatty in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        if word == "serve":
            from trainer import serving

            serving.main(args)
        else:
            from trainer import export

            export.main(args)
    except UserError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - only composition errors are rewritten, the rest re-raised
        if not _is_composition_error(exc):
            raise
        _fail(explain_composition_error(exc))


def _is_composition_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, HydraException | OmegaConfBaseException) and not isinstance(exc, UserError)


def _sweep_failures() -> None:
    from trainer.sweeps import FAILED

    if FAILED:
        sys.stderr.write(
            f"hydratune: {len(FAILED)} run(s) of the sweep did not finish ok: {', '.join(FAILED)}. The others finished; "
            "see summary.md in the sweep dir and status.json in each run dir.\n"
        )
        raise SystemExit(1)


def _interrupted(run_dir: str | None) -> NoReturn:
    where = f" {run_dir}/status.json says 'interrupted';" if run_dir else ""
    sys.stderr.write(
        f"hydratune: interrupted.{where} run the same command again to resume from the last complete checkpoint.\n"
    )
    raise SystemExit(130)


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"hydratune: error: {message}\n")
    raise SystemExit(2)


if __name__ == "__main__":
    main()
