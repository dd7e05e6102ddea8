"""Three abrupt drops in a 20 s stream from a server that pauses while the client is away
and resumes its sequence, against the real dial-out path (``run_live`` on the runtime,
the local endpoint on loopback): audio is back at once after every reconnect.

Real time: the endpoint has no compressed clock, so this takes the stream's 20 s plus the
three reconnects (about a second in all).
"""

from __future__ import annotations

from dataclasses import replace

from jitter_testkit import LOGGED_POLICY, TargetLog, first_real_after, wait_ms
from jitterline import AudioFrame, ConnectionEvent, PipelineConfig, PluginHost, hookimpl
from jitterline.emulator import PROFILES, Emulator
from jitterline.live import SessionOptions, run_live
from jitterline.transport import BackoffPolicy, TokenProvider

DURATION_S = 20.0
FRAME_MS = 20.0


class Listener:
    """What a plugin sees: the frames played, and when each connection came up."""

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.connected_s: list[float] = []

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame) -> None:
        self.frames.append(frame)

    @hookimpl
    def jitterline_connection_event(self, event: ConnectionEvent) -> None:
        if event.kind == "connected":
            self.connected_s.append(event.at_s)


def test_three_drops_from_a_server_that_resumes_its_sequence_lose_no_audio() -> None:
    log, heard = TargetLog(), Listener()
    host = PluginHost(load_entrypoints=False, plugins=[log, heard])
    config = PipelineConfig(buffer_policy=LOGGED_POLICY)
    # Drops at 5, 10 and 15 s of stream time; the server holds the stream meanwhile.
    drops = replace(PROFILES["flaky-pause"], disconnect_every_s=5.0, max_disconnects=3)

    with Emulator(drops, seed=3, duration_s=DURATION_S) as emu:
        options = SessionOptions(
            url=emu.ws_url,
            tokens=TokenProvider(emu.auth_url, emu.client_id, emu.client_secret),
            duration_s=3 * DURATION_S,  # a bound only: the stream's end closes the session
            ping_interval_s=1.0,
            # Outages of ~0.3 s, under the buffer's outage_ms: only the reconnect itself
            # tells the buffer that the resumed frames are not late.
            backoff=BackoffPolicy(initial_s=0.3, max_s=1.0),
        )
        result = run_live(options, config=config, host=host)
        server = emu.counters

    assert result.outcome is None  # ended by the stream's own 1000 close
    assert server.forced_disconnects == 3 and server.pauses == 3
    assert server.frames_dropped == 0  # held, not skipped
    assert result.stats.connection.reconnects == 3
    frames = result.stats.frames
    assert frames.balanced
    assert frames.played >= 0.9 * server.frames_sent

    reconnects_s = heard.connected_s[1:]
    assert len(reconnects_s) == 3
    for at_s in reconnects_s:
        first = first_real_after(heard.frames, at_s)
        last_seq = max(f.seq for f in heard.frames if not f.concealed and f.arrival_s < at_s)
        assert 1 <= first.seq - last_seq <= 2  # resumed where it stopped, not restarted
        assert wait_ms(first) <= log.met_ms(first, config) + FRAME_MS
