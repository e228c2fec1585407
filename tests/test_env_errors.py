"""Settings the SAC recipe refuses before anything is compiled, each as a ConfigError naming the option."""

from __future__ import annotations

import gymnasium
import pytest

from emote_jax.errors import ConfigError, UnsupportedSpaceError
from emote_jax.train import SACConfig, build_sac, cli_option

MISSING_MUJOCO_ID = "EmoteJaxTestMissingMujoco-v0"


@pytest.fixture
def missing_mujoco_env():
    """An env id whose entry point lives under gymnasium.envs.mujoco but cannot be imported."""
    gymnasium.register(id=MISSING_MUJOCO_ID, entry_point="gymnasium.envs.mujoco.emote_jax_not_there:Env")
    yield MISSING_MUJOCO_ID
    gymnasium.registry.pop(MISSING_MUJOCO_ID, None)


@pytest.mark.parametrize("async_envs", [False, True])
def test_an_env_whose_dependency_is_missing_names_the_extra_to_install(missing_mujoco_env, async_envs):
    cfg = SACConfig(env_id=missing_mujoco_env, async_envs=async_envs, run_dir=None)
    with pytest.raises(ConfigError, match=r"needs a package that is not installed .*pip install 'emote-jax\[mujoco\]'") as e:
        build_sac(cfg, out=None)
    assert e.value.option == "--env" and "\n" not in str(e.value)


def test_an_unknown_env_id_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"--env 'NoSuchEnv-v0': gymnasium does not know this env id") as e:
        build_sac(SACConfig(env_id="NoSuchEnv-v0"), out=None)
    assert e.value.option == "--env"


def test_a_discrete_action_space_is_an_unsupported_space_and_a_type_error():
    with pytest.raises(UnsupportedSpaceError, match=r"--env CartPole-v1: SAC needs a continuous Box action space"):
        build_sac(SACConfig(env_id="CartPole-v1"), out=None)
    assert issubclass(UnsupportedSpaceError, TypeError) and issubclass(UnsupportedSpaceError, ConfigError)


def test_an_n_step_length_beyond_the_time_limit_is_refused():
    with pytest.raises(ConfigError, match=r"--rollout-length 256 is longer than Pendulum-v1's episodes .*expected <= 200"):
        build_sac(SACConfig(env_id="Pendulum-v1", rollout_length=256, batch_size=256), out=None)
    # the env's own kwargs can lengthen the limit
    run = build_sac(SACConfig(env_id="Pendulum-v1", rollout_length=256, batch_size=256,
                              env_kwargs={"max_episode_steps": 300}), out=None)
    run.env.close()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("env_steps", 0, "--steps 0 is not valid: expected > 0"),
    ("memory_size", 10, "--memory-size 10 is not valid: expected >= batch_size (256)"),
    ("batch_size", 100, "--batch-size 100 is not valid: expected a multiple of rollout_length (3)"),
    ("tau", 0.0, "--tau 0.0 is not valid: expected in (0, 1]"),
    ("lr_q", -1.0, "--lr-q -1.0 is not valid: expected > 0"),
])
def test_bad_settings_name_their_cli_option(field, value, message):
    cfg = SACConfig(**{field: value, **({"rollout_length": 3} if field == "batch_size" else {})})
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert str(e.value) == message and e.value.option == cli_option(field)
