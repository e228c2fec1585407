"""The SAC recipe (build_sac/train_sac) with its collector variants."""

from __future__ import annotations

import pytest

from emote_jax.collectors import GymCollector, ThreadedGymCollector
from emote_jax.train import SACConfig, build_sac, train_sac


@pytest.mark.parametrize("threaded", [False, True])
def test_recipe_trains_with_either_collector(threaded, tmp_path):
    cfg = SACConfig(env_id="HitTheMiddle-v0", env_steps=800, num_envs=4, hidden_dims=(16, 16), batch_size=32,
                    warmup_steps=200, eval_episodes=1, threaded=threaded, run_dir=str(tmp_path))
    run = build_sac(cfg, out=None)
    assert type(run.collector) is (ThreadedGymCollector if threaded else GymCollector)
    run.env.close()
    result = train_sac(cfg, out=None)
    assert result["env_steps"] >= 800 and result["bp_steps"] > 0
    if not threaded:  # one vector step per backprop step after the 50 warm-up vector steps (200 env steps)
        assert result["bp_steps"] == result["vector_steps"] - 50
    assert (tmp_path / "result.json").exists() and (tmp_path / "config.json").exists()
