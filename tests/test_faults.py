"""A loop that survives faults: signals, non-finite values, a failing env, a process killed mid-save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import CallbackError, HostCallback, LossCallback, Trainer
from emote_jax.algorithms import make_sac_callbacks
from emote_jax.checkpoint import CheckpointLoader, Checkpointer, checkpoint_steps
from emote_jax.collectors import GymCollector, memory_spec
from emote_jax.envs import HitTheMiddle
from emote_jax.faults import NonFiniteError, TrainingAborted
from emote_jax.memory import MemoryExporter, MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable, import_memory
from emote_jax.train import policy_act

REPO = Path(__file__).resolve().parents[1]


def batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}


def fit(name: str, nan_at: int | None = None) -> LossCallback:
    """A tiny regression loss; with ``nan_at`` its loss is NaN at that backprop step."""
    params = {"w": jnp.full((3,), 0.1, jnp.float32)}

    def loss(p, ctx):
        value = jnp.mean((ctx.batch["x"] @ p["w"] - ctx.batch["y"]) ** 2)
        return value if nan_at is None else jnp.where(ctx.bp_step == nan_at, jnp.nan, value)

    return LossCallback(name=name, params=params, loss_fn=loss, lr=0.01)


class Probe(HostCallback):
    """Records its end_training calls; optionally sends signals to this process at given points."""

    def __init__(self, name="probe", order=3000, signal_at=None, signal_in_end_training=None):
        super().__init__(name=name, cycle=1, order=order)
        self.ended, self.signal_at, self.signal_in_end_training = 0, signal_at or {}, signal_in_end_training

    def end_cycle(self, ctx):
        if ctx.bp_step in self.signal_at:
            os.kill(os.getpid(), self.signal_at[ctx.bp_step])

    def end_training(self, ctx):
        if self.signal_in_end_training is not None:
            os.kill(os.getpid(), self.signal_in_end_training)
        self.ended += 1


class Stacked:
    """K batches stacked on a leading axis per item (a loader with ``steps_per_call``)."""

    def __init__(self, k: int):
        self.steps_per_call, self._it = k, batches()

    def __iter__(self):
        while True:
            items = [next(self._it) for _ in range(self.steps_per_call)]
            yield {key: np.stack([b[key] for b in items]) for key in items[0]}


@pytest.mark.parametrize("k", [1, 4])
def test_a_nan_in_a_loss_stops_training_naming_the_callback_and_the_step(tmp_path, k):
    cbs = [fit("steady"), fit("flaky", nan_at=7)]
    ck = Checkpointer(cbs, tmp_path / "ck", 3)
    probe = Probe()
    t = Trainer([*cbs, ck, probe], Stacked(k) if k > 1 else batches(), seed=0)
    with pytest.warns(RuntimeWarning, match=r"no final checkpoint: the last step flagged \['flaky/nonfinite'\]"):
        with pytest.raises(NonFiniteError) as err:
            t.train()
    assert (err.value.callback, err.value.bp_step) == ("flaky", 7)
    assert "callback 'flaky' produced a non-finite loss, gradient or parameter at bp_step 7" in str(err.value)
    assert probe.ended == 1  # end_training ran
    good = [3, 6] if k == 1 else [4]  # with K=4 the call ending at 4 crossed 3; the call with step 7 failed
    assert checkpoint_steps(tmp_path / "ck") == good
    cbs2 = [fit("steady"), fit("flaky")]
    ctx = CheckpointLoader(cbs2, tmp_path / "ck").load(Trainer(cbs2, batches())._host_ctx())
    assert int(ctx.state["trainer"]["bp_step"]) == good[-1] + 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ctx.state))


def test_the_checkpointer_refuses_to_save_a_non_finite_state_even_without_a_flag(tmp_path):
    class Poison(HostCallback):  # corrupts a parameter behind the loss callbacks' back
        def __init__(self):
            super().__init__(name="poison", cycle=1, order=100)

        def end_cycle(self, ctx):
            if ctx.bp_step == 4:
                slot = ctx.state["a"]
                return ctx.with_slot("a", {**slot, "params": {"w": slot["params"]["w"].at[0].set(jnp.inf)}})

    cbs = [fit("a")]
    t = Trainer([*cbs, Poison(), Checkpointer(cbs, tmp_path / "ck", 2)], batches(), seed=0)
    with pytest.warns(RuntimeWarning, match="no final checkpoint"):
        with pytest.raises(CallbackError) as err:
            t.train(lambda: t.bp_step > 8)
    assert isinstance(err.value.__cause__, NonFiniteError)
    assert "a non-finite value in its state (a/network/w) at bp_step 4" in str(err.value)
    assert checkpoint_steps(tmp_path / "ck") == [2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_train_ends_cleanly_with_a_final_checkpoint(tmp_path, sig):
    cbs = [fit("a")]
    probe = Probe(signal_at={5: sig})
    t = Trainer([*cbs, Checkpointer(cbs, tmp_path / "ck", 100), probe], batches(), seed=0)
    previous = signal.getsignal(sig)
    ctx = t.train(lambda: t.bp_step > 1000)
    assert t.interrupted_by == sig.name
    assert t.bp_step == 6 and probe.ended == 1  # stopped after step 5, end_training ran
    assert checkpoint_steps(tmp_path / "ck") == [5]
    loaded = CheckpointLoader([fit("a")], tmp_path / "ck").load(Trainer([fit("a")], batches())._host_ctx())
    np.testing.assert_array_equal(loaded.state["a"]["params"]["w"], ctx.state["a"]["params"]["w"])
    assert signal.getsignal(sig) is previous  # the handler was put back


def test_a_second_signal_aborts_at_once_without_the_rest_of_end_training(tmp_path):
    cbs = [fit("a")]
    first = Probe("first", order=10, signal_at={3: signal.SIGINT}, signal_in_end_training=signal.SIGINT)
    later = Probe("later", order=3000)
    ck = Checkpointer(cbs, tmp_path / "ck", 100)
    t = Trainer([*cbs, first, ck, later], batches(), seed=0)
    previous = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, default_int_handler in a terminal
    with pytest.raises(TrainingAborted, match="SIGINT received after SIGINT"):
        t.train()
    assert first.ended == 0 and later.ended == 0  # aborted inside the first end_training
    assert checkpoint_steps(tmp_path / "ck") == []  # the Checkpointer's end_training never ran
    assert signal.getsignal(signal.SIGINT) is previous  # the handler was put back even on abort


class EnvCrash(RuntimeError):
    pass


class CrashAt(gymnasium.Wrapper):
    """Raises EnvCrash on the ``at``-th step of this sub-env."""

    def __init__(self, env, at: int):
        super().__init__(env)
        self.at, self.steps = at, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at:
            raise EnvCrash(f"the simulator crashed at its step {self.at}")
        return self.env.step(action)


def test_an_env_that_raises_stops_training_with_its_error_and_the_memory_export_is_complete(tmp_path):
    env = gymnasium.vector.SyncVectorEnv([lambda: HitTheMiddle(), lambda: CrashAt(HitTheMiddle(), at=90)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(500, obs_spec, action_shape, seed=0)
    loader = MemoryLoader(table, 16)
    callbacks, policy_net = make_sac_callbacks(obs_dim=2, n_actions=1, key=jax.random.key(0), hidden_dims=(8, 8))
    collector = GymCollector(env, policy_act(policy_net), MemoryProxy(table), warmup_steps=40, seed=0)
    exporter = MemoryExporter(table, tmp_path / "mem")
    t = Trainer([*callbacks, collector, MemoryWarmup(loader), exporter], loader, seed=0)
    with pytest.raises(CallbackError) as err:
        t.train(lambda: t.bp_step > 200)
    env.close()
    assert err.value.callback == "collector" and err.value.hook == "end_cycle"
    # its 90th env.step is vector step 92 (two autoreset steps do not call env.step): 40 warm-up + bp step 52
    assert isinstance(err.value.__cause__, EnvCrash) and err.value.bp_step == 52
    assert "the simulator crashed at its step 90" in str(err.value)
    # end_training: the collector closed every running episode, then the exporter wrote the whole table
    (export,) = exporter.exports()
    assert export.name == "step_000000052"
    restored = ReplayTable(500, obs_spec, action_shape, seed=1)
    import_memory(restored, export)
    a, b = table.state_dict(), restored.state_dict()
    assert a["size"] == b["size"] == collector.env_steps > 150  # every transition collected up to the crash
    for k in a["columns"]:
        np.testing.assert_array_equal(a["columns"][k], b["columns"][k], err_msg=k)
    assert len(b["tips"]) == 0  # no episode left open
    assert b["columns"]["truncated"].sum() == 2  # both interrupted episodes are marked as such


KILLED_DURING_SAVE = """
import sys, time
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
import emote_jax.checkpoint as ckpt
import emote_jax.checkpoint_format as ckpt_format  # where the memory handler looks up write_table_state
from emote_jax import HostCallback, LossCallback, Trainer
from emote_jax.memory import ReplayTable

out = Path(sys.argv[1])
real_write, calls = ckpt_format.write_table_state, []
def write_or_hang(state, directory):
    real_write(state, directory)
    calls.append(directory)
    if len(calls) == 2:
        (out / "saving").write_text(str(directory))
        time.sleep(600)  # killed here, in the middle of the second save
ckpt_format.write_table_state = write_or_hang

def batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}

class Dump(HostCallback):
    def __init__(self):
        super().__init__(name="dump", cycle=5, order=2100)
    def end_cycle(self, ctx):
        np.save(out / f"w_{ctx.bp_step}.npy", np.asarray(ctx.state["a"]["params"]["w"]))

cb = LossCallback(name="a", params={"w": jnp.full((3,), 0.1)}, lr=0.01,
                  loss_fn=lambda p, ctx: jnp.mean((ctx.batch["x"] @ p["w"] - ctx.batch["y"]) ** 2))
table = ReplayTable(10, {"obs": ((2,), np.float32)}, (1,))
t = Trainer([cb, ckpt.Checkpointer([cb], out / "ck", 5, memory=table), Dump()], batches(), seed=0)
t.train(lambda: t.bp_step > 100)
"""


def test_a_process_killed_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DURING_SAVE, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "saving").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    half_written = (tmp_path / "saving").read_text()
    assert "10.orbax-checkpoint-tmp" in half_written and Path(half_written).exists()  # the unfinished save
    assert checkpoint_steps(tmp_path / "ck") == [5]
    cb = fit("a")
    table = ReplayTable(10, {"obs": ((2,), np.float32)}, (1,))
    ctx = CheckpointLoader([cb], tmp_path / "ck", memory=table).load(Trainer([cb], batches())._host_ctx())
    np.testing.assert_array_equal(ctx.state["a"]["params"]["w"], np.load(tmp_path / "w_5.npy"))
    # the next Checkpointer on that directory removes the leftover of the interrupted save
    Checkpointer([cb], tmp_path / "ck", 5).manager()  # (in the background)
    deadline = time.monotonic() + 60
    while any("tmp" in p.name for p in (tmp_path / "ck").iterdir()):
        assert time.monotonic() < deadline, "the leftover was not removed"
        time.sleep(0.05)
    assert checkpoint_steps(tmp_path / "ck") == [5]


def test_sigint_to_the_train_command_exits_cleanly_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "emote_jax", "train", "--env", "HitTheMiddle-v0", "--num-envs", "2",
            "--hidden", "8,8", "--batch-size", "32", "--warmup-steps", "64", "--eval-episodes", "1",
            "--memory-size", "5000", "--no-log-metrics", "--run-dir", str(run_dir)]
    with open(tmp_path / "out1.txt", "w") as out, open(tmp_path / "err1.txt", "w") as err:
        proc = subprocess.Popen([*base, "--steps", "10000000", "--checkpoint-interval", "50"], cwd=REPO,
                                stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 180
            while not checkpoint_steps(run_dir / "checkpoints"):  # training is under way
                assert proc.poll() is None, (tmp_path / "err1.txt").read_text()
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout, stderr = (tmp_path / "out1.txt").read_text(), (tmp_path / "err1.txt").read_text()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "SIGINT received" in stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["interrupted_by"] == "SIGINT" and result["eval_returns"] == []
    assert f"interrupted by SIGINT at bp step {result['bp_steps']}" in stdout
    steps = checkpoint_steps(run_dir / "checkpoints")
    assert steps[-1] == result["bp_steps"]  # the final checkpoint is the last step trained

    more = result["env_steps"] + 100
    proc2 = subprocess.run([*base, "--resume", "--steps", str(more)], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode == 0, proc2.stderr
    assert f"resuming from the checkpoint of bp step {steps[-1]}" in proc2.stdout
    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["interrupted_by"] is None and len(resumed["eval_returns"]) == 1
    assert resumed["env_steps"] >= more and resumed["bp_steps"] > result["bp_steps"]
    assert json.loads((run_dir / "config.json").read_text())["env_steps"] == more
