"""The warm-up never deadlocks: a memory that ``warmup_steps`` left short of a batch is filled, a wait on a
background collector reports progress and ends on the first SIGINT, and a memory that cannot fill says so."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import pytest
from gymnasium.vector import SyncVectorEnv

from emote_jax import HostCallback, Trainer
from emote_jax.collectors import GymCollector, ThreadedGymCollector, memory_spec
from emote_jax.context import Context
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable


def random_policy(params, obs, key):
    return jax.random.uniform(key, (obs.shape[0], 1), minval=-1.0, maxval=1.0)


def ctx_with_policy() -> Context:
    return Context(state={"policy": {"params": {"w": jnp.zeros(())}}}, batch=None, key=jax.random.key(0),
                   metrics={}, bp_step=1)


def htm_pieces(batch: int, warmup: int, threaded: bool = False, n_envs: int = 2):
    env = SyncVectorEnv([lambda: HitTheMiddle() for _ in range(n_envs)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(10_000, obs_spec, action_shape)
    loader = MemoryLoader(table, batch)
    cls = ThreadedGymCollector if threaded else GymCollector
    kw = {"max_env_steps_per_bp_step": 1.0} if threaded else {}
    collector = cls(env, random_policy, MemoryProxy(table), warmup_steps=warmup, random_warmup=True, **kw)
    return env, table, loader, collector


def test_an_in_loop_collector_fills_a_memory_that_the_warmup_left_short_of_a_batch():
    env, table, loader, collector = htm_pieces(batch=100, warmup=5)
    out = io.StringIO()
    warmup = MemoryWarmup(loader, collector=collector, out=out, timeout=30)  # a broken fill fails, not hangs
    ctx = ctx_with_policy()
    collector.begin_training(ctx)
    assert table.size() < 100  # 5 vector steps of 2 envs
    warmup.begin_training(ctx)
    assert loader.is_ready() and table.size() < 100 + 2  # filled to one batch, not beyond one vector step
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "one batch needs 100 transitions" in lines[0] and "random actions" in lines[0]
    warmup.begin_training(ctx)  # ready: nothing more is collected or said
    assert len(out.getvalue().splitlines()) == 1
    collector.end_training(ctx)
    env.close()


def test_a_fill_that_cannot_fill_the_memory_stops_with_a_message():
    class DropEverything:
        def add(self, observations, actions):
            pass

    env = SyncVectorEnv([lambda: HitTheMiddle()])
    collector = GymCollector(env, random_policy, DropEverything(), random_warmup=True)
    ctx = ctx_with_policy()
    collector.begin_training(ctx)
    with pytest.raises(RuntimeError, match="after 50 extra warm-up vector steps the memory still cannot give a batch"):
        collector.fill(ctx, lambda: False, max_vector_steps=50)
    assert collector.vector_steps == 50
    env.close()


class SlowHTM(HitTheMiddle):
    """HitTheMiddle that takes ``delay`` seconds per step (a slow game)."""

    def __init__(self, delay: float = 0.02):
        super().__init__()
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


def test_a_wait_on_a_background_collector_reports_progress_and_its_thread_fills_past_the_cap():
    env = SyncVectorEnv([lambda: SlowHTM(0.01)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, obs_spec, action_shape)
    loader = MemoryLoader(table, 40)
    collector = ThreadedGymCollector(env, random_policy, MemoryProxy(table), random_warmup=True,
                                     max_env_steps_per_bp_step=1.0)  # without the fill it would stop after 1 step
    out = io.StringIO()
    warmup = MemoryWarmup(loader, collector=collector, out=out, report_interval=0.1, timeout=60)
    ctx = ctx_with_policy()
    collector.begin_training(ctx)
    try:
        warmup.begin_training(ctx)
        assert loader.is_ready()
        text = out.getvalue()
        assert "keeps collecting" in text and "waiting for the memory:" in text and "of 40 transitions" in text
        steps = collector._vector_steps_in_training
        assert steps <= 1  # fill steps do not count against the cap: training starts with its budget
    finally:
        collector.end_training(ctx)
        env.close()


def test_a_failed_background_collector_ends_the_wait_with_its_error():
    class Boom(HitTheMiddle):
        def step(self, action):
            raise OSError("the game crashed")

    env = SyncVectorEnv([lambda: Boom()])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, obs_spec, action_shape)
    collector = ThreadedGymCollector(env, random_policy, MemoryProxy(table), random_warmup=True)
    warmup = MemoryWarmup(MemoryLoader(table, 40), collector=collector, out=io.StringIO(), timeout=30)
    ctx = ctx_with_policy()
    collector.begin_training(ctx)
    try:
        with pytest.raises(OSError, match="the game crashed"):
            warmup.begin_training(ctx)
    finally:
        collector._error = None  # reported already
        collector.end_training(ctx)
        env.close()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_a_first_sigint_ends_a_warmup_wait_with_no_filler_cleanly():
    """Nothing fills this memory: the wait used to ignore the trainer's first Ctrl+C."""
    table = ReplayTable(100, {"obs": ((2,), "float32")}, (1,))
    loader = MemoryLoader(table, 10)

    class Never(HostCallback):
        pass

    trainer = Trainer([Never(), MemoryWarmup(loader, out=io.StringIO())], loader)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        timer.start()
        trainer.train()
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert trainer.interrupted_by == "SIGINT" and trainer.bp_step == 1


SIGINT_SCRIPT = textwrap.dedent("""
    import sys, time
    import gymnasium
    from emote_jax.envs import HitTheMiddle
    from emote_jax import cli

    class SlowHTM(HitTheMiddle):
        def step(self, action):
            time.sleep(0.05)
            return super().step(action)

    gymnasium.register(id="SlowHTM-v0", entry_point=SlowHTM)
    cli.run(["train", "--env", "SlowHTM-v0", "--threaded", "--warmup-steps", "0", "--batch-size", "512",
                       "--hidden", "8,8", "--steps", "5000", "--no-log-metrics", "--run-dir", sys.argv[1]])
""")


def test_sigint_during_a_threaded_warmup_exits_0_within_a_second(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # wait until the run is in its warm-up wait
            if "keeps collecting" in line:
                break
        else:
            pytest.fail(f"the run ended before its warm-up: exit {proc.wait()}")
        time.sleep(0.5)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=1.0)  # the acceptance bar: within a second
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stdout.read()
    assert rc == 0, rest
    assert "interrupted by SIGINT at bp step 0" in rest


def test_a_second_train_on_the_same_run_does_not_take_the_warmup_again():
    """Continuing a run with a second ``trainer.train()`` (a notebook's habit) goes on training: no second
    block of warm-up steps (it took 300 random vector steps before, for 10 bp steps)."""
    from emote_jax.recipes.sac import SACConfig, build_sac

    run = build_sac(SACConfig(env_id="HitTheMiddle-v0", hidden_dims=(8,), batch_size=16, warmup_steps=300,
                              eval_episodes=0, log_metrics=False, checkpoint_interval=0), out=None)
    t, col = run.trainer, run.collector
    try:
        t.train(lambda: t.bp_step > 10)
        assert col.vector_steps >= 300
        v0, b0 = col.vector_steps, t.bp_step
        t.train(lambda: t.bp_step > 20)
        assert t.bp_step - b0 == 10
        assert col.vector_steps - v0 <= 12  # one vector step per bp step (and a reset), not 300 more
    finally:
        run.env.close()
