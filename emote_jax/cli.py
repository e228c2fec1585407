"""``emote-jax`` (also ``python -m emote_jax``): command-line entry points.

``emote-jax train`` trains SAC with the default configuration (Pendulum-v1, 15k env steps) and evaluates
the deterministic policy at the end. Every :class:`~emote_jax.train.SACConfig` field has an option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from emote_jax.train import SACConfig, train_sac


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 256,256, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,256, got {text!r}")
    return dims


def _train_parser(sub: argparse._SubParsersAction) -> None:
    d = SACConfig()
    p = sub.add_parser("train", help="train SAC (default: Pendulum-v1, 15k env steps) and evaluate it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", dest="env_id", default=d.env_id, help="gymnasium env id (Box actions)")
    p.add_argument("--steps", dest="env_steps", type=int, default=d.env_steps, help="env steps in total")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--async-envs", action="store_true", help="gymnasium AsyncVectorEnv instead of Sync")
    p.add_argument("--threaded", action="store_true", help="collect on a background thread")
    p.add_argument("--act-on-device", dest="act_on_host", action="store_false",
                   help="act with the jitted policy instead of its NumPy mirror on the host")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--rollout-length", type=int, default=d.rollout_length, help="n-step length")
    p.add_argument("--hidden", dest="hidden_dims", type=_int_tuple, default=d.hidden_dims, help="e.g. 256,256")
    p.add_argument("--lr-q", type=float, default=d.lr_q)
    p.add_argument("--lr-policy", type=float, default=d.lr_policy)
    p.add_argument("--lr-alpha", type=float, default=d.lr_alpha)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--reward-scale", type=float, default=d.reward_scale)
    p.add_argument("--max-alpha", type=float, default=d.max_alpha)
    p.add_argument("--memory-size", type=int, default=d.memory_size)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="random-action env steps first")
    p.add_argument("--bp-steps-per-env-step", type=float, default=d.bp_steps_per_env_step,
                   help="backprop steps per vector step (0.5: two vector steps per backprop step)")
    p.add_argument("--steps-per-call", type=int, default=d.steps_per_call, help="K backprop steps per compiled call")
    p.add_argument("--prefetch", action="store_true", help="sample the next batch on a background thread")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--log-interval", type=int, default=d.log_interval, help="env steps between progress lines")
    p.add_argument("--run-dir", default=None, help="where config.json and result.json go (default runs/<time>)")
    p.add_argument("--no-log-metrics", dest="log_metrics", action="store_false",
                   help="write no TensorBoard logs, metrics.csv or learning curve")
    p.add_argument("--metrics-interval", type=int, default=d.metrics_interval,
                   help="backprop steps between logged scalars (TensorBoard, metrics.csv, W&B)")
    p.add_argument("--wandb-project", default=d.wandb_project, help="also log to this W&B project (needs wandb)")
    p.add_argument("--wandb-mode", default=d.wandb_mode, choices=["online", "offline", "disabled"],
                   help="W&B mode; offline needs no account")
    p.add_argument("--checkpoint-interval", type=int, default=d.checkpoint_interval,
                   help="backprop steps between checkpoints in RUN_DIR/checkpoints (0: no checkpoints)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="how many latest checkpoints to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint, with its config.json (options "
                        "given here that differ from their defaults override it, e.g. a larger --steps)")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate the trained policy of a run directory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by `emote-jax train` (config.json, policy/)")
    p.add_argument("--episodes", type=int, default=10, help="deterministic episodes")
    p.add_argument("--seed", type=int, default=None,
                   help="first episode seed (None: the run's seed + 10000, as in the evaluation after training)")
    p.add_argument("--video", dest="video_dir", default=None,
                   help="also film episodes to MP4 files in this directory (needs rgb_array rendering and moviepy)")
    p.add_argument("--video-episodes", type=int, default=1)


def _resume_args(parser: argparse.ArgumentParser, args: dict) -> dict:
    """The saved config.json of ``--run-dir``, overridden by the options that differ from their defaults."""
    from emote_jax.checkpoint import latest_checkpoint_step

    if args["run_dir"] is None:
        parser.error("--resume needs --run-dir: the run directory to continue")
    run_dir = Path(args["run_dir"])
    config = run_dir / "config.json"
    if not config.is_file():
        parser.error(f"--resume: {config} does not exist; is {run_dir} a run directory of `emote-jax train`?")
    if latest_checkpoint_step(run_dir / "checkpoints") is None:
        parser.error(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    saved = json.loads(config.read_text())
    for k in ("hidden_dims", "q_hidden_dims"):  # JSON turned the tuples into lists
        if isinstance(saved.get(k), list):
            saved[k] = tuple(saved[k])
    defaults = vars(parser.parse_args(["train"]))
    return {**saved, **{k: v for k, v in args.items() if v != defaults.get(k)}, "run_dir": str(run_dir)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emote-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "train":
        resume = args.pop("resume")
        if resume:
            args = _resume_args(parser, args)
        elif args["run_dir"] is None:
            args["run_dir"] = f"runs/sac-{args['env_id']}-seed{args['seed']}-{time.strftime('%Y%m%d-%H%M%S')}"
        fields = {f.name for f in dataclasses.fields(SACConfig)}
        cfg = SACConfig(**{k: v for k, v in args.items() if k in fields})
        try:
            cfg.validate()
        except ValueError as e:
            parser.error(str(e))
        try:
            train_sac(cfg, resume=resume)
        except KeyboardInterrupt as e:  # a second SIGINT/SIGTERM (TrainingAborted), or one before training began
            print(f"emote-jax train: aborted ({e or 'KeyboardInterrupt'})", file=sys.stderr)
            return 130
        print(f"run directory: {cfg.run_dir}")
        return 0
    if command == "eval":
        from emote_jax.evaluation import evaluate_run

        if args["episodes"] < 1 or args["video_episodes"] < 1:
            parser.error(f"expected --episodes and --video-episodes >= 1, got {args['episodes']} and "
                         f"{args['video_episodes']}")
        try:
            evaluate_run(args["run_dir"], episodes=args["episodes"], seed=args["seed"], video_dir=args["video_dir"],
                         video_episodes=args["video_episodes"])
        except (FileNotFoundError, ValueError, TypeError) as e:  # not a run directory, or one that does not fit
            print(f"emote-jax eval: {e}", file=sys.stderr)
            return 1
        return 0
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
