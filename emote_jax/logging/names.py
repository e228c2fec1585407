"""The reference's metric names, for dashboards and metric checks written against Emote.

emote_jax names a metric ``{callback}/{what}`` (``q1/loss``, ``alpha/alpha``); Emote (23.0.0) logs
``loss/{name}_loss``, ``training/q_target``, ``training/alpha_value`` and so on.
``MetricsLogger(names="emote")`` (``emote-jax train --metric-names emote``) writes every tag through
:func:`reference_name`; tags without a counterpart keep their name. A windowed metric ``X/windowed``
becomes ``reference_name(X)/windowed``.
"""

from __future__ import annotations

import re

__all__ = ["METRIC_NAMES", "REFERENCE_RULES", "reference_name"]

#: The choices of ``MetricsLogger(names=...)`` / ``--metric-names``.
METRIC_NAMES = ("emote_jax", "emote")

#: ``(pattern, replacement)``, the first full match wins. Written from the reference's ``log_scalar``
#: calls: ``LossCallback`` (loss, lr, gradient norm), SAC's ``QLoss``/``QTarget``/``PolicyLoss``/
#: ``AlphaLoss``, DQN's, and the trainer's throughput.
REFERENCE_RULES: tuple[tuple[str, str], ...] = (
    (r"q_target/q_target_mean", "training/q_target"),
    (r"q_target/scaled_reward_mean", "training/scaled_reward"),
    (r"q_target/min_next_q_mean", "training/min_next_q_target"),
    (r"q_target/next_logp_mean", "training/next_logp_pi"),
    (r"alpha/alpha_clamped", "training/alpha_value"),
    (r"alpha/entropy", "training/entropy"),
    (r"alpha/target_entropy", "training/target_entropy"),
    (r"policy/q_pi_mean", "policy/q_pi_min"),
    (r"policy/logp_mean", "policy/logp_pi"),
    (r"([^/]+)/q_mean", r"training/\1_prediction"),
    (r"([^/]+)/loss", r"loss/\1_loss"),
    (r"([^/]+)/lr", r"loss/\1_lr"),
    (r"([^/]+)/grad_norm", r"loss/\1_gradient_norm"),
    (r"performance/bp_steps_per_s", "performance/bp_steps_per_sec"),
    (r"performance/bp_samples_per_s", "performance/bp_samples_per_sec"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in REFERENCE_RULES)


def reference_name(tag: str) -> str:
    """The reference's name of the emote_jax metric ``tag`` (``q1/loss`` -> ``loss/q1_loss``), or ``tag``."""
    if tag.endswith("/windowed"):
        return reference_name(tag[: -len("/windowed")]) + "/windowed"
    for pattern, replacement in _COMPILED:
        m = pattern.fullmatch(tag)
        if m:
            return m.expand(replacement)
    return tag
