"""The live glue on loopback: a Session feeding the pipeline, lifecycle events reaching
the plugins, and the final numbers coming back."""

from __future__ import annotations

from jitterline import ConnectionEvent, PipelineConfig, PluginHost, hookimpl
from jitterline.emulator import Emulator, Impairments
from jitterline.live import SessionOptions, run_live
from jitterline.transport import BackoffPolicy, TokenProvider


class LifecycleRecorder:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    @hookimpl
    def jitterline_connection_event(self, event: ConnectionEvent) -> None:
        self.kinds.append(event.kind)


def test_lifecycle_events_reach_plugins_through_a_drop_and_reconnect() -> None:
    recorder = LifecycleRecorder()
    host = PluginHost(load_entrypoints=False, plugins=[recorder])
    drop_once = Impairments(disconnect_every_frames=40, max_disconnects=1)

    with Emulator(impairments=drop_once, seed=1) as emu:
        tokens = TokenProvider(emu.auth_url, emu.client_id, emu.client_secret)
        options = SessionOptions(
            url=emu.ws_url,
            tokens=tokens,
            duration_s=2.0,
            ping_interval_s=0.5,
            backoff=BackoffPolicy(initial_s=0.05, max_s=0.2),
        )
        result = run_live(options, config=PipelineConfig(), host=host)

    kinds = recorder.kinds
    assert kinds[:3] == ["connecting", "token_refreshed", "connected"]
    assert kinds.count("disconnected") == 2  # the forced drop, then our own close
    assert kinds.count("reconnect_scheduled") == 1  # only after the drop
    assert kinds.count("connected") == 2
    assert "pong" in kinds
    assert kinds[-2:] == ["disconnected", "closed"]
    assert result.outcome is None
    assert result.stats.connection.reconnects == 1
    assert result.stats.frames.balanced
    assert result.stats.frames.played > 50
    assert result.session is not None  # the session's own side of the snapshot
    assert result.session.reconnects == 1
    assert result.session.messages_in >= result.stats.frames.received
    assert not result.session.connected  # closed for good at the end
