"""Outbound audio on loopback: a real ``InboundServer`` whose bot plugin talks back, and the
players acting as Genesys Audio Connector and Twilio, recording what arrived."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jitterline import PipelineConfig, PluginHost, codecs
from jitterline.emulator.players import PlayerResult, play
from jitterline.errors import ConfigError
from jitterline.frames import Message, StreamInfo
from jitterline.hookspecs import hookimpl
from jitterline.outbound import Outbound, Playback, encode_pcmu
from jitterline.protocols.audiohook import AudioHookDialect
from jitterline.runtime import Runtime
from jitterline.server.prompt import PromptPlayer, check_prompt_dialect, load_prompt
from jitterline.transport import IOLoop
from serve_testkit import WAIT_S, serving
from test_audiohook import CONVERSATION, ORG, PARTICIPANT, SESSION
from test_serve_command import command, environment, serve_process

PLAYER_S = 2.5
"""Longer than every prompt here, so the caller is still there when the audio has played."""


def ramp(seconds: float) -> np.ndarray:
    count = int(seconds * 8000)
    return ((np.arange(count) * 37) % 20000 - 10000).astype(np.int16)


class Bot:
    """Answers every call with ``audio``; ``clear_after_s`` stops it that long after."""

    def __init__(self, audio: np.ndarray, clear_after_s: float | None = None) -> None:
        self.audio = audio
        self.clear_after_s = clear_after_s
        self.ready: list[StreamInfo] = []
        self.opened: list[StreamInfo] = []
        self.playbacks: list[Playback] = []
        self.done: list[str] = []

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        self.opened.append(stream)

    @hookimpl
    def jitterline_outbound_ready(self, stream: StreamInfo, outbound: Outbound) -> None:
        self.ready.append(stream)
        playback = outbound.send(self.audio, 8000)
        playback.add_done_callback(lambda done: self.done.append(done.state))
        self.playbacks.append(playback)
        if self.clear_after_s is not None:
            asyncio.get_running_loop().call_later(self.clear_after_s, outbound.clear)


def run_player(url: str, dialect: str, **options: Any) -> PlayerResult:
    return asyncio.run(play(url, dialect=dialect, **{"duration_s": PLAYER_S, **options}))


def decoded(pcmu: bytes) -> np.ndarray:
    return codecs.decode(pcmu, "PCMU")


@pytest.mark.parametrize(
    ("dialect", "size", "count"), [("twilio", 160, 50), ("audioconnector", 1600, 5)]
)
def test_the_bot_audio_arrives_whole_paced_and_confirmed(
    tmp_path: Path, dialect: str, size: int, count: int
) -> None:
    bot = Bot(ramp(1.0))
    with serving(tmp_path, dialect=dialect, plugins=(bot,)) as served:
        result = run_player(served.url, dialect)
        states = served.call(lambda: [p.state for p in bot.playbacks])

    assert result.completed, result.error_detail
    back = result.server_audio
    assert back.messages == count and set(back.sizes) == {size}
    assert np.array_equal(decoded(back.audio), decoded(encode_pcmu(bot.audio)))
    # Paced, not sent at once: the last message left about 0.9 s after the first
    # (1 s of audio, 0.1 s lead); a burst would put them all within milliseconds.
    assert back.arrivals_s[-1] - back.arrivals_s[0] >= 0.6
    assert states == ["played"] and bot.done == ["played"]
    if dialect == "twilio":
        assert back.marks == (bot.playbacks[0].name,)
    else:  # played: the player's playback_completed reached the sender
        assert back.marks == ()


@pytest.mark.parametrize(("dialect", "full"), [("twilio", 150), ("audioconnector", 15)])
def test_clear_stops_the_bot_audio(tmp_path: Path, dialect: str, full: int) -> None:
    bot = Bot(ramp(3.0), clear_after_s=0.5)
    with serving(tmp_path, dialect=dialect, plugins=(bot,)) as served:
        result = run_player(served.url, dialect)
        states = served.call(lambda: [p.state for p in bot.playbacks])

    back = result.server_audio
    assert result.completed, result.error_detail
    assert back.clears == 1
    assert 0 < back.messages < full // 2
    assert states == ["cleared"] and bot.done == ["cleared"]
    assert back.marks == ()  # the mark follows the last chunk, which never left


def test_audiohook_gets_no_outbound_hook(tmp_path: Path) -> None:
    bot = Bot(ramp(0.5))
    with serving(tmp_path, dialect="audiohook", plugins=(bot,)) as served:
        result = run_player(served.url, "audiohook", duration_s=0.5)
        opened = served.call(lambda: len(bot.opened))
    assert result.completed and opened == 2  # stereo: two channels
    assert bot.ready == [] and result.server_audio.messages == 0


def test_a_connection_probe_gets_no_outbound_hook(tmp_path: Path) -> None:
    bot = Bot(ramp(0.5))
    with serving(tmp_path, dialect="audioconnector", plugins=(bot,)) as served:
        result = run_player(served.url, "audioconnector", probe=True)
        opened = served.call(lambda: len(bot.opened))
    assert result.completed and opened == 1
    assert bot.ready == [] and result.server_audio.messages == 0


def test_sending_audio_on_audiohook_is_refused_with_the_fix() -> None:
    ioloop = IOLoop(name="outbound-test").start()
    try:
        runtime = Runtime(PluginHost(), ioloop=ioloop)
        genesys = AudioHookDialect(
            role="client",
            session_id=SESSION,
            organization_id=ORG,
            conversation_id=CONVERSATION,
            participant_id=PARTICIPANT,
        )
        server = AudioHookDialect(role="server", session_id=SESSION)

        def opened_connection() -> Any:
            connection = runtime.connect(
                server, PipelineConfig(dialect="audiohook"), send=lambda _: None,
                close=lambda: None,
            )  # fmt: skip
            server.connection_made(0.0)
            genesys.connection_made(0.0)
            for data in genesys.data_to_send():
                connection.receive(Message(data, arrival_s=0.0))
            return connection

        connection = runtime.call(opened_connection)
        assert connection.opened is not None
        with pytest.raises(ConfigError, match=r"monitor-only.*--dialect audioconnector"):
            runtime.call(lambda: connection.send_audio(ramp(0.1)))
    finally:
        ioloop.stop()


# -- serve --prompt ---------------------------------------------------------------------------


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def test_the_prompt_is_played_to_every_caller(tmp_path: Path) -> None:
    prompt = ramp(0.6)
    player = PromptPlayer(load_prompt(write_wav(tmp_path / "hello.wav", prompt, 8000)))
    with serving(tmp_path, dialect="twilio", plugins=(player,)) as served:

        async def two_callers() -> list[PlayerResult]:
            return list(
                await asyncio.gather(
                    *(play(served.url, dialect="twilio", duration_s=PLAYER_S) for _ in "ab")
                )
            )

        results = asyncio.run(two_callers())
    for result in results:
        assert np.array_equal(decoded(result.server_audio.audio), decoded(encode_pcmu(prompt)))
        assert len(result.server_audio.marks) == 1
    assert player.started == 2


def test_a_prompt_is_read_as_8_khz_mono(tmp_path: Path) -> None:
    tone = (8000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype(np.int16)
    samples = load_prompt(write_wav(tmp_path / "wide.wav", tone, 16000))  # 0.5 s at 16 kHz
    assert samples.dtype == np.int16 and abs(samples.size - 4000) <= 2
    assert not samples.flags.writeable
    left_right = np.tile(np.array([1000, 3000], dtype=np.int16), 800)
    mixed = load_prompt(write_wav(tmp_path / "stereo.wav", left_right, 8000, channels=2))
    assert mixed.tolist() == [2000] * 800


def test_an_unplayable_prompt_stops_start_up(tmp_path: Path) -> None:
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(b"\x80" * 800)
    with pytest.raises(ConfigError, match="8-bit samples; convert it to 16-bit"):
        load_prompt(eight_bit)
    (tmp_path / "not.wav").write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read it as a WAV"):
        load_prompt(tmp_path / "not.wav")
    with pytest.raises(ConfigError, match="monitor-only"):
        check_prompt_dialect("audiohook")


def test_serve_prompt_plays_the_wav_to_a_twilio_caller(tmp_path: Path) -> None:
    prompt = ramp(0.4)
    wav = write_wav(tmp_path / "welcome.wav", prompt, 8000)
    with serve_process("--dialect", "twilio", "--prompt", str(wav)) as (process, port, _):
        result = run_player(f"ws://127.0.0.1:{port}/", "twilio")
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
    assert result.completed, result.error_detail
    assert np.array_equal(decoded(result.server_audio.audio), decoded(encode_pcmu(prompt)))
    assert result.server_audio.marks == ("jitterline-1",)


def test_serve_prompt_on_audiohook_is_a_usage_error(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "welcome.wav", ramp(0.1), 8000)
    result = subprocess.run(
        command("--port", "0", "--dialect", "audiohook", "--prompt", str(wav)),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "monitor-only" in result.stderr and "--dialect audioconnector" in result.stderr
