"""Analytic FLOPs of one SAC update: the matrix products it needs, counted as ``2*M*K*N`` each.

Networks (as ``make_sac_callbacks`` and the reference build them): ReLU trunks of hidden sizes
``h = (h1, ..., hL)``; the Q net maps ``concat(obs, action)`` (``d = o + a`` inputs) through the trunk
to 1 output; the policy maps ``o`` inputs through the trunk to ``2a`` outputs (mean and log-std
heads, counted as one ``h_L x 2a`` product). ``B`` is the batch size.

For a dense layer ``y = x W`` with ``x: (B, n_in)``, ``W: (n_in, n_out)``:

* forward: ``(B, n_in) @ (n_in, n_out)`` -> ``2 B n_in n_out``
* weight gradient: ``x^T (n_in, B) @ dy (B, n_out)`` -> ``2 B n_in n_out``
* input gradient: ``dy (B, n_out) @ W^T (n_out, n_in)`` -> ``2 B n_in n_out``; not needed for the
  first layer when the network input is data (it is needed when gradients flow into the input,
  as they do from Q into the policy's action).

One SAC update (``QTarget.begin_batch``, then Q1, Q2, policy and alpha backward passes):

==========================  ===========================================================================
Q target                    policy forward at next_obs + 2 target-Q forwards (no gradients)
Q1 loss, Q2 loss (each)     Q forward + weight grads + input grads of layers 2..L+1
policy loss                 policy forward + 2 Q forwards at (obs, a~pi) + 2 Q input-gradient passes
                            (all layers: the gradient reaches the action) + policy weight grads +
                            policy input grads of layers 2..L+1
alpha loss                  with ``alpha_logp="updated"`` (the reference's and the default) a policy
                            forward (no gradients); with ``"policy"`` none: it reads the policy loss's
                            logp
==========================  ===========================================================================

Not counted: the Q nets' weight gradients in the policy loss (the policy's loss does not need them;
PyTorch computes them anyway because the Q parameters require grad; JAX does not), element-wise
work (activations, the squashed-Gaussian log-prob, Adam, Polyak averaging, clipping), all of which is
``O(parameters + B*h)`` against the products' ``O(B*h^2)``.
"""

from __future__ import annotations

Gemm = tuple[int, int, int]  # (M, K, N): (M, K) @ (K, N)


def _layers(n_in: int, hidden: tuple[int, ...], n_out: int) -> list[tuple[int, int]]:
    dims = [n_in, *hidden, n_out]
    return list(zip(dims[:-1], dims[1:]))


def _forward(b: int, layers: list[tuple[int, int]]) -> list[Gemm]:
    return [(b, i, o) for i, o in layers]


def _weight_grads(b: int, layers: list[tuple[int, int]]) -> list[Gemm]:
    return [(i, b, o) for i, o in layers]


def _input_grads(b: int, layers: list[tuple[int, int]], first: bool) -> list[Gemm]:
    return [(b, o, i) for i, o in (layers if first else layers[1:])]


def sac_update_gemms(obs_dim: int, n_actions: int, batch: int = 256, hidden: tuple[int, ...] = (256, 256),
                     alpha_logp: str = "updated") -> list[Gemm]:
    """Every matrix product of one SAC update, in execution order (see the module docstring)."""
    b, hidden = batch, tuple(hidden)
    q = _layers(obs_dim + n_actions, hidden, 1)
    pi = _layers(obs_dim, hidden, 2 * n_actions)
    out: list[Gemm] = []
    out += _forward(b, pi) + _forward(b, q) * 2  # Q target
    for _ in range(2):  # Q1, Q2
        out += _forward(b, q) + _weight_grads(b, q) + _input_grads(b, q, first=False)
    out += _forward(b, pi) + _forward(b, q) * 2  # policy loss forward
    out += _input_grads(b, q, first=True) * 2 + _weight_grads(b, pi) + _input_grads(b, pi, first=False)
    if alpha_logp == "updated":
        out += _forward(b, pi)  # alpha loss
    return out


def gemm_flops(gemms: list[Gemm]) -> int:
    return sum(2 * m * k * n for m, k, n in gemms)


def sac_update_flops(obs_dim: int, n_actions: int, batch: int = 256, hidden: tuple[int, ...] = (256, 256),
                     alpha_logp: str = "updated") -> int:
    """Analytic FLOPs of one SAC update (matrix products only)."""
    return gemm_flops(sac_update_gemms(obs_dim, n_actions, batch, hidden, alpha_logp))


if __name__ == "__main__":
    for name, o, a in (("pendulum", 3, 1), ("halfcheetah", 17, 6)):
        for src in ("policy", "updated"):
            g = sac_update_gemms(o, a, alpha_logp=src)
            print(f"{name} (alpha_logp={src}): {len(g)} products, "
                  f"{sac_update_flops(o, a, alpha_logp=src) / 1e6:.1f} MFLOP per update")
