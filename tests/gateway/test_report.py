"""litellm-pglog-report against a real PostgreSQL: known rows in, exact aggregates out.

The sample: a 3-hour window 2026-11-20 10:00..13:00 UTC, two keys, two models, one request
rejected before authentication (no key, no model, no response row), and two rows just outside
the window (the range is half-open: 13:00:00 is out).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from litellm_pglog.models import Request, Response
from litellm_pglog.report import cli
from litellm_pglog.report.window import Window, WindowError, parse_window
from sqlalchemy import create_engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitoring"))
from debian_tools import ensure_debian_package  # noqa: E402 - the tests' shared apt helper

SINCE, UNTIL = "2026-11-20T10:00:00Z", "2026-11-20T13:00:00Z"
# (time, key alias, model, status, latency ms, prompt, completion tokens); latency None: no response row
ROWS = [
    ("09:59:59", "team-a", "gpt-a", 200, 999.0, 99, 99),  # before the window
    ("10:00:00", None, None, 401, None, None, None),
    ("10:05:00", "team-a", "gpt-a", 200, 100.0, 10, 20),
    ("10:10:00", "team-a", "gpt-a", 200, 200.0, 10, 20),
    ("10:20:00", "team-a", "gpt-a", 500, 300.0, None, None),
    ("11:30:00", "team-a", "gpt-a", 200, 400.0, 5, 5),
    ("11:40:00", "team-b", "gpt-b", 429, 50.0, None, None),
    ("12:59:59", "team-b", "gpt-b", 200, 150.0, 1, 2),
    ("13:00:00", "team-b", "gpt-b", 200, 999.0, 99, 99),  # at the end: out
]
REPO = Path(__file__).resolve().parents[2]


def insert_rows(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for number, (time, key, model, status, latency, prompt, completion) in enumerate(ROWS):
            created = datetime.fromisoformat(f"2026-11-20T{time}+00:00")
            request = {"request_id": f"req-{number}", "created_at": created, "api_key": key}
            request |= {"model": model, "status_code": status, "route": "/v1/chat/completions"}
            (request_id,) = connection.execute(insert(Request).values(request).returning(Request.id)).one()
            if latency is not None:
                response = {"request_id_fk": request_id, "created_at": created, "latency_ms": latency}
                response |= {"prompt_tokens": prompt, "completion_tokens": completion}
                connection.execute(insert(Response).values(response))
    engine.dispose()


@pytest.fixture
def sample_url(migrated_url: str) -> str:
    insert_rows(migrated_url)
    return migrated_url


@pytest.fixture
def usage(sample_url: str) -> cli.Usage:
    return cli.make_report(sample_url, parse_window(SINCE, UNTIL))


def test_totals(usage: cli.Usage) -> None:
    total = usage.total
    assert (total.requests, total.errors, total.prompt_tokens, total.completion_tokens) == (7, 3, 26, 47)
    assert total.by_status == {200: 4, 401: 1, 429: 1, 500: 1}
    # percentile_cont over 50, 100, 150, 200, 300, 400 (the rejected request has no latency)
    assert total.p50_ms == pytest.approx(175.0)
    assert total.p95_ms == pytest.approx(375.0)
    assert total.error_rate == pytest.approx(3 / 7)
    assert total.per_hour(usage.window) == pytest.approx(7 / 3)


def test_per_key_alias(usage: cli.Usage) -> None:
    keys = {group.name: group for group in usage.by_key}
    assert [group.name for group in usage.by_key] == ["team-a", "team-b", "(none)"]  # busiest first
    a, b, none = keys["team-a"], keys["team-b"], keys["(none)"]
    assert (a.requests, a.errors, a.by_status, a.prompt_tokens, a.completion_tokens) == (
        4,
        1,
        {200: 3, 500: 1},
        25,
        45,
    )
    assert (a.p50_ms, a.p95_ms) == (pytest.approx(250.0), pytest.approx(385.0))
    assert (b.requests, b.errors, b.by_status, b.prompt_tokens, b.completion_tokens) == (
        2,
        1,
        {200: 1, 429: 1},
        1,
        2,
    )
    assert (b.p50_ms, b.p95_ms) == (pytest.approx(100.0), pytest.approx(145.0))
    assert (none.requests, none.errors, none.p50_ms, none.p95_ms, none.prompt_tokens) == (1, 1, None, None, 0)
    assert b.error_rate == pytest.approx(0.5)


def test_per_model(usage: cli.Usage) -> None:
    models = {group.name: (group.requests, group.errors, group.prompt_tokens) for group in usage.by_model}
    assert models == {"gpt-a": (4, 1, 25), "gpt-b": (2, 1, 1), "(none)": (1, 1, 0)}


def test_per_hour_buckets(usage: cli.Usage) -> None:
    buckets = [(bucket.hour.hour, bucket.requests, bucket.errors) for bucket in usage.hourly]
    assert buckets == [(10, 4, 2), (11, 2, 1), (12, 1, 0)]


def test_empty_window_gives_zero_rows(sample_url: str) -> None:
    usage = cli.make_report(sample_url, parse_window("2026-11-21T00:00:00Z", "2026-11-21T02:00:00Z"))
    assert (usage.total.requests, usage.total.p50_ms, usage.by_key, usage.by_model) == (0, None, [], [])
    assert [bucket.requests for bucket in usage.hourly] == [0, 0]


def test_command_prints_the_tables(sample_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LITELLM_DB_URL", sample_url)
    assert cli.main(["--since", SINCE, "--until", UNTIL]) == 0
    out = capsys.readouterr().out
    print(out)  # visible with pytest -s: the sample report for the README
    lines = out.splitlines()
    assert "Gateway usage 2026-11-20 10:00 .. 2026-11-20 13:00 UTC (3 h)" in lines[0]
    row = next(line for line in lines if line.startswith("team-a "))
    assert row.split() == ["team-a", "4", "1", "25.0", "200:3", "500:1", "250.0", "385.0", "25", "45", "1.33"]
    assert any(line.split() == ["2026-11-20", "10:00", "4", "2"] for line in lines)


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", None, "--since 'yesterday': expected a duration before now (90m, 24h, 7d, 2w)"),
        ("24x", None, "--since '24x': expected"),
        ("1h", "2h", "empty time range"),
    ],
)
def test_bad_window_is_one_clear_line(since: str, until: str | None, message: str, capsys) -> None:
    argv = ["--since", since] + (["--until", until] if until else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("litellm-pglog-report: error: ") and message in err and err.count("\n") == 1


def test_durations() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_window("90m", None, now) == Window(datetime(2026, 11, 27, 10, 30, tzinfo=UTC), now)
    assert parse_window("7d", "24h", now).hours == 6 * 24
    assert parse_window("2026-11-27T09:00", None, now).start == datetime(2026, 11, 27, 9, tzinfo=UTC)
    with pytest.raises(WindowError):
        parse_window("-1h", None, now)


def test_database_errors_never_show_the_password(pg_cluster, monkeypatch, capsys) -> None:
    url = pg_cluster.url_for("litellm_db", password="Wrong!Secret#1")
    monkeypatch.setenv("LITELLM_DB_URL", url)
    assert cli.main(["--since", "1h"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("litellm-pglog-report: error: ") and err.count("\n") == 1
    assert "Wrong!Secret" not in err and "Wrong%21Secret" not in err and "***" in err


def test_missing_url(monkeypatch, capsys) -> None:
    monkeypatch.delenv("LITELLM_DB_URL", raising=False)
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "litellm-pglog-report: error: LITELLM_DB_URL is not set\n"


def test_console_script_is_installed(sample_url: str, tmp_path: Path) -> None:
    program = Path(sys.executable).with_name("litellm-pglog-report")
    page = tmp_path / "report.html"
    environment = {**os.environ, "LITELLM_DB_URL": sample_url}
    done = subprocess.run(
        [program, "--since", SINCE, "--until", UNTIL, "--html", page],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "team-a" in done.stdout and page.read_text().count("<svg") == 5


# ---- the HTML page in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = ensure_debian_package("chromium", "chromium")
    if found is None:
        pytest.skip(
            "chromium is missing and could not be installed (Debian package 'chromium', needs root+apt)"
        )
    return found


def browse(chromium: str, page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *options]
    return subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


def test_html_page_shows_the_charts_in_chromium(chromium: str, usage: cli.Usage, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    cli.write_html(usage, page)
    dom = browse(chromium, page, "--dump-dom").stdout
    for chart in (
        "requests-per-hour",
        "requests-per-key",
        "requests-per-model",
        "latency-per-model",
        "tokens-per-model",
    ):
        start = dom.index(f'id="{chart}"')
        assert "<svg" in dom[start : start + 300], chart  # each figure holds its drawing
    assert dom.count("<svg") == 5 and dom.count("<path") > 50  # bars, axes, ticks
    assert "team-a" in dom and "gpt-b" in dom
    assert not re.search(r"(src|href)=\"(?!#)", dom), "the page must load nothing"
    screenshot = Path(os.environ.get("LITELLM_REPORT_SCREENSHOT", tmp_path / "report.png"))
    browse(chromium, page, f"--screenshot={screenshot}", "--window-size=1500,1500")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_html_without_matplotlib_gives_the_hint(usage: cli.Usage, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(cli.ReportError, match=r"pip install 'litellm-pglog\[report\]'"):
        cli.write_html(usage, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
