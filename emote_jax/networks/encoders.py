"""Encoders of Dict observations, and SAC's networks with an encoder in front of their trunks.

A Dict observation is ``{key: (B, *shape)}``; each key is encoded on its own and the features are
concatenated in sorted key order, then fed to the usual trunks (:mod:`emote_jax.networks.sac`):

==========  ===================  ===============================================================
kind        the key's space      encoder
==========  ===================  ===============================================================
vector      Box, rank 1, float   the identity (``vector_dims=()``, default) or a ReLU MLP
image       Box, rank 3, uint8   x / 255 (float32, inside the compiled step), then NatureCNN-lite:
            (H, W, C) channels   Conv(16, 3x3, stride 2) - ReLU - Conv(32, 3x3, stride 2) - ReLU -
            last                 flatten - Dense(image_features) - ReLU
==========  ===================  ===============================================================

Images stay uint8 on the host and in the memory; the scaling to [0, 1] is the encoder's first op.
docs/decisions/0010-dict-observations.md says why.

Each network has its own encoder by default. With ``SACHParams(shared_encoder=True)`` the two critics
share one (the reference's ``SharedEncoderActionValueNet``: one encoder module in both Q nets): each
critic's parameters keep the usual ``EncodedQ`` layout, and :class:`~emote_jax.algorithms.sac.QLoss`
writes its updated encoder into its peer's parameters (:func:`with_encoder`), so the two copies are always
equal and each critic's update sees the other's (docs/decisions/0016-shared-critic-encoder.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from emote_jax.networks.sac import MLP, GaussianPolicy

PyTree = Any
#: ``{key: (unbatched shape, dtype)}`` of a Dict observation: what SAC's networks are built for.
ObsSpec = Mapping[str, tuple[tuple[int, ...], Any]]


def obs_kind(shape: Sequence[int], dtype: Any) -> str | None:
    """``"vector"`` (rank 1), ``"image"`` (rank 3, uint8, channels last), or None (neither: unsupported)."""
    if len(shape) == 1 and shape[0] >= 1:
        return "vector"
    if len(shape) == 3 and np.dtype(dtype) == np.uint8 and min(shape) >= 1:
        return "image"
    return None


class ImageEncoder(nn.Module):
    """uint8 images (B, H, W, C) -> features (B, features): scaled to [0, 1] (the float32 cast and the
    division are the first ops of the compiled step), two stride-2 3x3 convs, a Dense."""

    channels: Sequence[int] = (16, 32)
    features: int = 64
    scale: bool = True  # x / 255 first (False: the input is already in [0, 1])

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32) / 255.0 if self.scale else x.astype(jnp.float32)
        for c in self.channels:
            x = nn.relu(nn.Conv(c, kernel_size=(3, 3), strides=(2, 2), padding="SAME",
                                kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.features, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2.0)))(x))


class DictEncoder(nn.Module):
    """``{key: (B, *shape)}`` -> features (B, F), per-key encoders concatenated in ``keys`` order.

    Attributes:
        keys: the observation keys, in the order their features are concatenated.
        kinds: each key's kind (:func:`obs_kind`): ``"vector"`` or ``"image"``.
        vector_dims: the vector keys' MLP (``()``: the identity, the float32 vector itself).
        image_channels, image_features: the image keys' conv channels and output features.
    """

    keys: Sequence[str]
    kinds: Sequence[str]
    vector_dims: Sequence[int] = ()
    image_channels: Sequence[int] = (16, 32)
    image_features: int = 64

    @nn.compact
    def __call__(self, obs: Mapping[str, jax.Array]) -> jax.Array:
        feats = []
        for key, kind in zip(self.keys, self.kinds):
            x = obs[key]
            if kind == "image":
                feats.append(ImageEncoder(tuple(self.image_channels), self.image_features, name=f"image_{key}")(x))
            elif self.vector_dims:
                feats.append(MLP(tuple(self.vector_dims), name=f"vector_{key}")(x.astype(jnp.float32)))
            else:
                feats.append(x.astype(jnp.float32).reshape(x.shape[0], -1))
        return jnp.concatenate(feats, axis=-1)

    @property
    def has_params(self) -> bool:
        """Whether the encoder has parameters (images, or an MLP for the vectors)."""
        return bool(self.vector_dims) or "image" in self.kinds


class EncodedPolicy(nn.Module):
    """SAC's policy on a Dict observation: ``head(encoder(obs))`` -> (mean (B, A), std (B, A)).

    Parameters: ``{"encoder": ..., "head": <GaussianPolicy's>}``.
    """

    encoder: DictEncoder
    head: GaussianPolicy

    def __call__(self, obs: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return self.head(self.encoder(obs))


class EncodedQ(nn.Module):
    """A Q network on a Dict observation: ``q(encoder(obs), action)`` -> (B, 1). Parameters: ``{"encoder", "q"}``."""

    encoder: DictEncoder
    q: nn.Module

    def __call__(self, obs: Mapping[str, jax.Array], action: jax.Array) -> jax.Array:
        return self.q(self.encoder(obs), action)

    def logits(self, obs: Mapping[str, jax.Array], action: jax.Array) -> jax.Array:
        """The histogram logits of an HL-Gauss ``q`` (:class:`~emote_jax.algorithms.hl_gauss.HLGaussQNet`)."""
        return self.q.logits(self.encoder(obs), action)

    @property
    def support(self) -> Any:
        """The bins of an HL-Gauss ``q``."""
        return self.q.support


def dict_encoder(spec: ObsSpec, vector_dims: Sequence[int] = ()) -> DictEncoder:
    """The :class:`DictEncoder` of an observation spec (keys sorted), or a ValueError naming a key that is
    neither a vector nor a uint8 image."""
    keys = tuple(sorted(spec))
    kinds = []
    for k in keys:
        shape, dtype = spec[k]
        kind = obs_kind(shape, dtype)
        if kind is None:
            raise ValueError(f"observation key {k!r}: expected a rank-1 vector or a rank-3 uint8 image (H, W, C), "
                             f"got shape {tuple(shape)} dtype {np.dtype(dtype)}")
        kinds.append(kind)
    return DictEncoder(keys, tuple(kinds), tuple(vector_dims))


def encoded_policy(spec: ObsSpec, policy: GaussianPolicy, vector_dims: Sequence[int] = ()) -> EncodedPolicy:
    """``policy`` with an encoder of ``spec`` in front of it."""
    return EncodedPolicy(dict_encoder(spec, vector_dims), policy)


def encoded_sac_networks(spec: ObsSpec, policy: GaussianPolicy, q: nn.Module,
                         vector_dims: Sequence[int] = ()) -> tuple[EncodedPolicy, EncodedQ]:
    """``(policy, q)`` with an encoder of ``spec`` each in front of them (the Q nets share the module; each Q
    loss has its own parameters, equal encoders among them when they share one, see the module docstring)."""
    return encoded_policy(spec, policy, vector_dims), EncodedQ(dict_encoder(spec, vector_dims), q)


def encoder_params(variables: PyTree) -> PyTree:
    """The encoder's parameters inside an :class:`EncodedQ`'s (or :class:`EncodedPolicy`'s) variables
    ``{"params": {"encoder": ..., "q" | "head": ...}}``; a ValueError if there is no encoder."""
    try:
        return variables["params"]["encoder"]
    except (KeyError, TypeError):
        top = sorted(variables["params"]) if isinstance(variables, Mapping) and "params" in variables else None
        raise ValueError(f"expected the variables of a network with an encoder ({{'params': {{'encoder': ...}}}}), "
                         f"got params with keys {top}") from None


def with_encoder(variables: PyTree, encoder: PyTree) -> PyTree:
    """``variables`` (an :class:`EncodedQ`'s) with their encoder's parameters replaced by ``encoder`` (the
    same tree structure, shapes and dtypes; otherwise a ValueError naming both)."""
    old = encoder_params(variables)
    same = jax.tree.structure(old) == jax.tree.structure(encoder) and all(
        jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(encoder)))
    if not same:
        raise ValueError("a shared encoder must have the same parameters in every network that shares it: got "
                         f"{jax.tree.map(jnp.shape, encoder)}, expected {jax.tree.map(jnp.shape, old)}")
    return {**variables, "params": {**variables["params"], "encoder": encoder}}


def example_obs(obs: int | ObsSpec, batch: int = 1) -> jax.Array | dict[str, jax.Array]:
    """Zeros to initialise a network with: ``(batch, obs_dim)`` float32, or ``{key: (batch, *shape) dtype}``."""
    if isinstance(obs, Mapping):
        return {k: jnp.zeros((batch, *shape), dtype) for k, (shape, dtype) in obs.items()}
    return jnp.zeros((batch, int(obs)), jnp.float32)
