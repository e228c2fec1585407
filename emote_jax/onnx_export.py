"""ONNX export of a policy: the reference's ``OnnxExporter``, with jax2onnx (the ``onnx`` extra).

:func:`export_policy` traces the algorithm's evaluation action (SAC: ``tanh(mean)`` in [-1, 1]; DQN: the
greedy action index) with the parameters baked in, into ``policy.onnx`` with a dynamic batch axis
``B``: one input per observation (``obs``, or one per key of a Dict observation, named by the key) and
one output ``action``. ``policy.json`` beside it says what a runtime needs: the inputs' names, shapes and
dtypes, the action's meaning and its scaling to the env's action space, the opset and the versions.
:func:`export_run` (``emote-jax export RUN_DIR``) does it for the policy of a run directory;
:class:`OnnxExporter` every N backprop steps and when training ends.

A network jax2onnx cannot convert (a primitive it has no rule for) raises :class:`OnnxExportError`
naming the network and the primitive; nothing is written then. The first export in a process loads
jax2onnx's converters (about 20 s on 2 cores); later ones take well under a second for the recipes'
networks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium
import jax
import numpy as np

from emote_jax.callback import HostCallback
from emote_jax.context import Context, PyTree

ONNX_FILE, META_FILE = "policy.onnx", "policy.json"
#: The ONNX opset of the exports (the reference's is 13; jax2onnx's lowest supported is higher).
OPSET = 17
FORMAT_VERSION = 1

__all__ = ["META_FILE", "ONNX_FILE", "OPSET", "OnnxExportError", "OnnxExporter", "export_policy", "export_run"]


class OnnxExportError(ValueError):
    """A policy that cannot be exported to ONNX (say which network and why)."""


def _jax2onnx() -> Any:
    try:
        import jax2onnx
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs jax2onnx and onnx: pip install 'emote-jax[onnx]' ({e})") from None
    # jax2onnx imports every converter plugin; those of libraries that do not import with this jax (dm_pix)
    # log a traceback each. They are not used here.
    for name in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return jax2onnx


def _obs_inputs(obs_spec: int | Mapping[str, tuple[tuple[int, ...], Any]]) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """``[(name, shape without batch, dtype)]``: ``obs`` of ``(obs_dim,)`` float32, or one per Dict key (sorted)."""
    if isinstance(obs_spec, Mapping):
        return [(k, tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in sorted(obs_spec.items())]
    return [("obs", (int(obs_spec),), np.dtype(np.float32))]


def _action_meta(action_space: gymnasium.Space | None) -> dict[str, Any]:
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return {"kind": "discrete", "dtype": "int32", "n": int(action_space.n), "start": int(action_space.start),
                "to_env": "env_action = action + start"}
    meta: dict[str, Any] = {"kind": "box", "dtype": "float32", "range": [-1.0, 1.0]}
    if isinstance(action_space, gymnasium.spaces.Box):
        meta.update(shape=list(action_space.shape), low=action_space.low.astype(float).tolist(),
                    high=action_space.high.astype(float).tolist(),
                    to_env="env_action = low + (action + 1) / 2 * (high - low)")
    return meta


def export_policy(act: Callable[[PyTree, Any, jax.Array], jax.Array], params: PyTree,
                  obs_spec: int | Mapping[str, tuple[tuple[int, ...], Any]], directory: str | os.PathLike, *,
                  network_name: str = "policy", action_space: gymnasium.Space | None = None,
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory/policy.onnx`` and ``directory/policy.json``; returns the ONNX file's path.

    Args:
        act: the deterministic action, ``(params, obs (B, ...) or {key: (B, ...)}, key) -> actions (B, ...)``
            (an ``Algorithm.eval_policy(net)``; the key is not used by a deterministic policy).
        params: the network's parameters (baked into the graph as constants).
        obs_spec: ``obs_dim``, or ``{key: (shape, dtype)}`` of a Dict observation.
        directory: where to write (created if missing); the files are replaced whole.
        network_name: named in errors.
        action_space: the env's action space, for the scaling in ``policy.json``.
        metadata: more entries for ``policy.json`` (env id, algorithm, bp step, ...).
    """
    j2o = _jax2onnx()
    import onnx

    inputs = _obs_inputs(obs_spec)
    names = [n for n, _, _ in inputs]
    params = jax.device_get(params)
    key = jax.random.key(0)

    def fn(*obs: jax.Array) -> jax.Array:
        o = dict(zip(names, obs)) if isinstance(obs_spec, Mapping) else obs[0]
        return act(params, o, key)

    scope = jax.export.SymbolicScope()  # one batch symbol B shared by every input
    specs = [jax.ShapeDtypeStruct(jax.export.symbolic_shape(", ".join(["B", *map(str, shape)]), scope=scope), dtype)
             for _, shape, dtype in inputs]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # jax2onnx's Conv converter prints debug lines
            model = j2o.to_onnx(fn, specs, model_name=network_name, opset=OPSET, input_names=names,
                                output_names=["action"])
    except Exception as e:  # jax2onnx raises NotImplementedError / ValueError / KeyError for what it cannot convert
        raise OnnxExportError(f"cannot export {network_name} to ONNX: jax2onnx {type(e).__name__}: {e}") from e
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = model.graph.output[0].type.tensor_type
    meta = {
        "format_version": FORMAT_VERSION, "opset": OPSET,
        "inputs": [{"name": n, "shape": ["B", *shape], "dtype": d.name} for n, shape, d in inputs],
        "output": {"name": "action", "shape": [d.dim_param or d.dim_value for d in out.shape.dim],
                   **_action_meta(action_space)},
        "versions": {"emote_jax": _version("emote-jax"), "jax": jax.__version__, "jax2onnx": _version("jax2onnx"),
                     "onnx": onnx.__version__, "python": sys.version.split()[0]},
        **dict(metadata or {}),
    }
    path = directory / ONNX_FILE
    _write(path, model.SerializeToString())
    _write(directory / META_FILE, json.dumps(meta, indent=2).encode())
    return path


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Export the trained policy of an ``emote-jax train`` run directory (``config.json``, ``policy/``) to
    ``out_dir`` (default: the run directory); returns the ONNX file's path."""
    from emote_jax.evaluation import _algo, load_policy
    from emote_jax.recipes.envs import single_env

    loaded = load_policy(run_dir)
    algo, cfg = _algo(loaded), loaded.config
    env = single_env(cfg)
    try:
        obs_spec, _ = algo.check_spaces(env.observation_space, env.action_space, cfg.env_id)
        action_space = env.action_space
    finally:
        env.close()
    return export_policy(algo.eval_policy(loaded.policy_net), loaded.params, obs_spec,
                         out_dir if out_dir is not None else run_dir, network_name=type(loaded.policy_net).__name__,
                         action_space=action_space,
                         metadata={"algorithm": algo.name, "env_id": cfg.env_id, "run_dir": str(Path(run_dir).resolve())})


class OnnxExporter(HostCallback):
    """Export the policy to ``directory`` every ``interval`` backprop steps and when training ends (the
    reference's ``OnnxExporter``; here the files are replaced, and ``policy.json`` holds the bp step).

    Args:
        act: the deterministic action (``Algorithm.eval_policy(net)``), as in :func:`export_policy`.
        params_slot: the slot whose ``"params"`` are the policy's (SAC: ``"policy"``).
        obs_spec: ``obs_dim`` or ``{key: (shape, dtype)}``.
        directory: where ``policy.onnx`` and ``policy.json`` go.
        interval: backprop steps between exports (0: only at the end).
        action_space: the env's, for the scaling in ``policy.json``.
    """

    def __init__(self, act: Callable[..., jax.Array], params_slot: str, obs_spec: Any, directory: str | os.PathLike,
                 interval: int = 10_000, *, action_space: gymnasium.Space | None = None, name: str = "onnx_exporter"):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"{name}: expected interval an int >= 0 (0: only at the end), got {interval!r}")
        super().__init__(interval or None, name=name)
        _jax2onnx()  # a missing extra stops here, not at the first export
        self.act, self.params_slot, self.obs_spec = act, params_slot, obs_spec
        self.directory, self.action_space = Path(directory), action_space
        self.exported_steps: list[int] = []

    def _export(self, ctx: Context, bp_step: int) -> None:
        export_policy(self.act, ctx.slot(self.params_slot)["params"], self.obs_spec, self.directory,
                      network_name=self.params_slot, action_space=self.action_space, metadata={"bp_step": bp_step})
        self.exported_steps.append(bp_step)

    def end_cycle(self, ctx: Context) -> None:
        self._export(ctx, int(ctx.bp_step))

    def end_training(self, ctx: Context) -> None:
        last = int(ctx.bp_step) - 1  # the last step run
        if last >= 1 and (not self.exported_steps or self.exported_steps[-1] != last):
            self._export(ctx, last)
