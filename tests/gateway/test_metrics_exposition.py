"""The exposition's parts without a gateway: label policy, settings, token, sources, both servers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litellm_pglog.exposition import (
    HASH_LIKE,
    KEY_LABELS,
    REDACTED,
    ExporterServer,
    ExpositionSettings,
    LabelPolicy,
    MetricsEndpoint,
    MultiprocessSource,
    Scraper,
    load_exposition_settings,
    main,
    parse_listen,
)
from litellm_pglog.settings import Settings, SettingsError
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4
TOKEN = "scrape-token-for-tests"


def family(name: str, typ: str, *samples: tuple[str, dict[str, str], float]) -> Metric:
    metric = Metric(name, f"{name} help", typ)
    for sample_name, labels, value in samples:
        metric.add_sample(sample_name, labels, value)
    return metric


def requests_family() -> Metric:
    test = {"hashed_api_key": HASH_A, "api_key_alias": "TEST_KEY", "model": "m"}
    poc = {"hashed_api_key": HASH_B, "api_key_alias": "POC_KEY", "model": "m"}
    return family(
        "litellm_requests",
        "counter",
        ("litellm_requests_total", test, 2),
        ("litellm_requests_total", poc, 3),
        ("litellm_requests_created", test, 20),
        ("litellm_requests_created", poc, 10),
    )


def samples_of(metric: Metric) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric.samples}


# ---- label policy --------------------------------------------------------------------------------


def test_hash_like_values_are_redacted_and_samples_that_became_equal_summed():
    [result] = LabelPolicy().apply([requests_family()])

    def key(name: str, alias: str) -> tuple:
        return name, (("api_key_alias", alias), ("hashed_api_key", REDACTED), ("model", "m"))

    assert samples_of(result) == {
        key("litellm_requests_total", "TEST_KEY"): 2,
        key("litellm_requests_total", "POC_KEY"): 3,
        key("litellm_requests_created", "TEST_KEY"): 20,
        key("litellm_requests_created", "POC_KEY"): 10,
    }
    merged = family("x", "counter", ("x_total", {"id": HASH_A}, 1), ("x_total", {"id": HASH_B.upper()}, 4))
    [result] = LabelPolicy().apply([merged])
    assert samples_of(result) == {("x_total", (("id", REDACTED),)): 5}


def test_a_salt_gives_short_stable_ids_that_are_not_the_hash():
    policy = LabelPolicy(salt=b"secret salt")
    [first] = policy.apply([requests_family()])
    [again] = LabelPolicy(salt=b"secret salt").apply([requests_family()])
    [other_salt] = LabelPolicy(salt=b"another salt").apply([requests_family()])
    ids = {s.labels["hashed_api_key"] for s in first.samples}
    assert len(ids) == 2 and all(value.startswith("h-") and len(value) == 18 for value in ids)
    assert ids == {s.labels["hashed_api_key"] for s in again.samples}
    assert ids.isdisjoint(s.labels["hashed_api_key"] for s in other_salt.samples)
    # Also inside a longer value (a prefixed key hash, a sha512): never 64 hex in a row.
    [prefixed] = policy.apply([family("y", "gauge", ("y", {"k": f"sk-{HASH_A}{HASH_B}"}, 1))])
    assert not HASH_LIKE.search(prefixed.samples[0].labels["k"])


def test_without_key_labels_they_are_removed_and_series_summed():
    histogram = family(
        "latency_seconds",
        "histogram",
        *(
            (f"latency_seconds_{part}", {"user": user, "api_key_alias": user, **le}, value)
            for user, scale in (("u1", 1), ("u2", 10))
            for part, le, value in (
                ("bucket", {"le": "0.5"}, 1 * scale),
                ("bucket", {"le": "+Inf"}, 2 * scale),
                ("count", {}, 2 * scale),
                ("sum", {}, 0.75 * scale),
            )
        ),
    )
    policy = LabelPolicy(dropped=KEY_LABELS)
    counter, latency = policy.apply([requests_family(), histogram])
    assert samples_of(counter) == {
        ("litellm_requests_total", (("model", "m"),)): 5,
        ("litellm_requests_created", (("model", "m"),)): 10,  # the earliest creation time
    }
    assert samples_of(latency) == {
        ("latency_seconds_bucket", (("le", "0.5"),)): 11,
        ("latency_seconds_bucket", (("le", "+Inf"),)): 22,
        ("latency_seconds_count", ()): 22,
        ("latency_seconds_sum", ()): 8.25,
    }
    assert (latency.name, latency.type, latency.documentation) == (
        "latency_seconds",
        "histogram",
        "latency_seconds help",
    )


def test_other_labels_and_families_pass_unchanged():
    gauge = family("pglog_queue_depth", "gauge", ("pglog_queue_depth", {}, 3))
    labelled = family("up", "gauge", ("up", {"model": "gpt-4o-mini", "pid": "12"}, 1))
    assert [samples_of(m) for m in LabelPolicy(KEY_LABELS).apply([gauge, labelled])] == [
        samples_of(gauge),
        samples_of(labelled),
    ]


# ---- settings ------------------------------------------------------------------------------------


def test_settings_from_the_environment(tmp_path):
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    (tmp_path / "salt").write_text("pepper")
    settings = load_exposition_settings(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "LITELLM_PGLOG_METRICS_LISTEN": "[::1]:9500",
            "LITELLM_PGLOG_METRICS_TOKEN_FILE": str(tmp_path / "token"),
            "LITELLM_PGLOG_METRICS_KEY_LABELS": "false",
            "LITELLM_PGLOG_METRICS_LABEL_SALT_FILE": str(tmp_path / "salt"),
        }
    )
    assert settings == ExpositionSettings(tmp_path, "::1", 9500, False, TOKEN, b"pepper")
    assert TOKEN not in repr(settings)
    assert load_exposition_settings({}) == ExpositionSettings()
    assert load_exposition_settings({}, key_labels_default=False).key_labels is False
    assert parse_listen("10.0.0.5:4001") == ("10.0.0.5", 4001)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LITELLM_PGLOG_METRICS_LISTEN": "9464"}, "host:port"),
        ({"LITELLM_PGLOG_METRICS_LISTEN": "localhost:99999"}, "host:port"),
        ({"LITELLM_PGLOG_METRICS_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
        ({"LITELLM_PGLOG_METRICS_KEY_LABELS": "maybe"}, "not a boolean"),
    ],
)
def test_bad_settings_are_refused(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_exposition_settings(environ)


def test_an_empty_token_file_is_refused(tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        load_exposition_settings({"LITELLM_PGLOG_METRICS_TOKEN_FILE": str(tmp_path / "token")})


# ---- the multiprocess files ----------------------------------------------------------------------


def write_value(directory: Path, file_name: str, metric: str, sample: str, value: float) -> None:
    values = MmapedDict(str(directory / file_name))
    values.write_value(mmap_key(metric, sample, [], [], f"{metric} help"), value, 0.0)
    values.close()


def test_live_gauges_of_dead_workers_are_skipped_their_counters_kept(tmp_path):
    for pid, rows, depth in ((100, 5, 2), (200, 7, 3)):
        write_value(tmp_path, f"counter_{pid}.db", "pglog_rows_written", "pglog_rows_written_total", rows)
        write_value(tmp_path, f"gauge_livesum_{pid}.db", "pglog_queue_depth", "pglog_queue_depth", depth)
    families = {m.name: m for m in MultiprocessSource(tmp_path, is_running=lambda pid: pid == 200).collect()}
    assert samples_of(families["pglog_rows_written"]) == {("pglog_rows_written_total", ()): 12}
    assert samples_of(families["pglog_queue_depth"]) == {("pglog_queue_depth", ()): 3}


def test_the_queue_depth_gauge_sums_over_living_workers(tmp_path):
    # A process of its own: prometheus_client picks multiprocess mode when first imported.
    script = "from litellm_pglog.metrics import SERIES; SERIES.queue_depth.set(4); SERIES.rows_written.inc(6)"
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=environment, check=True, timeout=60)
    families = {m.name: m for m in MultiprocessSource(tmp_path, is_running=lambda pid: True).collect()}
    assert samples_of(families["pglog_queue_depth"]) == {("pglog_queue_depth", ()): 4}  # no pid label
    assert samples_of(families["pglog_rows_written"])[("pglog_rows_written_total", ())] == 6


def test_the_spool_backlog_is_measured_on_disk_at_each_scrape(tmp_path):
    workers, spool_dir = tmp_path / "workers", tmp_path / "spool"
    workers.mkdir()
    spool_dir.mkdir()
    settings = ExpositionSettings(multiproc_dir=workers, spool_dir=spool_dir)

    def backlog() -> dict[str, float]:
        text = Scraper(settings).render().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    assert backlog()["pglog_spool_files"] == 0 and backlog()["pglog_spool_oldest_record_age_seconds"] == 0
    ten_minutes_ago = time.time_ns() - 600 * 10**9
    (spool_dir / f"pglog-11-{ten_minutes_ago:x}.jsonl").write_bytes(b'{"request_id":"a"}\n')
    (spool_dir / f"pglog-12-{time.time_ns():x}.jsonl").write_bytes(b'{"request_id":"b"}\n')
    (spool_dir / f"journal-13-{ten_minutes_ago - 10**12:x}.jsonl").write_bytes(b"{}\n")  # live memory
    (spool_dir / "rejected-14.jsonl").write_bytes(b"{}\n")  # refused for good, never replayed
    values = backlog()
    assert values["pglog_spool_files"] == 2
    assert values["pglog_spool_bytes"] == 2 * len(b'{"request_id":"a"}\n')
    assert 600 <= values["pglog_spool_oldest_record_age_seconds"] < 660
    assert "pglog_spool_files" not in Scraper(ExpositionSettings(multiproc_dir=workers)).render().decode()


def test_a_missing_directory_answers_503(tmp_path):
    answer = Scraper(ExpositionSettings(multiproc_dir=tmp_path / "gone")).answer(None)
    assert answer.status == 503 and b"does not exist" in answer.body


# ---- serving -------------------------------------------------------------------------------------


class FixedSource:
    def collect(self):
        return [requests_family()]


def scraper(**settings) -> Scraper:
    return Scraper(ExpositionSettings(**settings), FixedSource())


def test_the_token_is_checked_before_anything_is_rendered():
    guarded = scraper(token=TOKEN)
    for authorization in (None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        answer = guarded.answer(authorization)
        assert (answer.status, dict(answer.headers)) == (401, {"WWW-Authenticate": "Bearer"})
        assert b"litellm" not in answer.body
    assert guarded.answer(f"Bearer {TOKEN}").status == 200
    assert guarded.answer(f"bearer  {TOKEN} ").status == 200
    assert scraper().answer(None).status == 200


def parse(body: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def asgi_get(app, path: str = "/metrics", method: str = "GET", token: str | None = None) -> httpx.Response:
    async def call() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(call())


def test_metrics_endpoint_is_an_asgi_app_checking_the_token():
    endpoint = MetricsEndpoint(Settings(), ExpositionSettings(token=TOKEN), FixedSource())
    refused = asgi_get(endpoint)
    assert refused.status_code == 401 and "litellm" not in refused.text
    served = asgi_get(endpoint, token=TOKEN)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")
    assert "litellm_requests_total" in served.text and not HASH_LIKE.search(served.text)
    assert asgi_get(endpoint, method="POST", token=TOKEN).status_code == 405
    head = asgi_get(endpoint, method="HEAD", token=TOKEN)
    assert head.status_code == 200 and head.content == b""


def test_metrics_endpoint_drops_key_labels_unless_turned_on(monkeypatch):
    monkeypatch.delenv("LITELLM_PGLOG_METRICS_KEY_LABELS", raising=False)
    monkeypatch.delenv("LITELLM_PGLOG_METRICS_TOKEN_FILE", raising=False)
    rendered = asgi_get(MetricsEndpoint(Settings(), source=FixedSource())).content
    [total] = parse(rendered)["litellm_requests"]
    assert (total.labels, total.value) == ({"model": "m"}, 5)
    monkeypatch.setenv("LITELLM_PGLOG_METRICS_KEY_LABELS", "true")
    text = asgi_get(MetricsEndpoint(Settings(), source=FixedSource())).text
    assert 'api_key_alias="TEST_KEY"' in text


@pytest.fixture
def exporter_url() -> Iterator[str]:
    server = ExporterServer(ExpositionSettings(port=0), scraper())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_serves_metrics_only_on_its_path(exporter_url):
    served = httpx.get(f"{exporter_url}/metrics")
    assert served.status_code == 200 and "litellm_requests_total" in served.text
    assert not HASH_LIKE.search(served.text)
    assert httpx.get(f"{exporter_url}/metrics/").status_code == 200
    assert httpx.get(f"{exporter_url}/").status_code == 404


def test_the_exporter_health_says_ok_and_nothing_else(exporter_url):
    health = httpx.get(f"{exporter_url}/health")
    assert (health.status_code, health.text) == (200, "ok\n")


def test_the_command_line_prints_one_rendering_or_says_what_is_missing(tmp_path, monkeypatch, capsysbinary):
    write_value(tmp_path, "counter_1.db", "pglog_rows_written", "pglog_rows_written_total", 9)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert main(["--print"]) == 0
    assert b"pglog_rows_written_total 9.0" in capsysbinary.readouterr().out
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "gone"))
    assert main(["--print"]) == 1
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with pytest.raises(SystemExit) as exit_status:
        main(["--print"])
    assert exit_status.value.code == 2
    assert b"PROMETHEUS_MULTIPROC_DIR is not set" in capsysbinary.readouterr().err


def test_the_exporter_does_not_import_litellm():
    script = "import json, sys, litellm_pglog.exposition; print(json.dumps(sorted(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    modules = json.loads(imported.stdout)
    assert not [name for name in modules if name.split(".")[0] in ("litellm", "fastapi", "starlette")]
