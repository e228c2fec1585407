"""Networks: the functional contract, adapters, and the reference's SAC networks."""

from emote_jax.networks.contract import Network, NNXNetwork, as_network

__all__ = ["Network", "NNXNetwork", "as_network"]
