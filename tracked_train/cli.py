"""Command line: click commands that parse arguments and call into the package.

Heavy libraries (torch, datasets, trackers) are imported inside the commands,
so ``tracked-train --help`` answers at once.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import UserError


def _user_errors(fn):
    """Bad input: one line on stderr, exit code 2, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except UserError as e:
            from .errors import ReportedOnRank0

            if not isinstance(e, ReportedOnRank0):
                click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            log_file = getattr(e, "train_log", None)
            if log_file is None:
                raise  # a bug with no log to hold its traceback: show it
            from .errors import describe

            click.echo(f"error: internal error ({type(e).__name__}: {describe(e)}); the traceback is in {log_file}",
                       err=True)
            sys.exit(1)
        finally:
            from .distributed import shutdown

            shutdown()  # leave torchrun's process group cleanly (a no-op without torchrun)
        sys.exit(code or 0)
    return wrapper


SET_HELP = "Override a config key, e.g. --set training.lr=3e-4 (repeatable; an empty value clears an optional key)."


class _TrackerOption(click.Option):
    """--tracker, whose help names the trackers installed: looked up only when help is shown (an entry-point scan)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from .trackers import available

        names, text = super().get_help_record(ctx)
        return names, f"{text} Available: {', '.join(available())}."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracked-train")
def main() -> None:
    """Train transformer language models with every run tracked, comparable and resumable."""
    import signal

    # SIGTERM outside the training loop (setup, final upload) ends like Ctrl-C: trackers close their runs.
    # Inside the loop, train.Interrupts turns it into a clean stop after the current step.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _overrides(positional: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    """Positional KEY=VALUE (as sweep agents pass them) first, then --set: the later one wins."""
    for arg in positional:
        if "=" not in arg:
            raise UserError(f"unexpected argument {arg!r}; overrides are KEY=VALUE, e.g. training.lr=3e-4")
    return [*positional, *sets]


@main.command()
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config (see experiments/).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--tracker", "trackers", multiple=True, metavar="NAME", cls=_TrackerOption,
              help="Tracker backend, repeatable (jsonl is always on; `null` alone records nothing).")
@click.option("--run-name", help="Name of the run and its folder (default: from key settings and time).")
@click.option("--output-dir", help="Folder holding run folders (default: runs/).")
@click.option("--init-from", metavar="SOURCE",
              help="Start from the weights of a run folder, checkpoint, mlflow:RUN_ID or runs:/RUN_ID (fine-tuning).")
@click.option("--print-config", is_flag=True,
              help="Print the resolved config as YAML (secrets redacted) and exit; nothing is created.")
@_user_errors
def run(overrides: tuple[str, ...], config_file: str | None, sets: tuple[str, ...], trackers: tuple[str, ...],
        run_name: str | None, output_dir: str | None, init_from: str | None, print_config: bool) -> int:
    """Train a model; leaves a resumable run folder in OUTPUT_DIR/RUN_NAME.

    KEY=VALUE arguments override config keys like --set (training.lr=3e-4 model.d_model=128), as sweep
    agents such as W&B's pass them. Config precedence: KEY=VALUE, --set and flags >
    TRACKED_TRAIN_<SECTION>_<KEY> environment > --config YAML > defaults. MLflow's MLFLOW_EXPERIMENT_NAME
    sets tracking.experiment when none of them does.

    Your own model, data and losses: task=my_module:MyTask (or path/to/file.py:MyTask), its settings as
    task_args.NAME=VALUE; see docs/tasks.md and experiments/collatz.yaml.
    """
    from . import config

    cli = {"run.name": run_name, "run.output_dir": output_dir, "tracking.trackers": list(trackers) or None}
    cfg = config.resolve(config_file, _overrides(overrides, sets), cli)
    if print_config:
        click.echo(config.to_yaml(cfg), nl=False)
        return 0
    from . import runner

    return runner.start(cfg, init_from).stop.exit_code


@main.command()
@click.argument("source")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--from", "which", default="last", show_default=True, metavar="last|best|step-N",
              help="Which checkpoint to continue from: last, best, or a kept periodic one (step-500).")
@click.option("--fork", is_flag=True, help="Continue as a new tracked run; the old one is untouched.")
@click.option("--allow-config-change", is_flag=True,
              help="Accept --set values that differ from the run's config (recorded as a tag and an artifact).")
@_user_errors
def resume(source: str, sets: tuple[str, ...], which: str, fork: bool, allow_config_change: bool) -> int:
    """Continue a run exactly where it stopped, in the same tracked run.

    SOURCE is a run folder, mlflow:RUN_ID or runs:/RUN_ID (the server from
    MLFLOW_TRACKING_URI or --set tracking.mlflow.uri=...).
    """
    from .resume import resume as resume_run

    return resume_run(source, list(sets), which, fork, allow_config_change)


@main.command()
@click.argument("source")
@click.option("--prompt", required=True, help="Text to continue.")
# Plain types: the ranges are checked by inference.check_sampling, the one check the Python API and the
# served model share (click's FloatRange lets NaN through, and its errors are three lines).
@click.option("--max-new-tokens", default=200, show_default=True, type=int, help="How many tokens to add (>= 0).")
@click.option("--temperature", default=0.8, show_default=True, type=float,
              help="Finite and >= 0; 0: always the likeliest token.")
@click.option("--top-k", default=50, show_default=True, type=int, help="Sample among the k likeliest; 0: no top-k.")
@click.option("--seed", default=0, show_default=True, type=int, help="0 to 2**63-1; the same seed, the same text.")
@_user_errors
def generate(source: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> int:
    """Sample text from SOURCE: a run folder (its best checkpoint), a checkpoint, mlflow:RUN_ID or runs:/RUN_ID."""
    from . import generate as sample
    from .inference import check_sampling

    try:  # before SOURCE is opened (or downloaded): bad input is refused at once
        check_sampling(max_new_tokens, temperature, top_k, seed, option_names=True)
    except ValueError as e:
        raise UserError(str(e)) from None
    click.echo(sample(source, prompt, max_new_tokens, temperature, top_k or None, seed))
    return 0


@main.command()
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["hf", "safetensors"]), default="hf", show_default=True,
              help="hf: a transformers folder (AutoModelForCausalLM, AutoTokenizer, pipeline); safetensors: "
                   "weights, config.json and tokenizer.model.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New folder to write.")
@_user_errors
def export(source: str, fmt: str, out: Path) -> int:
    """Write SOURCE's model (best checkpoint, else last) for use elsewhere.

    SOURCE is a run folder, a checkpoint folder, mlflow:RUN_ID or runs:/RUN_ID.
    """
    from .export import export as write

    click.echo(f"wrote {write(source, fmt, out)}")
    return 0


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@_user_errors
def sync(run_dir: Path) -> int:
    """Send what a run could not deliver to its MLflow server (it was down, or the process died)."""
    from .console import setup_logging
    from .lock import RunLock
    from .mlflow.sync import sync as sync_mlflow

    setup_logging(None)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    with RunLock(run_dir):
        done, left, rejected, quarantined = sync_mlflow(run_dir)
    if left:
        click.echo(f"{left} bytes of events still unsent; run `tracked-train sync {run_dir}` again when the "
                   "server holds the run")
    if rejected or quarantined:
        click.echo(f"{rejected} events refused by the server (mlflow/rejected.jsonl), {quarantined} unreadable "
                   "spool lines (mlflow/quarantine.jsonl)")
    if done and not (rejected or quarantined):
        click.echo("everything is on the server")
    return 0 if done and not (rejected or quarantined) else 1


@main.command()
@click.option("--experiment", help="MLflow experiment (default: tracking.experiment's default, tracked-train).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--output-dir", default="runs", show_default=True, help="Folder of local run folders to include.")
@click.option("--sweep", "study", metavar="NAME", help="Only the trials of sweep NAME, in trial order.")
@_user_errors
def runs(experiment: str | None, fmt: str, output_dir: str, study: str | None) -> int:
    """List runs, newest first: MLflow (MLFLOW_TRACKING_URI or the embedded store) and local run folders."""
    if study:
        from .sweep.refs import runs_table

        return runs_table(study, experiment, Path(output_dir), fmt)
    from .compare import runs_command

    return runs_command(experiment, fmt, output_dir)


@main.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write train/val loss curves of every run to a PNG.")
@click.option("--x", "x_axis", type=click.Choice(["step", "tokens"]), default="step", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--output-dir", default="runs", show_default=True, help="Where run names are looked up locally.")
@_user_errors
def compare(refs: tuple[str, ...], plot: str | None, x_axis: str, fmt: str, output_dir: str) -> int:
    """Compare runs: the params that differ, best and final metrics side by side, stop reasons.

    REFS are run names, MLflow run ids, mlflow:ID, runs:/ID, run folders, or sweep:NAME for every trial of a sweep.
    """
    from .compare import compare_command

    if any(r.startswith("sweep:") for r in refs):
        from .sweep.refs import expand

        refs = tuple(expand(list(refs), Path(output_dir)))
    return compare_command(list(refs), plot, x_axis, fmt, output_dir)


@main.command()
@click.option("--space", "space_file", required=True, type=click.Path(dir_okay=False),
              help="YAML mapping config keys to distributions, e.g. 'training.lr: {log_uniform: [1.0e-4, 3.0e-2]}'.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Base YAML config every trial starts from.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--tracker", "trackers", multiple=True, metavar="NAME", cls=_TrackerOption,
              help="Tracker backend for every trial, repeatable; with mlflow the sweep is a parent run.")
@click.option("--output-dir", help="Folder holding the trials' run folders (default: runs/).")
@click.option("--trials", default=20, show_default=True, type=int,
              help="Complete or pruned trials the study needs, shared by all workers.")
@click.option("--study", help="Study name; workers with the same --study and --storage share it (default: the space "
                              "file's name).")
@click.option("--storage", metavar="URL", help="Optuna storage: sqlite:///FILE.db on one machine, any SQLAlchemy URL "
                                               "(postgresql://...) across machines (default: sqlite:///sweeps.db).")
@click.option("--seed", type=int, help="Seed the sampler (TPE): the same seed gives the same trials.")
@click.option("--pruner", default="median", show_default=True, metavar="median|hyperband|none",
              help="What stops hopeless trials after an evaluation.")
@click.option("--pruner-warmup-trials", "warmup_trials", default=2, show_default=True, type=int,
              help="Complete trials before the pruner judges any.")
@click.option("--heartbeat", "heartbeat_s", default=10, show_default=True, type=int,
              help="Seconds between a running trial's heartbeats; a trial silent for 3 of them is failed and rerun.")
@_user_errors
def sweep(space_file: str, config_file: str | None, sets: tuple[str, ...], trackers: tuple[str, ...],
          output_dir: str | None, trials: int, study: str | None, storage: str | None, seed: int | None, pruner: str,
          warmup_trials: int, heartbeat_s: int) -> int:
    """Search hyperparameters with Optuna; every trial is a normal tracked run, hopeless ones are pruned.

    Run the same command in more processes or on more machines (same --study and --storage) to share the
    trials; run it again to continue the study. See docs/sweeps.md.
    """
    from .sweep import Options
    from .sweep import sweep as run_sweep

    return run_sweep(Options(space_file, config_file, sets, trackers, output_dir, trials, study, storage, seed,
                             pruner, warmup_trials, heartbeat_s))
