"""Console: the usage page over 30 days × 100 keys and the request log over 1,000,000 rows.

nobusy serves a data dir filled with a million usage rows (30 days, 100 keys, two aliases,
two upstreams; made by SQLite itself, the daily rollup filled as migration ``m012_console``
fills it). Headless Chromium (Debian's, driven by Playwright) signs in and opens the usage
page; measured: from navigation to the chart and table drawn, and from the page's fetch to
drawn. Baseline in the same run: the same page over an empty range (the page's fixed cost).
The request log's page time over HTTP: the first page, a page 900,000 rows deep (keyset), a
filtered page; and what the series query would cost without the rollup (a GROUP BY over the
raw rows, in-process). ``python -m bench.suites.console`` prints the figures.
"""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from bench import procs
from bench.suites.base import Context, Goal, Result, Suite, at_most, fmt, md_table
from nobusy.store.migrations import USAGE_DAILY_BACKFILL, USAGE_DAILY_TRIGGER

__all__ = ["SUITE", "run"]

ADMIN = "bench-console-admin-key-7f3a"
ROWS = 1_000_000
KEYS = 100
DAYS = 30
FIRST_DAY = "2026-11-01"
LAST_DAY = "2026-11-30"
CHROMIUM = Path("/usr/bin/chromium")
TARGET_MS = 1000.0
CONFIG = f"""
admin_key: "{ADMIN}"
upstreams:
  a: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
  b: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  chat: [a/m, b/m]
  code: [b/m]
readiness: process
"""


def fill(db: Path, rows: int = ROWS) -> float:
    """``rows`` usage rows and ``KEYS`` keys into ``db`` (open by a server: WAL); seconds."""
    started = time.monotonic()
    with closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT INTO keys (id, name, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            [(f"k{i}", f"team-{i:03d}", f"nb-{i:03d}", f"h{i}", "2026-10-01 00:00:00")
             for i in range(KEYS)],
        )  # fmt: skip
        # The rows through the trigger one by one would take minutes; the migration's
        # backfill makes the same rollup from them at once.
        conn.execute("DROP TRIGGER usage_daily_add")
        conn.execute(
            "INSERT INTO usage (time, request_id, key_id, alias, upstream, tried, outcome, "
            "prompt_tokens, completion_tokens, ttft_ms, duration_ms, report_cost_micros, "
            "first_choice_cost_micros) "
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            f"SELECT datetime('{FIRST_DAY}', '+' || (i * {DAYS * 86400} / ?) || ' seconds'), "
            "'req-' || i, 'k' || (i % 100), CASE WHEN i % 3 THEN 'chat' ELSE 'code' END, "
            "CASE WHEN i % 7 THEN 'a' ELSE 'b' END, "
            'CASE WHEN i % 7 THEN \'["a"]\' ELSE \'["a", "b"]\' END, '
            "CASE WHEN i % 40 THEN 'ok' ELSE 'all_upstreams_failed' END, "
            "200 + i % 50, 80 + i % 30, 150 + i % 90, 900 + i % 400, 1000 + i % 500, "
            "CASE WHEN i % 7 THEN NULL ELSE 800 END FROM c",
            (rows - 1, rows),
        )
        conn.execute("DELETE FROM usage_daily")
        conn.execute(USAGE_DAILY_BACKFILL)
        conn.execute(USAGE_DAILY_TRIGGER)
    return time.monotonic() - started


def _raw_series_ms(db: Path) -> float:
    """The series query over the raw rows (what the page would cost with no rollup)."""
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        started = time.perf_counter()
        conn.execute(
            "SELECT substr(time, 1, 10), key_id, COUNT(*), SUM(prompt_tokens + "
            "completion_tokens), SUM(report_cost_micros) FROM usage WHERE time >= ? "
            "GROUP BY 1, 2",
            (f"{FIRST_DAY} 00:00:00",),
        ).fetchall()
        return (time.perf_counter() - started) * 1000


def _get_ms(port: int, path: str, rounds: int) -> tuple[float, Any]:
    """The median time of ``rounds`` GETs of ``path`` (admin key), and the last body."""
    times, body = [], None
    for _ in range(rounds):
        conn = http.client.HTTPConnection(procs.HOST, port, timeout=60)
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
        response = conn.getresponse()
        data = response.read()
        times.append((time.perf_counter() - started) * 1000)
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {data[:200]!r}")
        body = json.loads(data)
    return statistics.median(times), body


def _browser(port: int, rounds: int) -> Result:
    from playwright.sync_api import sync_playwright

    url = f"http://{procs.HOST}:{port}"
    out: Result = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(url)
        page.evaluate(
            "(key) => fetch('/console/session', {method: 'POST', headers: "
            "{'Content-Type': 'application/json'}, body: JSON.stringify({admin_key: key})})",
            ADMIN,
        )
        for label, days in (("30 days × 100 keys", (FIRST_DAY, LAST_DAY)),
                            ("empty range (baseline)", ("2020-01-01", "2020-01-30"))):  # fmt: skip
            loads, draws = [], []
            for _ in range(rounds):
                page.goto("about:blank")
                page.goto(f"{url}/#/usage")
                page.wait_for_selector("#usage-body[data-rendered-ms]")
                # The page's own range (the last 30 days) was drawn first; now the one measured.
                page.fill("#usage-from", days[0])
                page.fill("#usage-to", days[1])
                page.evaluate("() => { delete document.getElementById('usage-body')"
                              ".dataset.renderedMs; }")  # fmt: skip
                started = page.evaluate("() => performance.now()")
                page.click("#usage-form button[type=submit]")
                page.wait_for_selector("#usage-body[data-rendered-ms]")
                ended = page.evaluate("() => performance.now()")
                loads.append(ended - started)
                draws.append(float(page.get_attribute("#usage-body", "data-rendered-ms") or 0))
            rows = page.locator("#usage-table tbody tr").count()
            out[label] = {
                "click_to_drawn_ms": statistics.median(loads),
                "fetch_to_drawn_ms": statistics.median(draws),
                "table_rows": rows,
            }
        browser.close()
    return out


def run(ctx: Context) -> Result:
    rounds = 3 if ctx.settings.quick else 7
    server = ctx.procs.nobusy("nobusy-console", None, config=CONFIG)
    db = ctx.procs.run_dir / "nobusy-console-data" / "nobusy.db"
    ctx.log(f"  filling {ROWS:,} usage rows over {DAYS} days and {KEYS} keys")
    seconds = fill(db)
    ctx.log(f"  filled in {seconds:.1f}s; measuring the API, then Chromium")
    series_ms, series = _get_ms(
        server.port, f"/v1/nobusy/usage/series?from={FIRST_DAY}&to={LAST_DAY}&by=key", rounds
    )
    first_ms, first = _get_ms(server.port, "/v1/nobusy/requests?limit=50", rounds)
    deep = base64.urlsafe_b64encode(json.dumps(["2026-11-03 00:00:00", 10**9]).encode()).decode()
    deep_ms, deep_page = _get_ms(server.port, f"/v1/nobusy/requests?limit=50&cursor={deep}", rounds)
    key_ms, _ = _get_ms(server.port, "/v1/nobusy/requests?limit=50&key=k42&status=error", rounds)
    raw_ms = statistics.median(_raw_series_ms(db) for _ in range(3))
    browser = _browser(server.port, rounds) if CHROMIUM.exists() else {"skipped": str(CHROMIUM)}
    return {
        "rows": ROWS,
        "fill_seconds": seconds,
        "series_groups": len(series["groups"]),
        "series_api_ms": series_ms,
        "raw_group_by_ms": raw_ms,
        "log_first_page_ms": first_ms,
        "log_deep_page_ms": deep_ms,
        "log_deep_page_first_time": deep_page["data"][0]["time"],
        "log_filtered_page_ms": key_ms,
        "log_first_rows": len(first["data"]),
        "browser": browser,
    }


def goals(result: Result) -> list[Goal]:
    page = result.get("browser", {}).get("30 days × 100 keys", {})
    return [
        at_most(
            "Console: usage page, 30 days × 100 keys, in Chromium",
            page.get("click_to_drawn_ms"),
            TARGET_MS,
            "ms",
            why="Chromium missing",
        ),
        at_most(
            "Console: a request log page 900,000 rows deep",
            result.get("log_deep_page_ms"),
            100,
            "ms",
        ),
    ]


def render(result: Result, img: Path) -> str:
    browser = result.get("browser", {})
    page_rows = [
        [label, fmt(b["click_to_drawn_ms"]), fmt(b["fetch_to_drawn_ms"]), str(b["table_rows"])]
        for label, b in browser.items()
        if isinstance(b, dict)
    ]
    api_rows = [
        ["usage series, 30 days by key (rollup)", fmt(result["series_api_ms"])],
        ["same figures by GROUP BY over the raw rows (no rollup, in-process)",
         fmt(result["raw_group_by_ms"])],
        ["request log, first page of 50", fmt(result["log_first_page_ms"])],
        ["request log, page 900,000 rows deep (keyset)", fmt(result["log_deep_page_ms"])],
        ["request log, one key's errors", fmt(result["log_filtered_page_ms"])],
    ]  # fmt: skip
    return "\n\n".join(
        [
            f"{result['rows']:,} usage rows over 30 days, 100 keys, 2 aliases, 2 upstreams "
            f"(made in {result['fill_seconds']:.1f} s); {result['series_groups']} keys in the "
            "series. Headless Chromium, medians: *click to drawn* is from pressing Apply to "
            "the chart, tiles and table drawn; *fetch to drawn* is the page's own timer.",
            md_table(
                ["usage page", "click to drawn ms", "fetch to drawn ms", "table rows"], page_rows
            ),  # fmt: skip
            md_table(["over HTTP (admin key), median", "ms"], api_rows),
        ]
    )


SUITE = Suite(
    name="console",
    title="Console: the usage page over 30 days × 100 keys, the request log over 1M rows",
    run=run,
    render=render,
    goals=goals,
)


if __name__ == "__main__":
    import argparse

    from bench.suites.base import RunSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    processes = procs.Processes(print)
    try:
        result = run(Context(RunSettings.make(args.quick), processes, print))
    finally:
        processes.stop_all()
    print(json.dumps(result, indent=2))
