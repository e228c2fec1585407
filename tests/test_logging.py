"""Loggers: device metrics (K per compiled call) and host sources reach TensorBoard, CSV and the terminal
with the right values at the right steps; read back from the event files without TensorFlow."""

from __future__ import annotations

import csv
import io
import math
from collections import deque

import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Callback, HostCallback, Trainer
from emote_jax.logging import (
    CSVLogger,
    EpisodeMetrics,
    MetricsLogger,
    SystemMetrics,
    TensorboardLogger,
    TerminalLogger,
    ThroughputMetrics,
    Window,
    read_histograms,
    read_scalars,
)
from emote_jax.logging.writers import MetricWriter


class StepValue(Callback):
    """Logs ``value = bp_step`` every step and ``sparse = 10 * bp_step`` from a cycle-3 end_cycle hook."""

    def init_state(self, key):
        return {"params": {"w": jnp.arange(6.0).reshape(2, 3)}}

    def backward(self, ctx):
        return ctx.log(**{"s/value": ctx.bp_step.astype(jnp.float32)})


class Sparse(Callback):
    def end_cycle(self, ctx):
        return ctx.log(**{"s/sparse": 10.0 * ctx.bp_step.astype(jnp.float32)})


def loader(n_calls: int, k: int):
    for _ in range(n_calls):
        yield {"x": np.zeros((k, 4, 1), np.float32)}


class StackedLoader:
    def __init__(self, n_calls: int, k: int):
        self.n_calls, self.steps_per_call = n_calls, k

    def __iter__(self):
        return loader(self.n_calls, self.steps_per_call)


class Recorder(MetricWriter):
    def __init__(self):
        self.scalars: dict[int, dict[str, float]] = {}
        self.hists: dict[int, dict[str, np.ndarray]] = {}
        self.images: dict[int, dict[str, np.ndarray]] = {}
        self.videos: list = []
        self.opened = self.closed = 0

    def open(self, start_step=1):
        self.opened += 1

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)

    def write_histograms(self, step, histograms):
        self.hists.setdefault(step, {}).update(histograms)

    def write_images(self, step, images):
        self.images.setdefault(step, {}).update(images)

    def write_video(self, step, tag, frames, fps):
        self.videos.append((step, tag, frames, fps))

    def close(self):
        self.closed += 1


def run(loggers, n_calls=30, k=4):
    trainer = Trainer([StepValue(name="s"), Sparse(name="sparse", cycle=3), *loggers], StackedLoader(n_calls, k))
    trainer.train()
    return trainer


def test_window_keeps_the_last_finite_values_in_order():
    w = Window(5)
    w.add(np.array([1.0, np.nan, 2.0]))
    assert w.count == 2 and w.mean() == 1.5
    w.add(np.arange(3.0, 7.0))  # 1 2 3 4 5 6 -> keeps 2..6
    np.testing.assert_array_equal(w.values(), [2, 3, 4, 5, 6])
    assert w.mean() == 4.0
    w.add(np.arange(100.0, 112.0))
    np.testing.assert_array_equal(w.values(), np.arange(107.0, 112.0))
    assert math.isnan(Window(3).mean())


def test_each_of_the_k_values_lands_at_its_own_step_with_a_window_of_250():
    rec = Recorder()
    logger = MetricsLogger([rec], log_interval=10, window=250, histogram_interval=40)
    run([logger], n_calls=100, k=4)  # 400 steps
    assert rec.opened == 1 and rec.closed == 1
    assert sorted(rec.scalars) == list(range(10, 401, 10))
    for step, s in rec.scalars.items():
        assert s["s/value"] == step  # the value of that very step, from inside a call of 4
        lo = max(1, step - 249)
        assert s["s/value/windowed"] == pytest.approx(np.mean(np.arange(lo, step + 1)))
    # a cycle-3 hook's metric is NaN on 2 of 3 steps: the raw value only where it ran, the window over those
    assert "s/sparse" in rec.scalars[30] and "s/sparse" not in rec.scalars[20]
    assert rec.scalars[30]["s/sparse"] == 300
    assert rec.scalars[30]["s/sparse/windowed"] == pytest.approx(10 * np.mean(np.arange(3, 31, 3)))
    assert rec.scalars[400]["s/sparse/windowed"] == pytest.approx(10 * np.mean(np.arange(3, 400, 3)))
    # histograms of the parameters every 40 steps, and at the end
    assert sorted(rec.hists) == list(range(40, 401, 40))
    np.testing.assert_array_equal(rec.hists[40]["params/s/w"], np.arange(6.0).reshape(2, 3))
    assert logger.compile_s is not None and logger.compile_s > 0
    assert rec.scalars[10]["performance/compile_s"] == logger.compile_s
    assert all("performance/compile_s" not in rec.scalars[s] for s in range(20, 401, 10))


def test_the_last_step_is_written_at_the_end_even_off_the_interval():
    rec = Recorder()
    run([MetricsLogger([rec], log_interval=100, histogram_interval=None)], n_calls=13, k=4)  # 52 steps
    assert sorted(rec.scalars) == [52]
    assert rec.scalars[52]["s/value"] == 52
    assert rec.scalars[52]["s/value/windowed"] == pytest.approx(np.mean(np.arange(1, 53)))


def test_tensorboard_event_files_read_back_with_values_at_their_steps(tmp_path):
    logger = TensorboardLogger(tmp_path / "tb", log_interval=8, histogram_interval=16,
                               sources=[ThroughputMetrics(), SystemMetrics(interval=16)])
    run([logger], n_calls=12, k=4)  # 48 steps
    scalars = read_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["s/value"]] == [8, 16, 24, 32, 40, 48]
    assert [v for _, v in scalars["s/value"]] == [8, 16, 24, 32, 40, 48]
    assert scalars["s/value/windowed"][-1] == (48, pytest.approx(24.5))
    for tag in ("performance/bp_steps_per_s", "performance/bp_samples_per_s", "system/rss_mb",
                "system/cpu_percent", "performance/compile_s"):
        assert tag in scalars and all(np.isfinite(v) for _, v in scalars[tag]), tag
    assert all(v > 10 for _, v in scalars["system/rss_mb"])  # MiB: a Python process with JAX
    assert [s for s, _ in scalars["system/rss_mb"]] == [8, 24, 40]  # every 16 steps, from the first log step
    hists = read_histograms(tmp_path / "tb")
    assert [s for s, _ in hists["params/s/w"]] == [16, 32, 48]
    h = hists["params/s/w"][-1][1]
    assert h.num == 6 and h.min == 0 and h.max == 5 and h.sum == 15


def test_csv_logger_writes_one_row_per_log_step(tmp_path):
    run([CSVLogger(tmp_path / "m.csv", log_interval=5)], n_calls=5, k=4)  # 20 steps
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert [float(r["s/value"]) for r in rows] == [5, 10, 15, 20]
    assert rows[0]["s/sparse"] == "" and float(rows[2]["s/sparse"]) == 150  # step 15: the cycle-3 hook ran


def test_a_resumed_run_keeps_the_csv_rows_before_its_first_step(tmp_path):
    from emote_jax.logging import CSVWriter

    w = CSVWriter(tmp_path / "m.csv")
    w.open(1)
    for step in (10, 20, 30):
        w.write_scalars(step, {"a": step / 10})
    w.close()
    w = CSVWriter(tmp_path / "m.csv")
    w.open(21)  # resumed from the checkpoint of step 20: its steps 21.. are written again
    w.write_scalars(30, {"a": -3.0, "b": 1.0})
    w.close()
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [("10", "1.0", ""), ("20", "2.0", ""), ("30", "-3.0", "1.0")]
    w = CSVWriter(tmp_path / "m.csv")
    w.open(1)  # a fresh run starts afresh
    w.write_scalars(5, {"a": 0.5})
    w.close()
    assert (tmp_path / "m.csv").read_text().splitlines() == ["step,a", "5,0.5"]


def test_terminal_logger_prints_a_line_per_log_step():
    out = io.StringIO()
    run([TerminalLogger(out, log_interval=10, exclude=["performance/*"])], n_calls=5, k=4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "bp_step 10 | s/value 10"
    assert lines[1] == "bp_step 20 | s/value 20"


def test_include_and_exclude_select_tags():
    rec = Recorder()
    run([MetricsLogger([rec], log_interval=4, include=["s/*"], exclude=["*/windowed"], histogram_interval=None)],
        n_calls=2, k=4)
    assert rec.scalars[4] == {"s/value": 4.0}
    assert rec.scalars[8] == {"s/value": 8.0}


class FakeCollector(HostCallback):
    """Finishes an episode of return -step and length step % 7 + 1 every 5th backprop step."""

    def __init__(self):
        super().__init__(name="fake_collector", cycle=1)
        self.episode_returns, self.episode_lengths = deque(maxlen=3), deque(maxlen=3)
        self.episode_env_steps = deque(maxlen=3)
        self.episodes_completed = 0
        self.env_steps = 0

    def end_cycle(self, ctx):
        self.env_steps += 2
        if ctx.bp_step % 5 == 0:
            self.episode_returns.append(-float(ctx.bp_step))
            self.episode_lengths.append(ctx.bp_step % 7 + 1)
            self.episode_env_steps.append(self.env_steps)
            self.episodes_completed += 1


def test_episode_metrics_report_every_episode_even_past_the_collectors_history():
    collector = FakeCollector()
    rec = Recorder()
    episodes = EpisodeMetrics(collector, window=4)
    logger = MetricsLogger([rec], log_interval=10, sources=[episodes, ThroughputMetrics(collector)],
                           histogram_interval=20)
    run([collector, logger], n_calls=10, k=4)  # 40 steps, episodes at 5, 10, ..., 40
    assert [e.ret for e in episodes.history] == [-5.0 * i for i in range(1, 9)]
    assert [e.env_steps for e in episodes.history] == [10 * i for i in range(1, 9)]
    assert [e.length for e in episodes.history] == [(5 * i) % 7 + 1 for i in range(1, 9)]
    assert rec.scalars[20]["episode/return"] == -17.5  # episodes at 15 and 20
    assert rec.scalars[20]["episode/return/windowed"] == -12.5  # the last 4: 5..20
    assert rec.scalars[40]["episode/return/windowed"] == -32.5  # 25..40
    assert rec.scalars[40]["env/steps"] == 80 and rec.scalars[40]["env/episodes"] == 8
    assert rec.scalars[40]["performance/env_steps_per_s"] > 0
    np.testing.assert_array_equal(rec.hists[40]["episode/return"], [-25, -30, -35, -40])


def test_episodes_stream_to_the_csv_as_they_finish_and_a_resume_keeps_those_before_it(tmp_path):
    """``csv_path``: the rows are on disk while training runs (a run killed outright keeps them); a run
    resumed at bp step 21 keeps the rows of the steps before 21 and drops the later ones."""
    from types import SimpleNamespace

    from emote_jax.logging import read_episodes_csv

    path = tmp_path / "episodes.csv"
    seen = {}

    class Peek(HostCallback):
        def end_cycle(self, ctx):
            if ctx.bp_step == 22:
                seen["rows"] = read_episodes_csv(path)

    collector = FakeCollector()
    logger = MetricsLogger([Recorder()], log_interval=10, histogram_interval=None,
                           sources=[EpisodeMetrics(collector, csv_path=path)])
    run([collector, logger, Peek(name="peek", cycle=1)], n_calls=10, k=4)
    assert [(e.bp_step, e.ret, e.env_steps) for e in seen["rows"]] == [(5 * i, -5.0 * i, 10 * i) for i in range(1, 5)]
    assert [e.bp_step for e in read_episodes_csv(path)] == [5 * i for i in range(1, 9)]

    resumed = EpisodeMetrics(FakeCollector(), csv_path=path)
    resumed.begin_training(SimpleNamespace(bp_step=21))
    resumed.end_training(SimpleNamespace(bp_step=21))
    assert [e.bp_step for e in read_episodes_csv(path)] == [5, 10, 15, 20]

    path.write_text("not,an\nepisodes,file\n")
    unreadable = EpisodeMetrics(FakeCollector(), csv_path=path)
    with pytest.warns(UserWarning, match="moved it to .*episodes.csv.unreadable"):
        unreadable.begin_training(SimpleNamespace(bp_step=21))
    unreadable.end_training(SimpleNamespace(bp_step=21))
    assert read_episodes_csv(path) == [] and (tmp_path / "episodes.csv.unreadable").read_text().startswith("not,an")


def test_a_source_serves_one_logger_only():
    src = SystemMetrics()
    MetricsLogger([Recorder()], sources=[src], name="a")
    with pytest.raises(ValueError, match="already attached to logger 'a'"):
        MetricsLogger([Recorder()], sources=[src], name="b")


def test_bad_arguments_and_metric_shapes_are_refused_with_what_was_expected():
    with pytest.raises(TypeError, match="expected MetricWriter instances, got str"):
        MetricsLogger(["tb"])
    with pytest.raises(ValueError, match="expected log_interval to be an int >= 1, got 0"):
        MetricsLogger([Recorder()], log_interval=0)
    with pytest.raises(TypeError, match="expected a collector with 'episode_returns'"):
        EpisodeMetrics(object())
    logger = MetricsLogger([Recorder()], log_interval=1)
    from emote_jax.context import Context

    # per-sample metrics (K, B) are skipped (Context.log_samples); other shapes are refused
    ctx = Context(state={}, batch=None, key=None, metrics={"a": np.zeros(3), "s": np.zeros((3, 5)),
                                                           "b": np.zeros((3, 2, 2))}, bp_step=1)
    logger.begin_training(ctx)
    with pytest.raises(ValueError, match=r"expected every host metric to have shape \(3,\).*'b' with shape \(3, 2, 2\)"):
        logger.end_cycle(ctx)


def test_progress_lines_carry_no_control_characters_and_a_time_left():
    from emote_jax.logging import Progress, format_duration

    assert [format_duration(s) for s in (0, 75, 3725, float("nan"))] == ["0:00", "1:15", "1:02:05", "?"]
    collector = FakeCollector()
    out = io.StringIO()
    progress = Progress(collector, total_env_steps=80, interval=20, out=out)
    assert progress.tty is False  # a StringIO is no terminal
    run([collector, progress], n_calls=10, k=4)  # 2 env steps per bp step: 80 env steps
    lines = out.getvalue().splitlines()
    assert [line.split("|")[0].split()[-1] for line in lines[:-1]] == ["20/80", "40/80", "60/80", "80/80"]
    assert all("ETA " in line for line in lines[:-1]) and lines[-1].startswith("done, overall:")
    assert not any(c in out.getvalue() for c in "\r\x1b\b")
    assert [r["env_steps"] for r in progress.rows] == [20, 40, 60, 80, 80]


def test_the_bar_fits_the_terminal_width():
    from emote_jax.logging import Progress

    collector = FakeCollector()
    collector.env_steps = 6750
    collector.episode_returns.extend([-100.0, -150.0])
    bar = Progress(collector, 15000, 100, out=io.StringIO(), tty=True)
    from emote_jax.context import Context

    bar.begin_training(Context(state={}, batch=None, key=None, metrics={}, bp_step=1))
    wide = bar.render(5000, bar._t0 + 20, 120)
    assert wide.startswith(" 45% |###########--------------| 6750/15000 env steps | return -125.0 |")
    narrow = bar.render(5000, bar._t0 + 21, 70)
    assert len(narrow) <= 69 and narrow.startswith(" 45% |####------| 6750/15000 | ret -125.0 |")


def test_the_reference_names_map_every_sac_metric_the_reference_logs(tmp_path):
    """``names="emote"``: a SAC run's scalars under the reference's tags, with the values of the same run
    logged under emote_jax's names; the tags the reference logs that emote_jax adds for it are there."""
    import jax

    from emote_jax.algorithms import make_sac_callbacks
    from emote_jax.logging.names import reference_name
    from test_sac_parity import _batch  # tests/ is on sys.path under pytest

    def run_named(names):
        rec = Recorder()
        cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(8,))
        logger = MetricsLogger([rec], log_interval=2, histogram_interval=None, names=names)
        Trainer([*cbs, logger], [{"default": _batch(seed=s), "batch_size": 16} for s in range(4)], seed=0).train()
        return rec.scalars[4]

    ours, ref = run_named("emote_jax"), run_named("emote")
    expected = {"loss/q1_loss", "loss/q2_loss", "loss/policy_loss", "loss/alpha_loss", "loss/q1_lr", "loss/policy_lr",
                "loss/q1_gradient_norm", "training/q1_prediction", "training/q_target", "training/scaled_reward",
                "training/min_next_q_target", "training/next_logp_pi", "training/alpha_value", "training/entropy",
                "training/target_entropy", "policy/q_pi_min", "policy/logp_pi", "loss/q1_loss/windowed"}
    assert expected <= set(ref), expected - set(ref)
    assert {reference_name(k): v for k, v in ours.items()} == ref  # the same values, renamed
    assert ref["training/alpha_value"] <= 0.2 + 1e-6  # after the clamp, as the reference logs it
    # -E[logp]: the same noise through the policy before (policy loss) and after (alpha loss) its update
    assert ours["alpha/entropy"] == pytest.approx(-ours["policy/logp_mean"], abs=0.05)
    assert abs(ours["alpha/entropy"]) > 0.5
    with pytest.raises(ValueError, match="names one of"):
        MetricsLogger([Recorder()], names="tensorboard")


class ArrayLogger(Callback):
    """Logs a histogram of ``[step, 2 step, 3 step]`` every step and, from a cycle-5 hook, a 2x3 RGB image
    whose pixels are step / 100; and a scalar ``s/one`` = 1 every step."""

    def backward(self, ctx):
        s = ctx.bp_step.astype(jnp.float32)
        return ctx.log_histogram(**{"h/steps": s * jnp.arange(1.0, 4.0)}).log(**{"s/one": jnp.ones(())})

    def end_cycle(self, ctx):
        return ctx.log_image(**{"img/level": jnp.full((2, 3, 3), ctx.bp_step / 100.0)})


def test_device_histograms_and_images_reach_the_writers_at_histogram_steps(tmp_path):
    from emote_jax.logging import TensorboardWriter, read_histograms, read_images

    rec = Recorder()
    tb = TensorboardWriter(tmp_path / "tb")
    logger = MetricsLogger([rec, tb], log_interval=10, histogram_interval=10, param_histograms=False,
                           cumulative=["s/one"], windows={"s/*": 3})
    Trainer([ArrayLogger(name="arrays", cycle=5), logger], StackedLoader(5, 4)).train()  # 20 steps, K = 4
    np.testing.assert_array_equal(rec.hists[10]["h/steps"], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(rec.hists[20]["h/steps"], [20.0, 40.0, 60.0])
    np.testing.assert_allclose(rec.images[10]["img/level"], np.full((2, 3, 3), 0.10), rtol=1e-6)
    assert "histogram:h/steps" not in rec.scalars[10] and "h/steps" not in rec.scalars[10]  # not a scalar
    assert rec.scalars[10]["s/one/cumulative"] == 10.0 and rec.scalars[20]["s/one/cumulative"] == 20.0
    assert rec.scalars[10]["s/one/windowed"] == 1.0
    h = read_histograms(tmp_path / "tb")["h/steps"]
    assert [step for step, _ in h] == [10, 20] and h[0][1].sum == pytest.approx(60.0)
    imgs = read_images(tmp_path / "tb")["img/level"]
    assert [step for step, _ in imgs] == [10, 20]
    assert imgs[1][1].shape == (2, 3, 3) and np.all(np.abs(imgs[1][1].astype(int) - 51) <= 1)  # 0.2 as uint8


def test_an_image_step_where_the_cycle_hook_did_not_run_is_not_written():
    rec = Recorder()
    logger = MetricsLogger([rec], log_interval=2, histogram_interval=2, param_histograms=False)
    Trainer([ArrayLogger(name="arrays", cycle=5), logger], StackedLoader(3, 4)).train()  # steps 1..12
    assert sorted(rec.images) == [10]  # the hook ran at 5 and 10; 5 is no histogram step
    assert sorted(rec.hists) == [2, 4, 6, 8, 10, 12]


def test_per_metric_windows_and_bad_arguments():
    rec = Recorder()
    logger = MetricsLogger([rec], log_interval=8, histogram_interval=None, windows={"s/value": 2})
    run([logger], n_calls=2, k=4)
    assert rec.scalars[8]["s/value/windowed"] == 7.5  # the last 2 values, 7 and 8 (default window: 250)
    with pytest.raises(ValueError, match="windows"):
        MetricsLogger([rec], windows={"*": 0})
    with pytest.raises(ValueError, match=r"shape \(H, W, C\)"):
        from emote_jax import Context

        Context(state={}, batch=None, key=None, metrics={}, bp_step=1).log_image(bad=jnp.zeros((4, 4)))


def test_host_callbacks_write_videos_through_the_logger(tmp_path):
    rec = Recorder()
    logger = MetricsLogger([rec], log_interval=10, histogram_interval=None)
    frames = np.linspace(0.0, 1.0, 2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    logger.write_video(7, "eval/episode", frames, fps=12)
    step, tag, got, fps = rec.videos[0]
    assert (step, tag, fps, got.dtype, got.shape) == (7, "eval/episode", 12, np.uint8, (2, 4, 5, 3))
    np.testing.assert_array_equal(got, (frames * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
        logger.write_video(7, "bad", np.zeros((4, 5, 3)))


def test_tensorboard_videos_name_the_extra_they_need(tmp_path, monkeypatch):
    import sys

    from emote_jax.logging import TensorboardWriter

    monkeypatch.setitem(sys.modules, "moviepy", None)
    w = TensorboardWriter(tmp_path / "tb")
    w.open(1)
    try:
        with pytest.raises(ImportError, match=r"pip install 'emote-jax\[video\]'"):
            w.write_video(1, "v", np.zeros((2, 4, 4, 3), np.uint8), 10)
    finally:
        w.close()


def test_a_video_reaches_the_tensorboard_event_file(tmp_path):
    """With moviepy (the video extra, part of the test extra) tensorboardX encodes the frames as a GIF."""
    from emote_jax.logging import TensorboardWriter
    from emote_jax.logging.events import _summary_values

    logger = MetricsLogger([TensorboardWriter(tmp_path / "tb")], log_interval=10, histogram_interval=None)
    logger.writers[0].open(1)
    try:
        logger.write_video(3, "eval/episode", np.random.default_rng(0).uniform(size=(6, 8, 8, 3)), fps=5)
    finally:
        logger.writers[0].close()
    videos = [(step, v) for step, v in _summary_values(tmp_path / "tb") if v.HasField("image")]
    assert [(step, v.tag, v.image.height, v.image.width) for step, v in videos] == [(3, "eval/episode", 8, 8)]
    assert videos[0][1].image.encoded_image_string[:6] == b"GIF89a"  # an animated GIF of the frames


class Counting(Callback):
    """Logs ``s/value`` and a counter ``c/steps = 2 * bp_step`` every step."""

    def backward(self, ctx):
        return ctx.log(**{"s/value": ctx.bp_step.astype(jnp.float32)}).log_counters(**{"c/steps": 2 * ctx.bp_step})


def test_counters_reach_host_hooks_as_int32_but_no_writer():
    rec = Recorder()
    trainer = Trainer([Counting(name="c"), MetricsLogger([rec], log_interval=4, histogram_interval=None)],
                      StackedLoader(3, 4))
    ctx = trainer.train()
    counts = ctx.metrics["counter:c/steps"]
    assert counts.dtype == np.int32 and counts.tolist() == [18, 20, 22, 24]  # steps 9..12 of the last call
    assert rec.scalars[4]["s/value"] == 4.0
    assert not any("steps" in name for row in rec.scalars.values() for name in row)
    with pytest.raises(ValueError, match="counter 'x' must be a scalar"):
        ctx.replace(metrics={}).log_counters(x=np.zeros(2))
