"""``emote-jax train --resume``: the run directory, the checkpoint to resume from, and the settings the
resumed run takes (its ``config.json`` under the options given again); a population's resume too.

Every refusal is a :class:`~emote_jax.cli_errors.UsageError` (exit status 2) that names the option.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from emote_jax.checkpoint import checkpoint_steps, verify_checkpoint
from emote_jax.cli_errors import UsageError
from emote_jax.population import POPULATION_CONFIG
from emote_jax.recipes import ALGORITHMS, algo_of, config_from_json, get_algorithm
from emote_jax.recipes.config import with_tuples


def run_dir_of(path: str | None, what: str) -> Path:
    """``path`` as a run directory of `emote-jax train` (it holds config.json), or a UsageError naming it."""
    if path is None:
        raise UsageError(f"{what} needs a run directory (--run-dir)")
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"{what}: the run directory {run_dir} does not exist")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{what}: {run_dir / 'config.json'} does not exist; is {run_dir} a run directory of "
                         "`emote-jax train`?")
    return run_dir


def check_resume_step(checkpoints: Path, steps: list[int], step: int) -> None:
    """Refuse a --resume-step that names no checkpoint, or one with later intact checkpoints after it."""
    if step not in steps:
        raise UsageError(f"--resume-step {step}: {checkpoints} has no checkpoint of bp step {step}; it has {steps}")
    later = [s for s in steps if s > step and not verify_checkpoint(checkpoints, s)]
    if later:
        raise UsageError(f"--resume-step {step}: {checkpoints} also holds the later intact checkpoint(s) {later}, "
                         "among which the resumed run would write its own; resume the newest with --resume alone, "
                         f"or move them out of {checkpoints} first")


def resume_args(args: dict[str, Any], given: set[str], resume_step: int | None) -> dict[str, Any]:
    """The saved config.json of ``--run-dir`` (a config.json without ``"algo"`` is SAC's), overridden by
    the options given on the command line (``given``, :func:`emote_jax.cli._given_options`), even at their default value."""
    run_dir = run_dir_of(args["run_dir"], "--resume")
    checkpoints = run_dir / "checkpoints"
    steps = checkpoint_steps(checkpoints)
    if not steps:
        raise UsageError(f"--resume: no checkpoint in {checkpoints} (was the run trained with "
                         "--checkpoint-interval 0?)")
    if resume_step is not None:
        check_resume_step(checkpoints, steps, resume_step)
    config = run_dir / "config.json"
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume: {config} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"--resume: {config}: expected a JSON object of settings, got {type(saved).__name__}")
    algo = algo_of(saved)
    if algo not in ALGORITHMS:
        raise UsageError(f"--resume: {config} is of the algorithm {algo!r}, which this version does not know; "
                         f"expected one of {sorted(ALGORITHMS)}")
    if args["algo"] != algo:
        raise UsageError(f"--resume: {run_dir} is a run of --algo {algo}, not --algo {args['algo']}")
    saved = with_tuples(ALGORITHMS[algo].config_cls, saved)  # JSON turned the tuples into lists
    return {**saved, **{k: v for k, v in args.items() if k in given}, "algo": algo, "run_dir": str(run_dir)}


def with_preset(args: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """``args`` with the preset's values under the options given on the command line (``given``)."""
    explicit = {k: v for k, v in args.items() if k in given}
    return {**args, **ALGORITHMS[args["algo"]].config_cls.PRESETS[args["preset"]], **explicit}


def resume_population(args: dict[str, Any], given: set[str], resume_step: int | None, devices: int | None) -> int:
    """``--resume --run-dir DIR`` of a population: its saved settings; ``--steps``, ``--devices`` and
    ``--shard-envs`` may change (a checkpoint loads into any layout)."""
    from emote_jax.population import POPULATION_CHECKPOINTS, train_population  # noqa: PLC0415
    from emote_jax.population_checkpoint import population_checkpoint_steps  # noqa: PLC0415

    run_dir = run_dir_of(args["run_dir"], "--resume")
    meta = json.loads((run_dir / POPULATION_CONFIG).read_text())
    algo = get_algorithm(algo_of(meta["config"]))
    settings = {f.name for f in dataclasses.fields(algo.config_cls)} | {"population", "sweep", "pbt_interval",
                                                                        "pbt_perturb"}
    other = sorted((given & settings) - {"run_dir", "env_steps", "algo", "shard_envs"})
    if other:
        raise UsageError(f"--resume of a population keeps its settings; only --steps, --devices and --shard-envs may "
                         "change, got "
                         f"{', '.join('--' + o.replace('_', '-') for o in other)}")
    steps = population_checkpoint_steps(run_dir / POPULATION_CHECKPOINTS)
    if not steps:
        raise UsageError(f"--resume: no population checkpoint in {run_dir / POPULATION_CHECKPOINTS} (was it trained "
                         "with --checkpoint-interval 0?)")
    if resume_step is not None and resume_step not in steps:
        raise UsageError(f"--resume-step {resume_step}: {run_dir / POPULATION_CHECKPOINTS} has the bp steps {steps}")
    cfg = config_from_json(meta["config"])
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), **{k: args[k] for k in ("env_steps", "shard_envs") if k in given})
    cfg.validate()
    train_population(algo, cfg, meta["population"], meta["sweep"], out=sys.stdout, pbt_interval=meta["pbt_interval"],
                     pbt_perturb=meta["pbt_perturb"], resume=True, resume_step=resume_step, devices=devices)
    print(f"run directory: {cfg.run_dir} (members in member-<i>/)")
    return 0
