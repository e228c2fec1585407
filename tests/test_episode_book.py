"""EpisodeBook: the collector's per-sub-env episode bookkeeping, on plain arrays."""

from __future__ import annotations

import numpy as np

from emote_jax.collectors.episodes import EpisodeBook
from emote_jax.memory import AgentObservation, EpisodeState


def obs(x: float) -> dict[str, np.ndarray]:
    return {"obs": np.array([x], np.float32)}


def test_ids_are_fresh_across_episodes_and_resets():
    book = EpisodeBook.empty(2)
    book.start(0, obs(0.0))
    book.start(1, obs(1.0))
    assert book.agents == [0, 1] and book.next_agent == 2
    assert book.pending[0].episode_state == EpisodeState.INITIAL and book.pending[0].reward is None
    book.end(0)
    book.start(0, obs(2.0))
    assert book.agents == [2, 1]
    again = EpisodeBook.empty(2, book.next_agent)  # what a reset does
    again.start(0, obs(3.0))
    assert again.agents == [3, None] and again.ep_return.dtype == np.float64 and again.ep_len.dtype == np.int64


def test_close_all_interrupts_running_episodes_and_names_dangling_ones():
    book = EpisodeBook.empty(3)
    for i in range(3):
        book.start(i, obs(float(i)))
    book.pending[1] = AgentObservation(EpisodeState.RUNNING, obs(5.0), 0.5)
    book.pending[2] = None  # handed its action over, no reward back yet
    closes, dangling = book.close_all()
    assert list(closes) == [1] and closes[1].episode_state == EpisodeState.INTERRUPTED and closes[1].reward == 0.5
    assert dangling == [2]  # agent 0 only had its INITIAL observation: nothing to close
    assert book.agents == [None] * 3 and book.pending == [None] * 3 and book.next_agent == 3
