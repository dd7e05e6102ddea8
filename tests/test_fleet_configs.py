"""deploy/'s configs as the real tools read them: ``haproxy -c`` on the rendered
template, ``promtool check config`` and ``check rules``; and the pure helpers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from jitterline.server.fleet import binary, render_haproxy, write_prometheus
from jitterline.server.workers import parse_workers

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TEMPLATE = (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_template_gets_one_checked_server_line_per_worker() -> None:
    text = render_haproxy(
        TEMPLATE,
        bind=":443 ssl crt /etc/haproxy/voice.pem",
        stats_bind="127.0.0.1:8404",
        servers=[("127.0.0.1", 9000), ("127.0.0.1", 9001)],
    )
    assert "    server w0 127.0.0.1:9000 check\n    server w1 127.0.0.1:9001 check" in text
    assert "bind :443 ssl crt /etc/haproxy/voice.pem\n" in text
    assert "${" not in text and "$servers" not in text


@pytest.mark.skipif(binary("haproxy") is None, reason="needs haproxy (apt-get install haproxy)")
def test_haproxy_accepts_the_rendered_template(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    servers = [("127.0.0.1", 9000 + i) for i in range(3)]
    config.write_text(
        render_haproxy(
            TEMPLATE, bind="127.0.0.1:8080", stats_bind="127.0.0.1:8404", servers=servers
        )
    )
    checked = run(str(binary("haproxy")), "-c", "-f", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ALERT" not in checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr


@pytest.mark.skipif(
    binary("promtool") is None, reason="needs promtool (apt-get install prometheus)"
)
def test_promtool_accepts_the_scrape_config_and_every_rule_file(tmp_path: Path) -> None:
    promtool = str(binary("promtool"))
    shipped = run(promtool, "check", "config", str(DEPLOY / "prometheus.yml"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    rules = sorted(map(str, (DEPLOY / "rules").glob("*.yml")))
    checked = run(promtool, "check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(rules) == 2
    # the copy the fleet test runs, with its short intervals and its own targets
    config = write_prometheus(DEPLOY, tmp_path, jitterline=[9100, 9101], interval_s=0.5)
    assert "scrape_interval: 500ms" in config.read_text(encoding="utf-8")
    rerun = run(promtool, "check", "config", str(config))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


def test_workers_auto_is_one_per_usable_core() -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parse_workers("auto") == usable
    assert parse_workers("3") == 3
    for bad in ("0", "-1", "many", "257"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_workers(bad)


def test_the_shipped_targets_are_valid_file_sd() -> None:
    for name in ("jitterline.json", "haproxy.json"):
        groups = json.loads((DEPLOY / "targets" / name).read_text(encoding="utf-8"))
        assert all(isinstance(g["targets"], list) and g["targets"] for g in groups)
