"""The lean K = 1 path: packed metrics, the host hook schedule, validating a transition once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Callback, HostCallback, Trainer
from emote_jax.faults import NonFiniteError


def batches(n: int | None = None):
    rng = np.random.default_rng(0)
    i = 0
    while n is None or i < n:
        i += 1
        yield {"x": rng.normal(size=(4, 2)).astype(np.float32)}


class Mixed(Callback):
    """Logs metrics of several dtypes and shapes (set with replace: ctx.log takes scalars only)."""

    def __init__(self, flag_at: int | None = None, vector_flag_at: int | None = None):
        super().__init__(name="mixed")
        self.flag_at, self.vector_flag_at = flag_at, vector_flag_at

    def backward(self, ctx):
        m = dict(ctx.metrics)
        m["f"] = ctx.batch["x"].sum()
        m["i"] = ctx.bp_step * 2
        m["b"] = ctx.bp_step % 2 == 0
        m["vec"] = jnp.arange(3, dtype=jnp.float32) + ctx.bp_step
        m["mat"] = jnp.ones((2, 2), jnp.int32) * ctx.bp_step
        flag = 0.0 if self.flag_at is None else jnp.where(ctx.bp_step == self.flag_at, 1.0, 0.0)
        m["mixed/nonfinite"] = jnp.asarray(flag, jnp.float32)
        vflag = jnp.zeros((2,), jnp.float32)
        if self.vector_flag_at is not None:
            vflag = jnp.where(ctx.bp_step == self.vector_flag_at, 1.0, vflag)
        m["vector/nonfinite"] = vflag
        return ctx.replace(metrics=m)


@pytest.mark.parametrize("k", [1, 3])
def test_metrics_of_any_dtype_and_shape_come_back_as_before(k):
    t = Trainer([Mixed()], batches(3 * k), steps_per_call=k)
    t.train()
    m = t.last_metrics
    first = 2 * k + 1  # the last call's first step
    steps = np.arange(first, first + k)
    assert list(m) == sorted(["f", "i", "b", "vec", "mat", "mixed/nonfinite", "vector/nonfinite"])  # as a pytree dict
    assert m["f"].shape == (k,) and m["f"].dtype == np.float32
    np.testing.assert_array_equal(m["i"], 2 * steps)
    assert m["i"].dtype == np.int32
    np.testing.assert_array_equal(m["b"], steps % 2 == 0)
    assert m["b"].dtype == np.bool_
    np.testing.assert_array_equal(m["vec"], np.arange(3)[None] + steps[:, None])
    np.testing.assert_array_equal(m["mat"], np.ones((k, 2, 2)) * steps[:, None, None])
    assert m["mat"].dtype == np.int32


@pytest.mark.parametrize("k", [1, 3])
def test_a_flag_raises_naming_the_callback_and_step(k):
    t = Trainer([Mixed(flag_at=5)], batches(), steps_per_call=k)
    with pytest.raises(NonFiniteError, match=r"'mixed'.*bp_step 5") as e:
        t.train()
    assert e.value.callback == "mixed" and e.value.bp_step == 5  # the flagged step itself, at any K
    assert t.last_metrics["mixed/nonfinite"].max() == 1.0  # end_training hooks saw the flagged call


def test_a_non_scalar_flag_is_checked_too():
    t = Trainer([Mixed(vector_flag_at=3)], batches(), steps_per_call=1)
    with pytest.raises(NonFiniteError, match=r"'vector'"):
        t.train()


def test_metrics_are_read_only_host_arrays():
    t = Trainer([Mixed()], batches(2), steps_per_call=1)
    t.train()
    for v in t.last_metrics.values():
        assert isinstance(v, np.ndarray) and not v.flags.writeable


class Acc(Callback):
    def __init__(self):
        super().__init__(name="acc")

    def init_state(self, key):
        return {"w": jnp.zeros((), jnp.float32)}

    def backward(self, ctx):
        return ctx.with_slot("acc", {"w": ctx.slot("acc")["w"] + 1.0})


class Setter(HostCallback):
    """At ``at`` it replaces the acc slot (and optionally jumps the trainer's step); records what it saw."""

    def __init__(self, name, order, at=None, jump_to=None, cycle=1):
        super().__init__(name=name, order=order, cycle=cycle)
        self.at, self.jump_to, self.seen = at, jump_to, []

    def end_cycle(self, ctx):
        self.seen.append((ctx.bp_step, float(ctx.state["acc"]["w"]), ctx.bp_samples))
        if ctx.bp_step == self.at:
            state = {**ctx.state, "acc": {"w": jnp.asarray(100.0, jnp.float32)}}
            if self.jump_to is not None:
                state["trainer"] = {"bp_step": jnp.asarray(self.jump_to, jnp.int32)}
            return ctx.replace(state=state)
        return None


@pytest.mark.parametrize("k", [1, 2])
def test_a_host_hook_that_returns_a_context_is_seen_by_the_next_hook_of_the_same_step(k):
    first, second = Setter("first", 1, at=2), Setter("second", 2, cycle=2)
    t = Trainer([Acc(), first, second], batches(4), steps_per_call=k)
    t.train()
    # `second` runs at steps 2 and 4 only, after `first`: at step 2 it sees the slot `first` replaced
    assert [s[0] for s in second.seen] == [2, 4]
    assert second.seen[0][1] == 100.0
    assert first.seen[-1][1] == 102.0  # and the compiled calls after it continued from there
    assert [s[2] for s in first.seen] == [4 * (k * ((s[0] - 1) // k) + k) for s in first.seen]  # bp_samples per call


def test_a_host_hook_that_moves_the_step_counter_is_followed():
    jump = Setter("jump", 1, at=2, jump_to=10)
    t = Trainer([Acc(), jump], batches(4), steps_per_call=1)
    t.train()
    assert [s[0] for s in jump.seen] == [1, 2, 10, 11]
    assert t.bp_step == 12


# ---- memory: validated once, at the proxy ------------------------------------------------------------
from emote_jax.memory import AgentObservation, EpisodeState, MemoryProxy, ReplayTable  # noqa: E402


def _ob(state, x, reward=None):
    return AgentObservation(state, {"obs": np.full((2,), x, np.float32)}, reward)


@pytest.mark.parametrize("capacity", [5, 100])  # 5: the ring wraps while agents interleave
def test_the_proxy_writes_what_add_transitions_would(capacity):
    via_proxy = ReplayTable(capacity, {"obs": ((2,), np.float32)}, (1,))
    direct = ReplayTable(capacity, {"obs": ((2,), np.float32)}, (1,))
    proxy = MemoryProxy(via_proxy)
    proxy.add({0: _ob(EpisodeState.INITIAL, 0.0), 1: _ob(EpisodeState.INITIAL, 10.0)}, {0: [0.5], 1: [1.5]})
    eps = {0: direct.new_episode_id(), 1: direct.new_episode_id()}
    for t in range(1, 5):
        end = t == 4
        obs = {0: _ob(EpisodeState.TERMINAL if end else EpisodeState.RUNNING, t, reward=t),
               1: _ob(EpisodeState.INTERRUPTED if end else EpisodeState.RUNNING, 10.0 + t, reward=-t)}
        proxy.add(obs if t % 2 else {1: obs[1], 0: obs[0]}, {} if end else {0: [0.5 + t], 1: [1.5 + t]})
        order = [0, 1] if t % 2 else [1, 0]
        direct.add_transitions(
            agent_ids=order, episode_ids=[eps[a] for a in order], steps=[t - 1, t - 1],
            observation={"obs": np.array([[t - 1] * 2 if a == 0 else [10.0 + t - 1] * 2 for a in order], np.float32)},
            actions=[[0.5 + t - 1] if a == 0 else [1.5 + t - 1] for a in order],
            rewards=[t if a == 0 else -t for a in order],
            next_observation={"obs": np.array([[t] * 2 if a == 0 else [10.0 + t] * 2 for a in order], np.float32)},
            terminated=np.array([end and a == 0 for a in order]), truncated=np.array([end and a == 1 for a in order]))
    a, b = via_proxy.state_dict(), direct.state_dict()
    for name in a["columns"]:
        np.testing.assert_array_equal(a["columns"][name], b["columns"][name], err_msg=name)
    assert (a["size"], a["head"]) == (b["size"], b["head"])
    np.testing.assert_array_equal(a["tips"], b["tips"])


def test_a_reward_that_overflows_the_float32_column_is_refused_and_nothing_is_written():
    table = ReplayTable(10, {"obs": ((2,), np.float32)}, (1,))
    proxy = MemoryProxy(table)
    proxy.add({0: _ob(EpisodeState.INITIAL, 0.0)}, {0: [0.0]})
    with pytest.raises(ValueError, match=r"agent 0: expected a reward finite as a float32, got 1e\+39"):
        proxy.add({0: _ob(EpisodeState.RUNNING, 1.0, reward=1e39)}, {0: [0.0]})
    assert table.size() == 0 and proxy.running_agents() == [0]
    proxy.add({0: _ob(EpisodeState.RUNNING, 1.0, reward=1.0)}, {0: [0.0]})  # the episode goes on
    assert table.size() == 1
