"""The W&B logger in offline mode (no account, no network); skipped where wandb is not installed."""

from __future__ import annotations

import pytest

wandb = pytest.importorskip("wandb")

from emote_jax.logging import WBLogger  # noqa: E402
from test_logging import run  # noqa: E402  (tests/ is on sys.path under pytest)


def test_offline_run_records_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WBLogger(project="emote-jax-test", run_name="offline", config={"lr": 0.1}, mode="offline",
                      dir=tmp_path, log_interval=10, histogram_interval=20)
    seen = {}
    real_log = None

    def spy(data, step=None, **kw):
        seen.setdefault(step, {}).update(data)
        return real_log(data, step=step, **kw)

    writer = logger.writers[0]
    orig_open = writer.open

    def open_and_spy(start_step=1):
        nonlocal real_log
        orig_open(start_step)
        real_log = writer.run.log
        writer.run.log = spy

    writer.open = open_and_spy
    run([logger], n_calls=10, k=4)  # 40 steps
    assert writer.run is None  # finished
    assert [s for s in sorted(seen)] == [10, 20, 30, 40]
    assert seen[20]["s/value"] == 20 and seen[40]["s/value/windowed"] == pytest.approx(20.5)
    assert "hist/params/s/w" in seen[20]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), list(tmp_path.rglob("*"))
