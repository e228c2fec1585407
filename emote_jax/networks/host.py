"""Policies that act on the host with NumPy, from a host copy of the parameters.

A collector steps its environments one vector step at a time. Calling a jitted policy for every step
costs a device dispatch and a round trip (about 100-200 us on a CPU whose thread pool has just run a
training call, more on an accelerator), which for a small MLP and a few envs is far more than the
arithmetic. A :class:`HostPolicy` instead takes a host copy of the parameters once per set of
parameters (once per compiled training call) and evaluates the network with NumPy, drawing its noise
from the collector's NumPy generator. The collectors accept either kind of policy.

:class:`GaussianHostPolicy` is the NumPy mirror of :class:`emote_jax.networks.sac.GaussianPolicy`;
tests/test_host_policy.py checks it against the Flax forward pass.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import numpy as np

from emote_jax.networks.sac import LOG_STD_MAX, LOG_STD_MIN, MEAN_CLAMP, GaussianPolicy

PyTree = Any


def host_dense(p: Any, n_out: int | None, where: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(W (in, out), b (out,))`` float32 host copies of a Flax Dense layer's ``{"kernel", "bias"}``, or a
    ValueError naming the layer ``name`` (``n_out``: the outputs it must have, None: any)."""
    # copies, not views of the device buffers (a view would keep the trainer from donating them)
    w = np.array(p["kernel"], np.float32, copy=True)
    b = np.array(p["bias"], np.float32, copy=True)
    if w.ndim != 2 or b.shape != (w.shape[1],) or (n_out is not None and w.shape[1] != n_out):
        want = f"(in, {n_out})" if n_out is not None else "(in, out)"
        raise ValueError(f"{where}: expected {name} kernel {want} and bias (out,), got {w.shape} and {b.shape}")
    return w, b


class HostPolicy(abc.ABC):
    """The host-side policy contract of the collectors.

    ``to_host(params)`` runs once for each new set of parameters (the collector compares the params
    object by identity, so once per compiled call); ``act(host_params, obs, rng)`` once per vector step.
    """

    def to_host(self, params: PyTree) -> Any:
        """A host copy of ``params`` (the state slot's ``"params"``) in whatever form :meth:`act` wants.

        Return copies, not views: a NumPy view of a device buffer kept past the next compiled call
        stops the trainer from donating that buffer."""
        return jax.tree.map(lambda x: np.array(x, copy=True), params)

    @abc.abstractmethod
    def act(self, host_params: Any, obs: Any, rng: np.random.Generator) -> np.ndarray:
        """Actions ``(N, *action_shape)`` for observations ``obs`` ``(N, *obs_shape)`` float32 (a dict of
        such arrays for a Dict space), as the collector's actions take them (a Box policy's in ``[-1, 1]``,
        a Discrete one's indices); noise comes from ``rng``."""


class GaussianHostPolicy(HostPolicy):
    """NumPy forward pass of :class:`~emote_jax.networks.sac.GaussianPolicy`.

    ``act`` returns ``tanh(mean + std * eps)`` with ``eps ~ N(0, 1)`` drawn as float32 from the
    collector's generator (or ``tanh(mean)`` with ``deterministic``): the same computation as
    ``sample_action`` / ``mode_action`` on the Flax network, in float32, up to rounding.

    Args:
        policy_net: the Flax ``GaussianPolicy`` whose parameters the collector reads.
        deterministic: act with the mode ``tanh(mean)`` instead of a sample.
    """

    def __init__(self, policy_net: GaussianPolicy, deterministic: bool = False):
        if not isinstance(policy_net, GaussianPolicy):
            raise TypeError(f"GaussianHostPolicy mirrors emote_jax.networks.sac.GaussianPolicy, got {type(policy_net).__name__}")
        self.hidden_dims = tuple(int(h) for h in policy_net.hidden_dims)
        self.action_dim = int(policy_net.action_dim)
        self.deterministic = bool(deterministic)

    def to_host(self, params: PyTree) -> dict[str, Any]:
        """``{"layers": [(W (in, h), b (h,)), ...], "mean": (W, b), "log_std": (W, b)}`` as float32 arrays.

        ``params`` are the Flax variables (``{"params": {...}}``) or the inner ``params`` dict.
        """
        p = params.get("params", params) if isinstance(params, dict) else params
        where = "GaussianHostPolicy.to_host"
        try:
            mlp = p["MLP_0"]
            layers = [self._dense(mlp[f"Dense_{i}"], None, where, f"MLP_0/Dense_{i}") for i in range(len(self.hidden_dims))]
            heads = {k: self._dense(p[k], self.action_dim, where, k) for k in ("mean", "log_std")}
        except (KeyError, TypeError) as e:
            keys = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise ValueError(
                f"{where}: expected GaussianPolicy parameters (MLP_0/Dense_0..{len(self.hidden_dims) - 1}, mean, "
                f"log_std), got {keys}: missing {e}"
            ) from None
        for i, ((w, _), h) in enumerate(zip(layers, self.hidden_dims)):
            if w.shape[1] != h:
                raise ValueError(f"{where}: expected MLP_0/Dense_{i} with {h} outputs, got kernel {w.shape}")
        return {"layers": layers, **heads}

    _dense = staticmethod(host_dense)

    def act(self, host_params: dict[str, Any], obs: Any, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(obs, np.float32)
        if x.ndim != 2 or x.shape[1] != host_params["layers"][0][0].shape[0]:
            raise ValueError(
                f"GaussianHostPolicy.act: expected observations (N, {host_params['layers'][0][0].shape[0]}), "
                f"got shape {x.shape}"
            )
        for w, b in host_params["layers"]:
            x = np.maximum(x @ w + b, 0.0)
        w, b = host_params["mean"]
        mean = np.clip(x @ w + b, -MEAN_CLAMP, MEAN_CLAMP)
        if self.deterministic:
            return np.tanh(mean)
        w, b = host_params["log_std"]
        std = np.exp(np.clip(x @ w + b, LOG_STD_MIN, LOG_STD_MAX))
        eps = rng.standard_normal(mean.shape, dtype=np.float32)
        return np.tanh(mean + std * eps)


class EncodedGaussianHostPolicy(GaussianHostPolicy):
    """NumPy mirror of an :class:`~emote_jax.networks.encoders.EncodedPolicy` whose encoder has no
    parameters (Dict observations of vectors only, the identity encoder): the keys' vectors concatenated
    in the encoder's order (``{key: (N, d_k)}`` -> ``(N, sum d_k)``), then :class:`GaussianHostPolicy`."""

    def __init__(self, policy_net: Any, deterministic: bool = False):
        from emote_jax.networks.encoders import EncodedPolicy

        if not isinstance(policy_net, EncodedPolicy) or policy_net.encoder.has_params:
            raise TypeError("EncodedGaussianHostPolicy mirrors an EncodedPolicy of vector keys with the identity "
                            f"encoder, got {type(policy_net).__name__}")
        super().__init__(policy_net.head, deterministic)
        self.keys = tuple(policy_net.encoder.keys)

    def to_host(self, params: PyTree) -> dict[str, Any]:
        """:meth:`GaussianHostPolicy.to_host` of the ``"head"`` parameters."""
        p = params.get("params", params) if isinstance(params, dict) else params
        if not isinstance(p, dict) or "head" not in p:
            raise ValueError(f"EncodedGaussianHostPolicy.to_host: expected EncodedPolicy parameters with 'head', "
                             f"got {sorted(p) if isinstance(p, dict) else type(p).__name__}")
        return super().to_host(p["head"])

    def act(self, host_params: dict[str, Any], obs: Any, rng: np.random.Generator) -> np.ndarray:
        if not isinstance(obs, dict) or set(self.keys) - set(obs):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"EncodedGaussianHostPolicy.act: expected observations {{{', '.join(self.keys)}}}, got {got}")
        x = np.concatenate([np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1) for k in self.keys], axis=1)
        return super().act(host_params, x, rng)
