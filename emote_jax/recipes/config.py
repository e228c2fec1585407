"""The settings every recipe shares: :class:`RunConfig`, its CLI options, and reading it back from JSON.

An algorithm's config is a dataclass that extends :class:`RunConfig` with its own fields (an ``algo``
field naming it first, then its hyperparameters) and its own checks (:meth:`RunConfig.algo_checks`).
Step counts are env steps (transitions over all sub-envs) unless the name says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from emote_jax.envs.jax_env_spec import is_jax_env_id
from emote_jax.errors import ConfigError
from emote_jax.logging.names import METRIC_NAMES

#: A check of :meth:`RunConfig.validate`: ``(field name, whether it holds, what was expected)``.
Check = tuple[str, bool, str]
#: The values of ``--replay`` (:mod:`emote_jax.memory.samplers`).
REPLAY_KINDS = ("uniform", "prioritized", "coverage")
ROLLOUT_TARGETS = ("n-step", "one-step")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RunConfig:
    """The run settings of every algorithm: env, budget, memory, collection, outputs, checkpoints."""

    env_id: str = "Pendulum-v1"
    env_steps: int = 15_000
    seed: int = 0
    num_envs: int = 1
    shard_envs: int = 0  # > 1: split the envs and the replay buffer over this many devices (a JAX-native env)
    async_envs: bool = False
    threaded: bool = False
    act_on_host: bool = True  # the collector evaluates the policy with NumPy on a host copy of its params
    ray_actors: int = 0  # > 0: collect with this many Ray actor processes (pip install 'emote-jax[ray]')
    ray_address: str | None = None  # join this Ray cluster ("auto", "ray://head:10001"); None: a local Ray
    ray_batch_steps: int = 8  # vector steps per batch a Ray actor reports
    batch_size: int = 256
    rollout_length: int = 1
    # the targets of a window of rollout_length steps: "n-step" (one per window) or "one-step" (T
    # independent one-step targets, the reference's default table)
    rollout_targets: str = "n-step"
    memory_size: int = 1_000_000
    warmup_steps: int = 1_000
    random_warmup: bool = True
    bp_steps_per_env_step: float = 1.0
    steps_per_call: int = 1
    prefetch: bool = False
    replay: str = "uniform"  # how batches are drawn: "uniform", "prioritized" or "coverage" (docs/decisions/0009)
    per_alpha: float = 0.6  # prioritized: P(i) ~ (|TD error| + per_eps)^per_alpha
    per_beta: float = 0.4  # prioritized: importance-weight exponent at the start, annealed to 1 over the run
    per_eps: float = 1e-6
    coverage_alpha: float = 0.5  # coverage: P(episode) ~ length * (times drawn + 1)^-coverage_alpha
    eval_episodes: int = 10
    eval_interval: int = 0  # env steps between evaluations during training (0: only the one at the end)
    log_interval: int = 1_000
    run_dir: str | None = None
    log_metrics: bool = True  # TensorBoard, metrics.csv, episodes.csv, learning_curve.png in run_dir
    metrics_interval: int = 100  # backprop steps between logged scalars
    metric_names: str = "emote_jax"  # "emote": the reference's tags (loss/q1_loss, training/q_target, ...)
    wandb_project: str | None = None  # also log to Weights & Biases (pip install 'emote-jax[wandb]')
    wandb_mode: str | None = None  # e.g. "offline": no account or network needed
    checkpoint_interval: int = 5_000  # backprop steps between checkpoints in run_dir/checkpoints (0: none)
    keep_checkpoints: int = 3  # the last N checkpoints are kept
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    obs_keys: tuple[str, ...] = ()  # the keys of a Dict observation to use (empty: all of them)
    preset: str | None = None  # the named settings this config started from (PRESETS), for the record

    #: Named sets of settings (``--preset NAME``): ``{name: {field: value}}``, applied under explicit options.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Any:
        """The config of preset ``name`` (its values over the defaults), with ``overrides`` on top.

        ``SACConfig.from_preset("emote", env_id="HalfCheetah-v5")``; an unknown name is a ConfigError
        naming ``--preset`` and the choices.
        """
        if name not in cls.PRESETS:
            raise ConfigError(f"--preset {name!r}: no such preset of {cls.__name__}; expected one of "
                              f"{sorted(cls.PRESETS) or '(none)'}", "--preset")
        return cls(**{**cls.PRESETS[name], **overrides, "preset": name})

    def __post_init__(self) -> None:
        # a list from config.json or user code, or one name: the same tuple of keys (configs compare equal)
        self.obs_keys = (self.obs_keys,) if isinstance(self.obs_keys, str) else tuple(self.obs_keys)

    def run_checks(self) -> list[Check]:
        """The checks of the shared settings."""
        return [
            ("env_steps", self.env_steps > 0, "> 0"), ("num_envs", self.num_envs >= 1, ">= 1"),
            ("shard_envs", self.shard_envs >= 0, ">= 0 devices to split the envs over (0 or 1: one device)"),
            ("shard_envs", self.shard_envs <= 1 or is_jax_env_id(self.env_id),
             f"0 or 1 with --env {self.env_id}: only a JAX-native env (--env jax:<name>, brax:<name>, gymnax:<id>) "
             "keeps its envs and replay buffer on the device to split; drop --shard-envs or use a JAX-native env"),
            ("shard_envs", self.shard_envs <= 1 or self.num_envs % self.shard_envs == 0,
             f"a divisor of --num-envs ({self.num_envs}): each device steps as many envs; change --num-envs to a "
             f"multiple of {self.shard_envs} or --shard-envs to a divisor of {self.num_envs}"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("rollout_length", self.rollout_length >= 1, ">= 1"),
            ("memory_size", self.memory_size >= self.batch_size, f">= batch_size ({self.batch_size})"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps < self.env_steps,
             f"< --steps ({self.env_steps}): otherwise the warm-up takes the whole budget and nothing is trained"),
            ("bp_steps_per_env_step", self.bp_steps_per_env_step > 0, "> 0"),
            ("steps_per_call", self.steps_per_call >= 1, ">= 1"), ("eval_episodes", self.eval_episodes >= 0, ">= 0"),
            ("eval_interval", self.eval_interval >= 0, ">= 0 (env steps; 0: evaluate only at the end)"),
            ("log_interval", self.log_interval > 0, "> 0"), ("metrics_interval", self.metrics_interval > 0, "> 0"),
            ("metric_names", self.metric_names in METRIC_NAMES, f"one of {', '.join(METRIC_NAMES)}"),
            ("checkpoint_interval", self.checkpoint_interval >= 0, ">= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("batch_size", self.batch_size % self.rollout_length == 0,
             f"a multiple of rollout_length ({self.rollout_length})"),
            ("replay", self.replay in REPLAY_KINDS, f"one of {', '.join(REPLAY_KINDS)}"),
            ("rollout_targets", self.rollout_targets in ROLLOUT_TARGETS, f"one of {', '.join(ROLLOUT_TARGETS)}"),
            ("per_alpha", _finite(self.per_alpha) and self.per_alpha >= 0, ">= 0"),
            ("per_beta", _finite(self.per_beta) and 0 <= self.per_beta <= 1, "in [0, 1]"),
            ("per_eps", _finite(self.per_eps) and self.per_eps > 0, "> 0"),
            ("coverage_alpha", _finite(self.coverage_alpha) and self.coverage_alpha >= 0, ">= 0"),
            ("ray_actors", self.ray_actors >= 0, ">= 0 (0: collect in this process)"),
            ("ray_batch_steps", self.ray_batch_steps >= 1, ">= 1"),
            ("threaded", not (self.threaded and self.ray_actors), "off with --ray-actors (the actors collect "
             "in their own processes)"),
            ("act_on_host", self.act_on_host or not self.ray_actors,
             "on with --ray-actors: Ray actors act with the NumPy policy; drop --act-on-device"),
            ("obs_keys", all(isinstance(k, str) and k for k in self.obs_keys) and len(set(self.obs_keys)) ==
             len(self.obs_keys), "distinct non-empty key names, e.g. --obs-keys angle,velocity"),
        ]

    def algo_checks(self) -> list[Check]:
        """The checks of the algorithm's own settings (an algorithm's config overrides this)."""
        return []

    def validate(self) -> None:
        """Raise a :class:`~emote_jax.errors.ConfigError` naming the first setting that cannot work."""
        for name, ok, expected in [*self.run_checks(), *self.algo_checks()]:
            if not ok:
                option = cli_option(name)
                raise ConfigError(f"{option} {getattr(self, name)!r} is not valid: expected {expected}", option)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Option names of ``emote-jax train`` that are not ``--`` + the field name with dashes.
_CLI_OPTIONS = {"env_id": "--env", "env_steps": "--steps", "hidden_dims": "--hidden", "act_on_host": "--act-on-device",
                "num_bins": "--bins", "q_hidden_dims": "--q-hidden",
                "random_warmup": "--no-random-warmup", "log_metrics": "--no-log-metrics"}


def int_tuple(text: str) -> tuple[int, ...]:
    """``"256,256"`` -> ``(256, 256)``: layer sizes on the command line."""
    try:
        dims = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 256,256, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,256, got {text!r}")
    return dims


def json_object(text: str) -> dict[str, Any]:
    """``'{"g": 9.81}'`` -> ``{"g": 9.81}``: a JSON object on the command line (``--env-kwargs``)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"g\": 9.81}}', got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"g\": 9.81}}', got {type(value).__name__} {text!r}")
    return value


def str_tuple(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``: names on the command line (``--obs-keys``)."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise argparse.ArgumentTypeError(f"expected comma-separated key names like angle,velocity, got {text!r}")
    return keys


def cli_option(field_name: str) -> str:
    """The ``emote-jax train`` option that sets the config field ``field_name``."""
    return _CLI_OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


def config_from_dict(cls: type[RunConfig], data: dict[str, Any]) -> Any:
    """A ``cls`` from a dict read from ``config.json``.

    JSON turns tuples into lists: tuple-typed fields get tuples back. Keys ``cls`` does not know are
    ignored (a newer run directory), so are missing ones (defaults).
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected config.json to hold a JSON object, got {type(data).__name__}")
    return cls(**{k: v for k, v in with_tuples(cls, data).items() if k in {f.name for f in dataclasses.fields(cls)}})


def with_tuples(cls: type[RunConfig], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the lists of ``cls``'s tuple-typed fields turned back into tuples."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if isinstance(out.get(f.name), list) and any(typing.get_origin(a) is tuple or a is tuple for a in args):
            out[f.name] = tuple(out[f.name])
    return out


def add_run_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, d: RunConfig) -> None:
    """The ``emote-jax train`` options of the :class:`RunConfig` fields, with the defaults of ``d``."""
    p.add_argument("--env", dest="env_id", default=d.env_id, help="gymnasium env id, or a JAX-native env stepped inside the compiled step: jax:Pendulum-v1, "
                   "jax:CartPole-v1, brax:<name> (halfcheetah, hopper, ...; emote-jax[brax]), gymnax:<id> (with "
                   "gymnax installed)")
    p.add_argument("--steps", dest="env_steps", type=int, default=d.env_steps, help="env steps in total")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--shard-envs", type=int, default=d.shard_envs, metavar="D",
                   help="a JAX-native env: split the --num-envs envs and the replay buffer's env axis over the first "
                        "D of jax.devices(), in one compiled program (D must divide --num-envs; 0 or 1: one device). "
                        "With --population: each member's envs over a group of D devices, the members over the groups")
    p.add_argument("--async-envs", action="store_true", help="gymnasium AsyncVectorEnv instead of Sync")
    p.add_argument("--threaded", action="store_true", help="collect on a background thread")
    p.add_argument("--ray-actors", type=int, default=d.ray_actors, metavar="N",
                   help="collect with N Ray actor processes, each with --num-envs envs (needs emote-jax[ray]; "
                        "0: in this process)")
    p.add_argument("--ray-address", default=d.ray_address, metavar="ADDR",
                   help="join a running Ray cluster (auto, or ray://HEAD:10001) instead of starting a local one")
    p.add_argument("--ray-batch-steps", type=int, default=d.ray_batch_steps,
                   help="vector steps per batch a Ray actor collects before reporting (default: %(default)s)")
    p.add_argument("--act-on-device", dest="act_on_host", action="store_false",
                   help="act with the jitted policy instead of its NumPy mirror on the host")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--rollout-length", type=int, default=d.rollout_length,
                   help="transitions per sampled window (T): the n-step length, see --rollout-targets")
    p.add_argument("--rollout-targets", choices=ROLLOUT_TARGETS, default=d.rollout_targets,
                   help="n-step: one n-step target per window; one-step: T independent one-step targets per "
                        "window (the reference's default table) (default: %(default)s)")
    p.add_argument("--memory-size", type=int, default=d.memory_size)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="random-action env steps first")
    p.add_argument("--no-random-warmup", dest="random_warmup", action="store_false",
                   help="the warm-up acts with the (untrained) policy instead of uniform random actions")
    p.add_argument("--env-kwargs", type=json_object, default=d.env_kwargs, metavar="JSON",
                   help='keyword arguments of gymnasium.make, e.g. \'{"g": 9.81}\'')
    p.add_argument("--obs-keys", type=str_tuple, default=d.obs_keys, metavar="KEYS",
                   help="a Dict-observation env: the keys to use, e.g. angle,velocity (default: all)")
    p.add_argument("--bp-steps-per-env-step", type=float, default=d.bp_steps_per_env_step,
                   help="backprop steps per vector step (0.5: two vector steps per backprop step)")
    p.add_argument("--steps-per-call", type=int, default=d.steps_per_call, help="K backprop steps per compiled call")
    p.add_argument("--prefetch", action="store_true", help="sample the next batch on a background thread")
    p.add_argument("--replay", default=d.replay, choices=REPLAY_KINDS,
                   help="how batches are drawn from the memory: uniformly, by TD-error priority, or by episode coverage")
    p.add_argument("--per-alpha", type=float, default=d.per_alpha, help="prioritized replay: priority exponent")
    p.add_argument("--per-beta", type=float, default=d.per_beta,
                   help="prioritized replay: importance-weight exponent at the start (annealed to 1 over the run)")
    p.add_argument("--per-eps", type=float, default=d.per_eps, help="prioritized replay: added to |TD error|")
    p.add_argument("--coverage-alpha", type=float, default=d.coverage_alpha,
                   help="coverage replay: P(episode) ~ length * (times drawn + 1)^-alpha")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--eval-interval", type=int, default=d.eval_interval,
                   help="also evaluate --eval-episodes deterministic episodes every N env steps during training "
                        "(result.json's eval_history; 0: only at the end)")
    p.add_argument("--log-interval", type=int, default=d.log_interval, help="env steps between progress lines")
    p.add_argument("--run-dir", default=None, help="where config.json and result.json go (default runs/<time>)")
    p.add_argument("--no-log-metrics", dest="log_metrics", action="store_false",
                   help="write no TensorBoard logs, metrics.csv or learning curve")
    p.add_argument("--metric-names", choices=METRIC_NAMES, default=d.metric_names,
                   help="emote_jax: q1/loss, ...; emote: the reference's tags (loss/q1_loss, training/q_target, ...) "
                        "for dashboards and checks written against Emote (default: %(default)s)")
    p.add_argument("--metrics-interval", type=int, default=d.metrics_interval,
                   help="backprop steps between logged scalars (TensorBoard, metrics.csv, W&B)")
    p.add_argument("--wandb-project", default=d.wandb_project, help="also log to this W&B project (needs wandb)")
    p.add_argument("--wandb-mode", default=d.wandb_mode, choices=["online", "offline", "disabled"],
                   help="W&B mode; offline needs no account")
    p.add_argument("--checkpoint-interval", type=int, default=d.checkpoint_interval,
                   help="backprop steps between checkpoints in RUN_DIR/checkpoints (0: no checkpoints)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="how many latest checkpoints to keep")
