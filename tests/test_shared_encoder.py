"""SAC's critics on one shared encoder (the reference's SharedEncoderActionValueNet): one step against a hand
computation, the copies kept equal over compiled calls, the policy's own encoder, errors, and resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax import Context, Trainer
from emote_jax.algorithms.sac import make_sac_callbacks
from emote_jax.errors import ConfigError
from emote_jax.networks.encoders import encoder_params, with_encoder
from emote_jax.recipes.sac import SACConfig, build_sac

from test_checkpoint_resume import RestartAt, dump

SPEC = {"img": ((8, 8, 1), np.uint8), "v": ((2,), np.float32)}
SMALL = dict(hidden_dims=(8, 8), shared_encoder=True, max_grad_norm=10.0)


def _batch(rng: np.random.Generator, b: int = 8) -> dict:
    def obs(n):
        return {"img": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
                "v": rng.normal(size=(n, 2)).astype(np.float32)}

    return {"default": {"observation": obs(b), "next_observation": obs(b),
                        "actions": rng.uniform(-1, 1, (b, 2)).astype(np.float32),
                        "rewards": rng.normal(size=(b, 1)).astype(np.float32),
                        "masks": np.ones((b, 1), np.float32)}, "batch_size": b}


def _leaves_equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_critic_moves_the_shared_encoder_in_turn_with_its_own_adam_state():
    """Q1's step: Adam over (encoder, head1) -> (E', H1'); Q2's step from E': (E', H2) -> (E'', H2'); both
    critics hold E'' after the step. Done by hand with optax.adam on fresh states."""
    cbs, _ = make_sac_callbacks(obs_dim=SPEC, n_actions=2, key=jax.random.key(0), **SMALL)
    q1, q2, q_target = cbs[0], cbs[1], cbs[4]
    state = {cb.name: cb.init_state(jax.random.key(1)) for cb in cbs}
    batch = jax.tree.map(jnp.asarray, _batch(np.random.default_rng(0)))
    ctx = Context(state=state, batch=batch, key=jax.random.key(2), metrics={}, bp_step=1)
    ctx = q_target.begin_batch(ctx)
    target = ctx.batch["default"]["q_target"]
    after = q2.backward(q1.backward(ctx)).state

    obs, act = batch["default"]["observation"], batch["default"]["actions"]

    def by_hand(params):
        loss = lambda p: jnp.mean((q1.network.apply(p, obs, act) - target) ** 2)  # noqa: E731
        tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(3e-4))
        updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
        return optax.apply_updates(params, updates)

    e0 = encoder_params(state["q1"]["params"])
    assert _leaves_equal(e0, encoder_params(state["q2"]["params"]))  # one encoder at the start
    new1 = by_hand(state["q1"]["params"])
    new2 = by_hand(with_encoder(state["q2"]["params"], encoder_params(new1)))
    for name, want in (("q1", with_encoder(new1, encoder_params(new2))), ("q2", new2)):
        for got, exp in zip(jax.tree.leaves(after[name]["params"]), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-7, err_msg=name)
    # Q2 trained from E' (Q1's update), not from E: the two give different encoders
    from_e0 = by_hand(state["q2"]["params"])
    assert not np.allclose(jax.tree.leaves(encoder_params(from_e0))[0], jax.tree.leaves(encoder_params(new2))[0])


def _differ(a, b) -> bool:
    """Some leaf of ``a`` differs from ``b``'s (same structure)."""
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _train(shared: bool, calls: int = 4, k: int = 3):
    cbs, _ = make_sac_callbacks(obs_dim=SPEC, n_actions=2, key=jax.random.key(0), **{**SMALL, "shared_encoder": shared})
    rng = np.random.default_rng(1)
    t = Trainer(cbs, (_batch(rng) for _ in range(calls * k)), steps_per_call=k)
    before = jax.tree.map(np.asarray, t.ctx.state)
    return t, before, t.train()


def test_the_critics_keep_one_encoder_over_compiled_calls_and_the_policy_keeps_its_own():
    t, before, ctx = _train(shared=True)
    s = ctx.state
    e1, e2 = encoder_params(s["q1"]["params"]), encoder_params(s["q2"]["params"])
    assert _leaves_equal(e1, e2)
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(e1), jax.tree.leaves(encoder_params(before["q1"]["params"]))))
    heads = [s[n]["params"]["params"]["q"] for n in ("q1", "q2")]
    assert _differ(heads[0], heads[1])  # two heads
    # the targets follow one encoder too; the policy's encoder is its own
    t1, t2 = s["q_target"]["target_params"]
    assert _leaves_equal(encoder_params(t1), encoder_params(t2))
    policy_encoder = s["policy"]["params"]["params"]["encoder"]
    assert jax.tree.structure(policy_encoder) == jax.tree.structure(e1) and _differ(policy_encoder, e1)
    assert t.num_compilations == 1


def test_without_sharing_each_critic_has_its_own_encoder():
    _, before, ctx = _train(shared=False, calls=1)
    for state in (before, ctx.state):
        assert _differ(encoder_params(state["q1"]["params"]), encoder_params(state["q2"]["params"]))


@pytest.mark.parametrize("obs_dim, kw, match", [
    (3, {"shared_encoder": True}, "apply to Dict observations"),
    (3, {"encoder_dims": (8,)}, "apply to Dict observations"),
    ({"v": ((2,), np.float32)}, {"shared_encoder": True}, "no parameters to share.*encoder_dims"),
])
def test_a_shared_encoder_without_an_encoder_is_refused(obs_dim, kw, match):
    with pytest.raises(ValueError, match=match):
        make_sac_callbacks(obs_dim=obs_dim, n_actions=1, key=jax.random.key(0), hidden_dims=(8,), **kw)


@pytest.mark.parametrize("env_id, kw, option", [
    ("Pendulum-v1", {"shared_encoder": True}, "--shared-encoder"),
    ("Pendulum-v1", {"encoder_dims": (8,)}, "--encoder-dims"),
    ("DictPendulum-v0", {"shared_encoder": True}, "--shared-encoder"),
])
def test_the_recipe_names_the_option_before_any_env_step(env_id, kw, option):
    with pytest.raises(ConfigError, match=option) as e:
        build_sac(SACConfig(env_id=env_id, hidden_dims=(8,), eval_episodes=0, log_metrics=False, **kw), out=None)
    assert e.value.option == option


CFG = dict(env_id="DictPendulum-v0", encoder_dims=(8,), shared_encoder=True, hidden_dims=(8, 8), batch_size=16,
           memory_size=300, warmup_steps=40, steps_per_call=2, seed=3, env_steps=10**6, log_metrics=False,
           eval_episodes=0, checkpoint_interval=20)


def test_a_shared_encoder_run_on_vector_keys_resumes_exactly(tmp_path):
    """--encoder-dims gives the vector keys MLP encoders; the critics share theirs; a resume from bp 20 equals
    the straight run to bp 40 bitwise."""
    straight = build_sac(SACConfig(**CFG), out=None)
    trainer = Trainer([*straight.trainer.callbacks, RestartAt(straight.collector, 20, CFG["seed"])], straight.loader,
                      steps_per_call=CFG["steps_per_call"], seed=CFG["seed"])
    ctx = trainer.train(lambda: trainer.bp_step > 40)
    straight.env.close()
    expected = dump(straight, ctx)
    assert _leaves_equal(encoder_params(ctx.state["q1"]["params"]), encoder_params(ctx.state["q2"]["params"]))
    assert set(encoder_params(ctx.state["q1"]["params"])) == {"vector_angle", "vector_velocity"}

    cfg = SACConfig(**{**CFG, "run_dir": str(tmp_path / "run")})
    first = build_sac(cfg, out=None)
    first.trainer.train(lambda: first.trainer.bp_step > 20)
    first.env.close()
    resumed = build_sac(cfg, out=None, resume=True)
    ctx2 = resumed.trainer.train(lambda: resumed.trainer.bp_step > 40)
    resumed.env.close()
    got = dump(resumed, ctx2)
    assert set(got) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
