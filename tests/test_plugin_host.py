"""The plugin host: wrapper hookimpls refused, failures counted per plugin, broken and
unknown plugins named instead of stopping anything."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from jitterline import AudioFrame, PluginError, PluginHost, StreamInfo, hookimpl


class WrappingSink:
    @hookimpl(wrapper=True)
    def jitterline_frame_played(
        self, frame: AudioFrame, stream: StreamInfo
    ) -> Generator[None, None, None]:
        yield


class OldStyleWrapper:
    @hookimpl(hookwrapper=True)
    def jitterline_stats(self) -> Generator[None, None, None]:
        yield


@pytest.mark.parametrize("plugin", [WrappingSink(), OldStyleWrapper()])
def test_a_wrapper_on_a_notification_hook_is_refused_at_registration(plugin: object) -> None:
    with pytest.raises(PluginError, match="wrapper hookimpl"):
        PluginHost(plugins=[plugin])
    host = PluginHost()
    with pytest.raises(PluginError, match="one plugin at a time"):
        host.register(plugin)
    assert plugin not in host.pm.get_plugins()


class Flaky:
    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        raise ValueError("no")


def test_failures_are_counted_per_plugin() -> None:
    host = PluginHost()
    host.register(Flaky(), name="flaky")
    for n in range(3):
        host.notify("jitterline_stream_opened", stream=StreamInfo(stream_id=str(n)))

    assert host.failures_by_plugin() == {"flaky": 3}


@pytest.fixture
def broken_plugin(tmp_path: Path) -> Iterator[str]:
    """An installed distribution whose entry point names a module that does not exist."""
    dist = tmp_path / "broken_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("[jitterline]\nbroken_sink = no_such_module_here:plugin\n")
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield "broken_sink"
    finally:
        sys.path.remove(str(tmp_path))


def test_a_broken_plugin_is_named_and_skipped(
    broken_plugin: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        host = PluginHost(load_entrypoints=True)

    assert broken_plugin in host.broken
    assert "wav_sink" in {info.name for info in host.info() if info.enabled}
    [record] = [r for r in caplog.records if broken_plugin in r.getMessage()]
    assert "no_such_module_here" in record.getMessage()


def test_an_unknown_name_to_disable_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("JITTERLINE_DISABLE_PLUGINS", "nosuch")
    with caplog.at_level(logging.WARNING):
        PluginHost(load_entrypoints=True)

    assert any("nosuch" in r.getMessage() for r in caplog.records)


def test_the_summary_counts_failures_per_plugin() -> None:
    from jitterline.diagnosis import diagnose
    from jitterline.frames import Stats
    from jitterline.summary import summarize

    stats = Stats(at_s=1.0)
    summary = summarize(stats, diagnose(stats), plugin_failures={"flaky": 3})

    assert summary["plugins"] == {"failures": {"flaky": 3}}
