"""The command line as a user meets it: the real command in a subprocess, against the real
local endpoint, one test (or a few) per rough edge a first-time user hit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitterline.cli import (
    CLIENT_ID_ENV,
    CLIENT_SECRET_ENV,
    DISABLE_ENV,
    EXIT_AUTH,
    EXIT_GAVE_UP,
    EXIT_INTERRUPTED,
    EXIT_NO_AUDIO,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TERMINATED,
    EXIT_USAGE,
    RUN_BACKOFF_S,
)
from jitterline.emulator import PROFILES, Emulator
from jitterline.frames import Stats
from jitterline.plugins import DISABLE_ENV as HOST_DISABLE_ENV
from jitterline.status import LiveView, status_fields
from jitterline.transport import BackoffPolicy

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ID = "cli-user-client"
SECRET = "cli-user-secret-never-shown"
WAIT_S = 60.0


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITTERLINE_")}
    paths = [str(ROOT / "pipeline"), str(ROOT / "plugins"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


CONSOLE_SCRIPT = "import sys; from jitterline.cli import main; sys.exit(main())"
"""What the installed ``jitterline`` script runs (``[project.scripts]``)."""


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", CONSOLE_SCRIPT, *args]


def jitterline(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        env=env or environment(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def credentials(emulator: Emulator) -> dict[str, str]:
    return environment(**{CLIENT_ID_ENV: CLIENT_ID, CLIENT_SECRET_ENV: SECRET})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("jitterline: error:")]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(
        PROFILES["clean"], duration_s=1.0, client_id=CLIENT_ID, client_secret=SECRET
    ) as emu:
        yield emu


@pytest.fixture
def endless() -> Iterator[Emulator]:
    with Emulator(PROFILES["clean"], client_id=CLIENT_ID, client_secret=SECRET) as emu:
        yield emu


# -- output paths: checked before connecting, never lost ----------------------------------


def test_wav_into_a_missing_directory_is_refused_in_one_line_before_connecting(
    tmp_path: Path,
) -> None:
    done = jitterline("demo", "--duration", "1", "--wav", "/nonexistent/dir/a.wav")

    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "jitterline: error: --wav '/nonexistent/dir/a.wav': directory '/nonexistent/dir' "
        "does not exist; create it first"
    ]


def test_a_sink_failing_mid_run_fails_once_exits_5_and_the_summary_is_still_written(
    tmp_path: Path,
) -> None:
    # The directory depends on the stream id, so it can only fail when the file opens.
    template = str(tmp_path / "missing-{stream_id}" / "a.wav")
    summary = tmp_path / "summary.json"

    done = jitterline("demo", "--duration", "1", "--wav", template, "--json", str(summary))

    assert done.returncode == EXIT_OUTPUT, done.stderr
    assert json.loads(summary.read_text())["plugins"]["failures"]["wav_sink"] > 10
    [failure, exit_line] = error_lines(done.stderr)
    assert failure.startswith("jitterline: error: plugin 'wav_sink' failed in")
    assert "FileNotFoundError" in failure
    assert exit_line.startswith("jitterline: error: plugin wav_sink failed during the run")
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
    assert len(done.stderr.splitlines()) < 10


def test_an_unwritable_json_path_is_refused_before_connecting(emulator: Emulator) -> None:
    done = jitterline(
        "run",
        emulator.ws_url,
        "--auth-url",
        emulator.auth_url,
        "--json",
        "/nonexistent/dir/s.json",
        env=credentials(emulator),
    )

    assert done.returncode == EXIT_USAGE
    assert error_lines(done.stderr) == [
        "jitterline: error: --json '/nonexistent/dir/s.json': directory '/nonexistent/dir' "
        "does not exist; create it first"
    ]
    assert emulator.counters.handshakes == 0
    assert emulator.counters.token_requests == 0


def test_record_and_json_naming_the_same_file_are_refused(tmp_path: Path) -> None:
    same = tmp_path / "x.jsonl"
    done = jitterline("demo", "--record", str(same), "--json", str(tmp_path / "." / "x.jsonl"))

    assert done.returncode == EXIT_USAGE
    assert "--json and --record both name" in done.stderr or (
        "--record and --json both name" in done.stderr
    )
    assert not same.exists()


def test_a_replay_may_not_write_its_summary_over_its_capture(tmp_path: Path) -> None:
    capture = tmp_path / "c.jsonl"
    capture.write_text("{}\n")
    done = jitterline("replay", str(capture), "--json", str(capture))

    assert done.returncode == EXIT_USAGE
    assert "the capture and --json both name" in done.stderr
    assert capture.read_text() == "{}\n"


def test_json_dash_is_stdout(tmp_path: Path, emulator: Emulator) -> None:
    done = jitterline(
        "run",
        emulator.ws_url,
        "--auth-url",
        emulator.auth_url,
        "--json",
        "-",
        env=credentials(emulator),
        cwd=tmp_path,
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["run"]["command"] == "run"
    assert not (tmp_path / "-").exists()


# -- no audio is not healthy ----------------------------------------------------------------


def test_a_header_only_capture_exits_6_saying_no_audio(tmp_path: Path) -> None:
    recorded = tmp_path / "full.jsonl"
    done = jitterline("demo", "--duration", "0.5", "-q", "--record", str(recorded))
    assert done.returncode == EXIT_OK, done.stderr
    header_only = tmp_path / "header.jsonl"
    header_only.write_text(recorded.read_text().splitlines()[0] + "\n")

    replayed = jitterline("replay", str(header_only))

    assert replayed.returncode == EXIT_NO_AUDIO
    assert error_lines(replayed.stderr) == [
        "jitterline: error: no audio was played: nothing arrived, or nothing the dialect "
        "could decode; check the URL and --dialect"
    ]
    assert json.loads(replayed.stdout)["frames"]["played"] == 0


# -- errors in flags and environment variables ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "://not a url"], "URL '://not a url' has no scheme; give one like wss://"),
        (["run", "http://x/y"], "URL 'http://x/y' has scheme 'http'"),
        (["run", "ws://example.com/s"], "pass --allow-insecure on a trusted test network"),
        (["demo", "--max-attempts", "-1"], "--max-attempts: -1 is below 0; 0 retries forever"),
        (["demo", "--window-frames", "0"], "--window-frames: 0 is below 1"),
        (["demo", "--duration", "0"], "--duration: 0 must be a finite number > 0"),
    ],
)
def test_bad_values_are_named_by_their_flag(args: list[str], expected: str) -> None:
    done = jitterline(*args)

    assert done.returncode == EXIT_USAGE
    assert expected in done.stderr
    assert not re.search(r"\b[a-z]+_[a-z_]+=", done.stderr)  # no Python parameter


def test_a_bad_auth_url_is_echoed_as_given_with_its_flag(emulator: Emulator) -> None:
    done = jitterline("run", emulator.ws_url, "--auth-url", "://login", env=credentials(emulator))

    assert done.returncode == EXIT_USAGE
    assert error_lines(done.stderr) == [
        "jitterline: error: --auth-url '://login' has no scheme; give one like "
        "https://login.mypurecloud.com"
    ]


def test_a_handshake_that_wants_a_token_names_the_environment_variables(
    emulator: Emulator,
) -> None:
    done = jitterline("run", emulator.ws_url, "-q")

    assert done.returncode == EXIT_AUTH
    [line] = error_lines(done.stderr)
    assert f"set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}" in line
    assert "TokenProvider" not in done.stderr


def test_an_unreachable_auth_server_is_named_as_such(emulator: Emulator) -> None:
    auth = f"http://127.0.0.1:{closed_port()}"
    done = jitterline(
        "run",
        emulator.ws_url,
        "--auth-url",
        auth,
        "--max-attempts",
        "2",
        "-q",
        env=credentials(emulator),
    )

    assert done.returncode == EXIT_GAVE_UP
    [line] = error_lines(done.stderr)
    assert "check --auth-url / --region (JITTERLINE_AUTH_URL)" in line
    assert f"check that '{emulator.ws_url}'" not in line


def test_an_unreachable_endpoint_says_each_attempt_and_gives_up_naming_the_flag() -> None:
    url = f"ws://127.0.0.1:{closed_port()}/x"
    done = jitterline("run", url, "--max-attempts", "3")

    assert done.returncode == EXIT_GAVE_UP
    attempts = [line for line in done.stderr.splitlines() if " failed (" in line]
    assert [re.sub(r"\(.*\)", "(...)", a).split("; next in")[0] for a in attempts] == [
        "jitterline: warning: attempt 1/3 failed (...)",
        "jitterline: warning: attempt 2/3 failed (...)",
    ]
    assert all(re.search(r"; next in \d+\.\d s$", a) for a in attempts)
    [line] = error_lines(done.stderr)
    assert line.startswith("jitterline: error: gave up after 3 attempts (--max-attempts 3)")
    assert f"check that {url!r} is up" in line
    assert len(done.stderr.splitlines()) <= 6


def test_run_gives_up_on_an_unreachable_endpoint_within_about_30_s_by_default() -> None:
    """The defaults' worst case (every delay at its full jitter), from the policy ``run``
    uses; a timed run would be a flaky test, so the schedule itself is summed."""
    initial_s, max_s = RUN_BACKOFF_S
    policy = BackoffPolicy(initial_s=initial_s, max_s=max_s)
    waits_s = [policy.step_s(n) * (1 + policy.jitter_ratio) for n in range(1, 10)]

    assert sum(waits_s) <= 30.0


# -- signals ----------------------------------------------------------------------------------


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_stops_like_ctrl_c_with_summary_end_line_and_exit_143(
    endless: Emulator, tmp_path: Path
) -> None:
    capture = tmp_path / "c.jsonl"
    process = subprocess.Popen(
        command("run", endless.ws_url, "--auth-url", endless.auth_url, "--record", str(capture)),
        env=credentials(endless),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: capture.exists() and len(capture.read_text().splitlines()) > 30, "audio")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()

    assert process.returncode == EXIT_TERMINATED, err
    assert json.loads(out)["frames"]["balanced"] is True
    assert json.loads(capture.read_text().splitlines()[-1])["kind"] == "end"
    assert "stopped by SIGTERM" in err
    assert "Traceback" not in err


def in_main(pid: int) -> bool:
    """The command is past the interpreter's start: its plugins import numpy."""
    try:
        return "numpy" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("after_s", [0.0, 0.2, 0.5, 1.0])
def test_ctrl_c_at_any_moment_of_start_up_exits_130_without_a_traceback(
    after_s: float,
) -> None:
    process = subprocess.Popen(
        command("demo", "--duration", "2"),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: in_main(process.pid) or process.poll() is not None, "start-up")
        time.sleep(after_s)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()

    assert process.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


# -- plugins ----------------------------------------------------------------------------------


@pytest.fixture
def broken_plugin(tmp_path: Path) -> dict[str, str]:
    """An installed distribution whose ``jitterline`` entry point names a missing module."""
    dist = tmp_path / "site" / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[jitterline]\nbroken = no_such_module:plugin\n")
    env = environment()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "site")
    return env


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["plugins"], ["demo", "--help"]])
def test_a_broken_plugin_is_named_once_and_skipped(
    broken_plugin: dict[str, str], args: list[str]
) -> None:
    done = jitterline(*args, env=broken_plugin)

    assert done.returncode == EXIT_OK, done.stderr
    if args != ["--version"]:
        [warning] = done.stderr.splitlines()
        assert "plugin 'broken'" in warning
        assert f"{DISABLE_ENV}=broken" in warning


def test_a_plugin_failing_to_add_its_options_is_named_once_and_skipped(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "raising_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raising-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[jitterline]\nraising = raising_plugin:plugin\n")
    (site / "raising_plugin.py").write_text(
        "from jitterline import hookimpl\n"
        "class Raising:\n"
        "    @hookimpl\n"
        "    def jitterline_add_options(self, parser):\n"
        "        parser.add_argument('--json')  # clashes with the command's own\n"
        "plugin = Raising()\n"
    )
    env = environment()
    env["PYTHONPATH"] += os.pathsep + str(site)

    done = jitterline("demo", "--help", env=env)

    assert done.returncode == EXIT_OK
    [warning] = done.stderr.splitlines()
    assert warning.startswith("jitterline: warning: plugin 'raising' is skipped: it failed")
    assert "conflicting option string: --json" in warning


def test_plugins_json_lists_the_broken_one_too(broken_plugin: dict[str, str]) -> None:
    done = jitterline("plugins", "--json", env=broken_plugin)

    listed = {row["name"]: row for row in json.loads(done.stdout)["plugins"]}
    assert listed["wav_sink"]["enabled"] is True
    assert "jitterline_frame_played" in listed["wav_sink"]["hooks"]
    assert "ModuleNotFoundError" in listed["broken"]["broken"]


def test_a_library_host_loads_no_installed_plugin_unless_asked(
    broken_plugin: dict[str, str],
) -> None:
    script = (
        "from jitterline import PluginHost\n"
        "print(sorted(i.name for i in PluginHost().info()), PluginHost().broken)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=broken_plugin,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )

    assert done.stdout.strip() == "[] {}"
    assert done.stderr == ""


def test_a_disabled_plugins_option_says_which_plugin_and_how_to_enable_it() -> None:
    done = jitterline("demo", "--wav", "a.wav", env=environment(**{DISABLE_ENV: "wav_sink"}))

    assert done.returncode == EXIT_USAGE
    assert "unrecognized arguments: --wav a.wav" in done.stderr
    assert "--wav belongs to plugin 'wav_sink', which is disabled" in done.stderr
    assert "pass --enable wav_sink" in done.stderr


def test_an_unknown_name_in_the_disable_variable_warns() -> None:
    done = jitterline("plugins", env=environment(**{DISABLE_ENV: "nosuch"}))

    assert done.returncode == EXIT_OK
    assert f"{DISABLE_ENV} names nosuch" in done.stderr


def test_the_cli_names_the_hosts_variable() -> None:
    assert DISABLE_ENV == HOST_DISABLE_ENV  # kept apart only so that -V stays cheap


# -- the parser -------------------------------------------------------------------------------


def test_version_loads_no_heavy_module() -> None:
    script = (
        "import sys\nfrom jitterline.cli import main\nmain(['-V'])\n"
        "heavy = ('numpy', 'reactivex', 'websockets', 'websocket', 'pluggy', 'rich', 'requests')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )

    assert done.stdout.splitlines() == ["jitterline 0.1.0", "[]"]


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flags(flag: str) -> None:
    done = jitterline(flag)

    assert (done.returncode, done.stdout) == (EXIT_OK, "jitterline 0.1.0\n")


def test_no_command_prints_the_help_on_stderr_and_exits_2() -> None:
    done = jitterline()

    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert "start with: jitterline demo" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "plugins"],
        ["plugins", "-v"],
        ["--log-level", "info", "plugins"],
        ["plugins", "--log-level", "info"],
        ["--debug", "plugins"],
        ["plugins", "--debug"],
        ["-q", "plugins"],
    ],
)
def test_global_options_go_before_or_after_the_command(args: list[str]) -> None:
    assert jitterline(*args).returncode == EXIT_OK


def test_abbreviated_options_are_refused() -> None:
    done = jitterline("demo", "--dur", "1")

    assert done.returncode == EXIT_USAGE
    assert "unrecognized arguments: --dur" in done.stderr


# -- the live view shows what the verdict rests on -----------------------------------------------


def test_the_plain_status_line_shows_the_server_delay_the_verdict_rests_on() -> None:
    done = jitterline("demo", "--profile", "slow-server", "--duration", "3")

    assert done.returncode == EXIT_OK, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("jitterline ")]
    assert lines
    assert all(len(line) <= 100 for line in lines)
    server = [int(re.search(r"server (\d+),", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert all(280 <= ms <= 340 for ms in server)
    assert "server_delay" in lines[-1]
    assert json.loads(done.stdout)["diagnosis"]["verdict"] == "server_delay"


# -- README -------------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_sets_up_in_a_fresh_virtual_environment_with_one_interpreter_name() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", readme_section("Set-up: two commands"), re.S)
    commands = [line for block in blocks for line in block.splitlines() if line and line[0] != "#"]

    assert commands[0] == "python -m venv .venv && . .venv/bin/activate"
    assert len(commands) == 3  # the environment, then the two commands
    assert all(re.findall(r"\bpython\d?\b", c) for c in commands)
    assert not any(re.search(r"\bpython3\b", c) for c in commands)


def test_readme_shows_the_demo_as_a_terminal_shows_it() -> None:
    """The block is the final table, then the diagnosis and the summary: the rows the live
    view has, in its order, and no line the README does not explain."""
    block = re.search(r"```text\n(.*?)```", readme_section("The demo"), re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    view = LiveView(max_attempts=10, duration_s=10.0)
    view.stats(Stats(at_s=1.0))
    labels = [label for label, _ in status_fields(view.shown())]

    table = [line.split()[0] for line in lines[: len(labels)]]
    assert table == [label.split()[0] for label in labels]
    assert lines[len(labels)].startswith("diagnosis: healthy: ")
    assert lines[len(labels) + 2] == "{"
    assert not any("warning" in line for line in lines)


def test_run_refuses_a_dialect_whose_platform_dials_us(capsys: pytest.CaptureFixture[str]) -> None:
    from jitterline.cli import main

    assert main(["run", "ws://127.0.0.1:9/x", "--dialect", "twilio", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "jitterline serve --dialect twilio" in err
