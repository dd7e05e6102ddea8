"""``jitterline analyze``: many captures on a real Dask cluster read exactly as each
replayed alone; a corrupt capture is one failed row; the report's keys are the documented
interface; without Dask, one line names the extra."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks.analyze import write_captures

from fuzz_testkit import only_this_checkouts_plugins
from jitterline.analyze import LOCAL_HTTP, Progress, expand_captures, scheduler_address
from jitterline.analyze_report import DISTRIBUTIONS, PERCENTILES, fleet_report
from jitterline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from jitterline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CALL_S = 3.0
CALLS = 6


@pytest.fixture(scope="module")
def plugin_env() -> Iterator[None]:
    """Only this checkout's plugins, here and in the cluster's worker processes (they
    inherit the environment when they start)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in only_this_checkouts_plugins().items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 3 s calls shaped by six trace models, and one capture cut mid-line."""
    directory = tmp_path_factory.mktemp("calls")
    good = write_captures(directory, CALLS, seconds=CALL_S)
    lines = good[0].read_text().splitlines()
    (directory / "call-99999.jsonl").write_text("\n".join([*lines[:2], lines[2][:25]]) + "\n")
    return directory


@pytest.fixture(scope="module")
def cluster(plugin_env: None) -> Iterator[str]:
    """A real LocalCluster of 2 worker processes (threads would share the plugins'
    module-level objects between concurrent replays); its scheduler's address."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=LOCAL_HTTP
    ) as local:
        yield str(local.scheduler_address)


def analyze(args: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    code = main(["analyze", *args, "--json", str(out)])
    return code, json.loads(out.read_text())


def alone(capture: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What ``jitterline replay CAPTURE`` prints, less ``run``; or its error line."""
    capsys.readouterr()
    code = main(["replay", capture, "--json", str(out)])
    err = capsys.readouterr().err
    if code == EXIT_USAGE:
        return {"error": err.strip().removeprefix("jitterline: error: ")}
    summary: dict[str, Any] = json.loads(out.read_text())
    del summary["run"]
    return summary


def as_alone(row: dict[str, Any]) -> dict[str, Any]:
    if not row["ok"]:
        return {"error": row["error"]}
    return {key: value for key, value in row["summary"].items() if key != "run"}


@pytest.fixture(scope="module")
def on_cluster(cluster: str, calls: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    host_port = cluster.removeprefix("tcp://")
    out = tmp_path_factory.mktemp("out") / "fleet.json"
    return analyze([str(calls), "--scheduler", f"dask://{host_port}", "-q"], out)


def test_on_an_existing_cluster_every_call_reads_as_its_replay_alone(
    on_cluster: Any, cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = on_cluster

    assert code == EXIT_FAILED  # the corrupt capture
    assert report["run"]["scheduler"] == cluster
    assert report["run"]["workers"] == 2
    captures = [row["capture"] for row in report["calls"]]
    assert captures == sorted(captures)  # input order, whatever order tasks finished in
    assert len(captures) == CALLS + 1
    for row in report["calls"]:
        assert as_alone(row) == alone(row["capture"], tmp_path / "one.json", capsys)
    verdicts = {row["summary"]["diagnosis"]["verdict"] for row in report["calls"] if row["ok"]}
    assert len(verdicts) > 1  # the fleet is not all one kind of call


def test_a_corrupt_capture_is_one_failed_row_in_words_and_the_rest_are_replayed(
    on_cluster: Any,
) -> None:
    _, report = on_cluster

    assert (report["replayed"], report["failed"]) == (CALLS, 1)
    (failure,) = report["failures"]
    assert failure["capture"].endswith("call-99999.jsonl")
    assert "line 3 is not JSON" in failure["error"]
    assert "Traceback" not in failure["error"]
    assert sum(report["verdicts"].values()) == CALLS


def test_a_local_cluster_of_2_workers_gives_the_same_rows(
    on_cluster: Any, calls: Path, tmp_path: Path, plugin_env: None
) -> None:
    code, report = analyze([str(calls), "--workers", "2"], tmp_path / "local.json")

    assert code == EXIT_FAILED
    assert report["run"]["scheduler"] == "local"
    assert report["calls"] == on_cluster[1]["calls"]


def test_workers_0_replays_in_this_process_with_the_same_rows(
    on_cluster: Any, calls: Path, tmp_path: Path, plugin_env: None
) -> None:
    code, report = analyze([str(calls), "--workers", "0"], tmp_path / "serial.json")

    assert code == EXIT_FAILED
    assert report["run"]["scheduler"] == "serial"
    assert report["calls"] == on_cluster[1]["calls"]
    without_run = {k: v for k, v in report.items() if k != "run"}
    assert without_run == {k: v for k, v in on_cluster[1].items() if k != "run"}


def test_every_capture_replayed_exits_0_and_says_so_on_stderr_without_a_progress_bar(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], plugin_env: None
) -> None:
    good = sorted(str(p) for p in calls.glob("call-0000*.jsonl"))

    code, report = analyze([*good, "--workers", "0"], tmp_path / "ok.json")

    err = capsys.readouterr().err
    assert code == EXIT_OK
    assert report["failed"] == 0
    assert f"analyze: {CALLS} captures in " in err
    assert f"{CALLS} replayed, 0 failed" in err
    assert "\r" not in err  # stderr is not a terminal: the final lines only


# -- the JSON report is an interface ------------------------------------------------------


def documented_keys(section: str) -> set[str]:
    """The first column of the table under ``section`` in docs/cli.md."""
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split(section, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `([^`]+)`", "|" + table, flags=re.MULTILINE))


def test_the_report_keys_are_those_docs_cli_md_lists(on_cluster: Any) -> None:
    _, report = on_cluster
    documented = documented_keys("### Fleet report")

    keys = set(report)
    keys |= {f"run.{k}" for k in report["run"]}
    keys |= {f"distributions.{name}" for name in report["distributions"]}
    keys |= {f"worst[].{k}" for k in report["worst"][0]}
    keys |= {f"failures[].{k}" for k in report["failures"][0]}
    keys |= {f"calls[].{k}" for k in report["calls"][0]}
    assert keys == documented
    assert set(report["distributions"]) == set(DISTRIBUTIONS)
    stats = {"calls", "mean", "max", *(f"p{q}" for q in PERCENTILES)}
    assert all(set(dist) == stats for dist in report["distributions"].values())


def summary_row(capture: str, verdict: str, late: float, delay_p95: float | None) -> Any:
    return {
        "capture": capture,
        "ok": True,
        "error": None,
        "summary": {
            "rates": {"late": late, "loss": 0.0},
            "delay_ms": {"p50": None, "p95": delay_p95},
            "jitter_ms": {"rfc3550": None},
            "buffer_ms": {"target": 40.0},
            "diagnosis": {"verdict": verdict, "summary": f"{verdict} call"},
        },
    }


def test_distributions_are_over_calls_and_leave_out_what_was_not_measured() -> None:
    rows = [
        summary_row(f"c{i}", "healthy", i / 10, None if i == 0 else 10.0 * i) for i in range(5)
    ]

    report = fleet_report(rows, run={})

    late = report["distributions"]["late_rate"]
    assert (late["calls"], late["p50"], late["max"], late["mean"]) == (5, 0.2, 0.4, 0.2)
    delay = report["distributions"]["delay_p95_ms"]
    assert (delay["calls"], delay["p50"], delay["max"]) == (4, 25.0, 40.0)
    assert report["distributions"]["jitter_ms"] == {
        "calls": 0,
        "mean": None,
        **{f"p{q}": None for q in PERCENTILES},
        "max": None,
    }


def test_worst_calls_put_a_diagnosed_call_before_any_healthy_one() -> None:
    rows = [
        summary_row("a", "healthy", 0.02, 50.0),
        summary_row("b", "server_delay", 0.0, 10.0),
        summary_row("c", "late", 0.05, 10.0),
        {"capture": "d", "ok": False, "error": "not a capture", "summary": None},
    ]

    report = fleet_report(rows, run={})

    assert [w["capture"] for w in report["worst"]] == ["c", "b", "a"]
    assert report["verdicts"] == {"healthy": 1, "late": 1, "server_delay": 1}
    assert report["failures"] == [{"capture": "d", "error": "not a capture"}]


# -- inputs, outputs, progress --------------------------------------------------------------


def test_directories_and_quoted_patterns_expand_to_their_captures_once(calls: Path) -> None:
    everything = sorted(str(p) for p in calls.glob("*.jsonl"))

    assert expand_captures([str(calls)]) == everything
    assert expand_captures([str(calls / "call-0000[01].jsonl"), str(calls)]) == [
        everything[0],
        everything[1],
        *everything[2:],
    ]
    with pytest.raises(ConfigError, match="holds no capture"):
        expand_captures([str(calls / "*.wav")])


def test_help_has_examples_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "0 every capture replayed, 1 some failed" in out


def test_a_json_report_that_would_overwrite_a_capture_is_a_usage_error(
    calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = str(calls / "call-00000.jsonl")

    assert main(["analyze", str(calls), "--workers", "0", "--json", capture]) == EXIT_USAGE
    assert "is one of the captures" in capsys.readouterr().err
    assert json.loads(Path(capture).read_text().splitlines()[0])["jitterline_capture"] == 1


def test_a_pattern_that_matches_nothing_is_a_usage_error(
    calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["analyze", str(calls / "nope-*.jsonl"), "--workers", "0"]) == EXIT_USAGE
    assert "holds no capture" in capsys.readouterr().err


def test_a_cluster_without_workers_is_a_usage_error_not_a_wait_for_ever(
    calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp", dashboard_address=LOCAL_HTTP
    ) as empty:
        given = str(empty.scheduler_address).replace("tcp://", "dask://")
        code = main(["analyze", str(calls / "call-00000.jsonl"), "--scheduler", given])

    assert code == EXIT_USAGE
    assert f"the Dask cluster at --scheduler {given!r} has no workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("dask://sched.internal:8786", "tcp://sched.internal:8786"),
        ("127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("tls://sched:8786", "tls://sched:8786"),
    ],
)
def test_scheduler_addresses_become_dask_addresses(given: str, address: str) -> None:
    assert scheduler_address(given) == address


@pytest.mark.parametrize("given", ["dask://sched", "http://sched:8786", "dask://:8786"])
def test_a_scheduler_address_without_host_and_port_is_refused_with_an_example(given: str) -> None:
    with pytest.raises(ConfigError, match=r"give one like dask://HOST:8786"):
        scheduler_address(given)


def test_report_dir_holds_markdown_json_and_a_plot(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], plugin_env: None
) -> None:
    report_dir = tmp_path / "fleet"
    some = [str(calls / name) for name in ("call-00000.jsonl", "call-00001.jsonl")]
    corrupt = str(calls / "call-99999.jsonl")

    code = main(["analyze", *some, corrupt, "--workers", "0", "--report", str(report_dir)])

    assert code == EXIT_FAILED
    assert capsys.readouterr().out == ""  # the JSON went to the directory, not stdout
    markdown = (report_dir / "report.md").read_text()
    report = json.loads((report_dir / "analyze.json").read_text())
    worst = report["worst"][0]
    assert f"`{worst['capture']}` | {worst['verdict']} |" in markdown
    assert "call-99999.jsonl" in markdown.split("## Failed captures", 1)[1]
    assert (report_dir / "fleet.png").read_bytes().startswith(b"\x89PNG")
    assert "](fleet.png)" in markdown


def run_blocked(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter where ``module`` cannot be imported."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from jitterline.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, **only_this_checkouts_plugins()}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_without_dask_one_line_names_the_extra_and_exits_2(calls: Path, tmp_path: Path) -> None:
    done = run_blocked("dask", ["analyze", str(calls)], tmp_path)

    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().splitlines() == [
        "jitterline: error: jitterline analyze runs on Dask, which is not installed: pip "
        "install 'jitterline[fleet]' (or pass --workers 0 to replay in this process)"
    ]
    assert done.stdout == ""


def test_without_matplotlib_the_report_is_written_with_one_line_and_no_plot(
    calls: Path, tmp_path: Path
) -> None:
    good = str(calls / "call-00000.jsonl")
    done = run_blocked(
        "matplotlib", ["analyze", good, "--workers", "0", "--report", "fleet"], tmp_path
    )

    assert done.returncode == EXIT_OK, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "matplotlib" in line]
    assert warnings == [
        "jitterline: warning: --report: no plots: matplotlib is not installed; "
        "pip install 'jitterline[report]'"
    ]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "fleet" / "fleet.png").exists()
    assert "fleet.png" not in (tmp_path / "fleet" / "report.md").read_text()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_counter_redraws_in_place_then_clears() -> None:
    now = [0.0]
    stream = Terminal()
    progress = Progress(stream, 3, live=True, every_s=1.0, clock=lambda: now[0])
    ok = {"ok": True}

    progress.add(ok)
    now[0] = 0.5
    progress.add({"ok": False})  # within every_s: not drawn
    now[0] = 2.0
    progress.add(ok)
    progress.close()

    assert stream.getvalue() == (
        "\ranalyze: 1/3 replayed, 0 failed, 0 s\ranalyze: 3/3 replayed, 1 failed, 2 s\r\033[K"
    )
