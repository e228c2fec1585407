"""``emote-jax`` (also ``python -m emote_jax``): command-line entry points.

``emote-jax train`` trains an agent (``--algo``, SAC by default: Pendulum-v1, 15k env steps) and evaluates
the deterministic policy at the end; the recipes and their options are in :mod:`emote_jax.recipes`
(``emote-jax train --algo NAME --help`` lists NAME's). ``eval`` and ``--resume`` take the algorithm from the
run's ``config.json`` (one without ``"algo"`` is SAC).
``emote-jax eval RUN_DIR`` evaluates the trained policy of a run; ``emote-jax checkpoints RUN_DIR`` lists
its checkpoints with their sizes, times and integrity.

Errors come as one line on stderr, ``emote-jax: error: <message>``, and the exit status says what to do
(:data:`EXIT_STATUSES`, also in ``emote-jax --help``). ``--debug`` (before or after the command) or
``EMOTE_JAX_DEBUG=1`` lets the exception through with its traceback instead. Warnings of emote_jax itself
(e.g. a damaged checkpoint passed over on ``--resume``) come as one line ``emote-jax: warning: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from emote_jax.checkpoint import CheckpointInfo, inspect_checkpoints
from emote_jax.cli_errors import (  # re-exported: emote_jax.cli.exit_status, ...
    DEBUG_ENV,
    DEBUG_HINT,
    EXIT_STATUSES,
    PROG,
    UsageError,
    debug_requested,
    error_message,
    exit_status,
    one_line_warnings,
    print_error,
    quiet_library_noise,
)
from emote_jax.cli_resume import resume_args, resume_population, run_dir_of, with_preset
from emote_jax.errors import ConfigError
from emote_jax.population import POPULATION_CONFIG
from emote_jax.recipes import ALGORITHMS, DEFAULT_ALGO, Algorithm, algo_of, get_algorithm
from emote_jax.recipes.common import train_run
from emote_jax.recipes.config import add_run_options

__all__ = ["DEBUG_ENV", "DEBUG_HINT", "EXIT_STATUSES", "PROG", "UsageError", "build_parser", "error_message",
           "exit_status", "main", "run"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a :class:`UsageError`), not usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_debug(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help=f"let errors through with their traceback (also: {DEBUG_ENV}=1)")


def _train_parser(sub: argparse._SubParsersAction, algo: Algorithm) -> None:
    d = algo.config_cls()
    others = ", ".join(f"--algo {n} --help" for n in ALGORITHMS if n != algo.name)
    p = sub.add_parser(
        "train", help=f"train an agent (--algo {DEFAULT_ALGO} by default: {d.env_id}, {d.env_steps} env steps) "
                      "and evaluate it",
        description=f"Train {algo.title} and evaluate its deterministic policy. This lists {algo.title}'s options"
                    + (f"; {others} lists those of the others." if others else "."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_debug(p, argparse.SUPPRESS)
    p.add_argument("--algo", default=algo.name, choices=sorted(ALGORITHMS),
                   help="the algorithm (its options below follow it)")
    if d.PRESETS:
        p.add_argument("--preset", choices=sorted(d.PRESETS), default=None,
                       help="start from a named set of settings (options given here override it): "
                            + "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in vals.items())
                                        for n, vals in d.PRESETS.items()))
    add_run_options(p.add_argument_group("run options (every algorithm)"), d)
    algo.add_options(p.add_argument_group(f"{algo.title} options (--algo {algo.name})"), d)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its newest intact checkpoint, with its config.json "
                        "(options given here that differ from their defaults override it, e.g. a larger --steps). "
                        "A newer checkpoint that fails its integrity check is named in one warning line, passed "
                        "over and renamed <step>.damaged; with none intact: exit status 1")
    p.add_argument("--population", type=int, default=1, metavar="P",
                   help="train P members (seeds --seed .. --seed+P-1) in one vmapped program; needs --env jax:<name>. "
                        "Writes run-dir/member-<i>/ (each a run directory emote-jax eval reads) and population.json")
    p.add_argument("--sweep", default=None, metavar="NAME=V1,V2,...",
                   help="with --population: member i takes value i %% L of the L values of NAME, one of "
                        "lr_q, lr_policy, lr_alpha, gamma, tau, reward_scale, max_alpha, max_grad_norm, initial_alpha")
    p.add_argument("--pbt-interval", type=int, default=0, metavar="N",
                   help="with --population: population-based training; every N bp steps the worst quarter of the "
                        "members take the state of the best quarter and perturb --pbt-perturb by x0.8 or x1.2")
    p.add_argument("--pbt-perturb", default=None, metavar="NAME,...",
                   help="the settings PBT perturbs, of lr_q, lr_policy, lr_alpha, gamma, tau, reward_scale, "
                        "max_grad_norm (default: the --sweep setting, else lr_q,lr_policy)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="with --population: shard the members over the first N of jax.devices() (N must divide P; "
                        "with --shard-envs E, N/E groups of E devices, each member's envs split over its group's E; "
                        "default: the most devices that divide P). May differ on --resume")
    p.add_argument("--resume-step", type=int, default=None, metavar="N",
                   help="with --resume: from exactly the checkpoint of bp step N, or fail (no other is tried; "
                        "a later intact checkpoint is refused, as the resumed run would write among them)")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate the trained policy of a run directory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_debug(p, argparse.SUPPRESS)
    p.add_argument("run_dir", help="a run directory written by `emote-jax train` (config.json, policy/)")
    p.add_argument("--episodes", type=int, default=10, help="deterministic episodes")
    p.add_argument("--seed", type=int, default=None,
                   help="first episode seed (None: the run's seed + 10000, as in the evaluation after training)")
    p.add_argument("--video", dest="video_dir", default=None,
                   help="also film episodes to MP4 files in this directory (needs rgb_array rendering and moviepy)")
    p.add_argument("--video-episodes", type=int, default=1)


def _checkpoints_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoints", help="list the checkpoints of a run directory and check their integrity",
                       description="List RUN_DIR/checkpoints: one row per checkpoint with its bp step, size on disk, "
                                   "modification time and integrity (ok, or what is wrong), and the leftovers next "
                                   "to them (interrupted saves, checkpoints set aside as damaged). Exit status 0 "
                                   "when at least one checkpoint is intact, 1 when none is, 2 when RUN_DIR or "
                                   "RUN_DIR/checkpoints does not exist.")
    _add_debug(p, argparse.SUPPRESS)
    p.add_argument("run_dir", help="a run directory written by `emote-jax train` (its checkpoints/)")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the trained policy of a run directory to ONNX (the onnx extra)",
                       description="Write policy.onnx (the deterministic action, dynamic batch B; inputs named obs or "
                                   "by the Dict observation's keys, output action) and policy.json (inputs, the action's "
                                   "scaling to the env, opset, versions). Needs pip install 'emote-jax[onnx]'.")
    _add_debug(p, argparse.SUPPRESS)
    p.add_argument("run_dir", help="a run directory written by `emote-jax train` (config.json, policy/)")
    p.add_argument("--out", default=None, help="the directory to write to (default: RUN_DIR)")


def build_parser(algo: str = DEFAULT_ALGO) -> argparse.ArgumentParser:
    """The ``emote-jax`` parser, its ``train`` options those of ``algo`` (errors raise :class:`UsageError`)."""
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0], epilog=EXIT_STATUSES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_debug(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, ALGORITHMS.get(algo, ALGORITHMS[DEFAULT_ALGO]))  # an unknown --algo: argparse says so
    _eval_parser(sub)
    _checkpoints_parser(sub)
    _export_parser(sub)
    return parser


def _given_options(argv: Sequence[str]) -> set[str]:
    """The ``train`` settings given on the command line ``argv`` (also those given their default value)."""
    parser = build_parser(_algo_arg(argv))
    train = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["train"]
    for action in train._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _saved_algo(argv: Sequence[str]) -> str | None:
    """For ``train --resume --run-dir DIR`` without ``--algo``: the algorithm of DIR's config.json, if readable."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--run-dir")
    known, _ = pre.parse_known_args(argv)
    if not (known.resume and known.run_dir):
        return None
    try:
        return algo_of(json.loads((Path(known.run_dir) / "config.json").read_text()))
    except (OSError, ValueError):
        return None  # resume_args says what is wrong


def _algo_arg(argv: Sequence[str]) -> str:
    """The ``--algo`` of a ``train`` command line (that of the resumed run, or the default, without one)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo")
    known, _ = pre.parse_known_args(argv)
    if known.algo is not None:
        return known.algo
    saved = _saved_algo(argv)
    return saved if saved in ALGORITHMS else DEFAULT_ALGO


# ---- the commands ---------------------------------------------------------------------------------------


def _train(args: dict[str, Any]) -> int:
    resume, resume_step, given = args.pop("resume"), args.pop("resume_step"), args.pop("given")
    population, sweep = args.pop("population", 1), args.pop("sweep", None)
    pbt_interval, pbt_perturb = args.pop("pbt_interval", 0), args.pop("pbt_perturb", None)
    devices = args.pop("devices", None)
    if resume and args.get("run_dir") and (Path(args["run_dir"]) / POPULATION_CONFIG).is_file():
        return resume_population(args, given, resume_step, devices)
    if devices is not None and population == 1:
        raise UsageError(f"--devices {devices} needs --population P > 1 (it shards the members over devices; one "
                         "run splits its envs over devices with --shard-envs D)")
    if (population != 1 or sweep or pbt_interval) and resume:
        raise UsageError("--population with --resume: resume a population with --resume --run-dir DIR alone (its "
                         "size, sweep and PBT settings are in DIR/population-config.json)")
    if sweep and population == 1:
        raise UsageError("--sweep needs --population P > 1 (the members take its values in turn)")
    if (pbt_interval or pbt_perturb) and population < 2:
        raise UsageError("--pbt-interval needs --population P >= 2 (the worse members copy the better ones)")
    if pbt_perturb and not pbt_interval:
        raise UsageError("--pbt-perturb needs --pbt-interval N (how often PBT exploits)")
    if pbt_interval < 0:
        raise UsageError(f"--pbt-interval {pbt_interval} is not valid: expected N >= 1 bp steps (0: no PBT)")
    if resume_step is not None and not resume:
        raise UsageError("--resume-step needs --resume (and --run-dir): it picks the checkpoint to resume from")
    if resume and args.get("preset"):
        raise UsageError("--preset with --resume: the resumed run keeps the settings in its config.json "
                         "(give the options to change instead)")
    if resume:
        args = resume_args(args, given, resume_step)
    elif args.get("preset"):
        args = with_preset(args, given)
    elif args["run_dir"] is None:
        env_name = args["env_id"].replace(":", "-").replace("/", "-")  # jax:Pendulum-v1, ALE/Pong-v5: one plain name
        args["run_dir"] = f"runs/{args['algo']}-{env_name}-seed{args['seed']}-{time.strftime('%Y%m%d-%H%M%S')}"
    algo = get_algorithm(args["algo"])
    fields = {f.name for f in dataclasses.fields(algo.config_cls)}
    cfg = algo.config_cls(**{k: v for k, v in args.items() if k in fields})
    try:
        cfg.validate()
    except ConfigError:
        raise
    except ValueError as e:  # a setting the config refuses is a setting error, whatever its type
        raise ConfigError(str(e)) from e
    if population != 1:
        from emote_jax.population import train_population

        train_population(algo, cfg, population, sweep, out=sys.stdout, pbt_interval=pbt_interval,
                         pbt_perturb=pbt_perturb, devices=devices)
        print(f"run directory: {cfg.run_dir} (members in member-<i>/)")
        return 0
    train_run(algo, cfg, out=sys.stdout, resume=resume, resume_step=resume_step)  # the sys.stdout of now
    print(f"run directory: {cfg.run_dir}")
    return 0


def _eval(args: dict[str, Any]) -> int:
    from emote_jax.evaluation import evaluate_run

    run_dir = run_dir_of(args["run_dir"], "eval")
    if args["episodes"] < 1 or args["video_episodes"] < 1:
        raise UsageError(f"expected --episodes and --video-episodes >= 1, got {args['episodes']} and "
                         f"{args['video_episodes']}")
    evaluate_run(run_dir, episodes=args["episodes"], seed=args["seed"], video_dir=args["video_dir"],
                 video_episodes=args["video_episodes"])
    return 0


def _export(args: dict[str, Any]) -> int:
    from emote_jax.onnx_export import META_FILE, export_run

    run_dir = run_dir_of(args["run_dir"], "export")
    path = export_run(run_dir, args["out"])
    print(f"wrote {path} and {path.with_name(META_FILE)}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def checkpoint_row(e: CheckpointInfo) -> str:
    """One row of `emote-jax checkpoints`: step, size, modification time, and ok / what is wrong."""
    if e.note is not None:
        check = f"({e.path.name}: {e.note})"
    elif e.problems:
        check = "FAILED: " + "; ".join(e.problems)
    else:
        check = "ok" if e.problems == [] else "not checked"
    modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.modified))
    return f"{e.step:>10}  {_size(e.size_bytes):>10}  {modified}  {check}"


def _checkpoints(args: dict[str, Any]) -> int:
    run_dir = Path(args["run_dir"])
    if not run_dir.is_dir():
        raise UsageError(f"checkpoints: the run directory {run_dir} does not exist")
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise UsageError(f"checkpoints: {run_dir} has no checkpoints/ directory (not a run directory of "
                         "`emote-jax train`, or one trained with --checkpoint-interval 0)")
    entries = inspect_checkpoints(directory)
    print(f"checkpoints in {directory.absolute()}:")
    print(f"{'bp step':>10}  {'size':>10}  {'modified':<19}  integrity")
    for e in entries:
        print(checkpoint_row(e))
    if not any(e.ok for e in entries):
        what = "no checkpoint" if not any(e.note is None for e in entries) else "no intact checkpoint"
        print_error(f"{what} in {directory.absolute()}: nothing to resume from")
        return 1
    return 0


_COMMANDS: dict[str, Callable[[dict[str, Any]], int]] = {"train": _train, "eval": _eval, "checkpoints": _checkpoints,
                                                       "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``emote-jax`` command; the exit status (:data:`EXIT_STATUSES`)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = vars(build_parser(_algo_arg(argv)).parse_args(argv))
        if args["command"] == "train":
            args["given"] = _given_options(argv)
    except UsageError as e:
        print_error(str(e))
        return 2
    debug = debug_requested(args)
    args.pop("debug", None)
    command = args.pop("command")
    try:
        with contextlib.ExitStack() as stack:
            if not debug:
                stack.enter_context(one_line_warnings())
                quiet_library_noise()
            return _COMMANDS[command](args)
    except UsageError as e:
        print_error(str(e))
        return 2
    except KeyboardInterrupt as e:  # a second SIGINT/SIGTERM (TrainingAborted), or one before training began
        print(f"{PROG} {command}: aborted ({e or 'KeyboardInterrupt'})", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (or a traceback with --debug)
        if debug:
            raise
        status = exit_status(e)
        print_error(error_message(e) + (f" {DEBUG_HINT}" if status == 1 else ""))
        return status


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``emote-jax`` program: :func:`main`, then exit with its status.

    Before exiting it moves every live object to the collector's permanent generation
    (``gc.freeze()``): the interpreter's teardown then skips a last collection over the JAX/XLA
    object graph, which took 0.7-1.2 s on the 2-core CPU and made a Ctrl+C'd run linger.
    """
    status = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
