"""The benchmark report: rows from the scripts' --json files into docs/benchmarks.md.

No benchmark runs here: the rows are made up, and the test checks how they are read,
oriented (ratio above 1 means the broker does better, whichever way is better), judged
against their targets and laid out.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench._report import (
    Result,
    Row,
    machine,
    parse_target,
    read_rows,
    render,
    target_met,
    write_rows,
)
from bench.all import jobs
from bench.issue import Run, default_config_rows
from bench.revoke import Refusal, report_rows
from bench.revoke import Result as Propagation

MACHINE = {"CPUs (nproc)": "2", "CPU model": "Test CPU", "git commit": "abc123"}


def _table(markdown: str) -> list[list[str]]:
    """Header, separator and rows; cells split on unescaped bars."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [
        [
            cell.strip().replace("\x00", "\\|")
            for cell in line.replace("\\|", "\x00").strip("|").split("|")
        ]
        for line in lines
    ]


def test_ratio_is_oriented_so_that_above_one_means_the_broker_does_better() -> None:
    rate = Row("issuance", broker=6000, peer=4000, unit="keys/s", higher_is_better=True)
    time = Row("revocation", broker=0.2, peer=3.8, unit="s", higher_is_better=False)
    slower = Row("lookup", broker=2000, peer=8000, unit="requests/s", higher_is_better=True)
    assert rate.ratio == pytest.approx(1.5)
    assert time.ratio == pytest.approx(19.0)
    assert slower.ratio == pytest.approx(0.25)
    assert Row("scan", 80, None, "MB/s", True).ratio is None
    assert Row("broken", 0, 10, "s", False).ratio is None


def test_targets_on_the_ratio_and_on_the_broker_figure() -> None:
    fast = Row("revocation", 0.3, 3.8, "s", False, ">= 7x, < 0.5")
    slow_but_fast_enough = Row("revocation", 0.7, 7.0, "s", False, ">= 7x, < 0.5")
    assert target_met(fast) is True
    assert target_met(slow_but_fast_enough) is False  # 10x, but not under 0.5 s
    assert target_met(Row("rss", 120, 100, "MB", False, "< 150")) is True
    assert target_met(Row("rss", 150, 100, "MB", False, "< 150")) is False
    assert target_met(Row("issuance", 5000, 4000, "keys/s", True, ">= 1.5x")) is False
    assert target_met(Row("issuance", 6000, 4000, "keys/s", True, ">= 1.5x")) is True
    assert target_met(Row("issuance", 6000, None, "keys/s", True, ">= 1.5x")) is None
    assert target_met(Row("p99", 3, 5, "ms", False)) is None
    for bad in ("1.5x", ">= x", "=> 2", ">= 1.5 y", ""):
        with pytest.raises(ValueError, match="target clause"):
            parse_target(bad)


def test_rows_round_trip_through_json_and_malformed_ones_are_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    rows = [
        Row("introspection", 9000.5, 7800.0, "requests/s", True, ">= 1x"),
        Row("scan", 80.0, None, "MB/s", True),
    ]
    write_rows(path, rows)
    written = json.loads(path.read_text())
    assert written[1] == {
        "name": "scan",
        "broker": 80.0,
        "peer": None,
        "unit": "MB/s",
        "higher_is_better": True,
    }
    assert read_rows(path) == rows
    write_rows(None, rows)  # without --json nothing is written

    for body, problem in (
        ({"name": "x"}, "expected a JSON list"),
        ([{"name": "x", "unit": "s", "broker": 1, "peer": None}], "higher_is_better"),
        ([{"name": "x", "unit": "s", "broker": "fast", "higher_is_better": True}], "broker"),
        (
            [
                {
                    "name": "x",
                    "unit": "s",
                    "broker": 1,
                    "peer": float("nan"),
                    "higher_is_better": True,
                }
            ],
            "peer",
        ),
        ([{"unit": "s", "broker": 1, "higher_is_better": True}], "needs a name"),
        (
            [{"name": "x", "unit": "s", "broker": 1, "higher_is_better": True, "target": "big"}],
            "target clause",
        ),
    ):
        path.write_text(json.dumps(body))
        with pytest.raises(ValueError, match=problem):
            read_rows(path)


def test_the_markdown_has_one_line_per_row_with_figures_ratio_target_and_verdict() -> None:
    results = [
        Result("SQLite, 1 worker", Row("key issuance", 6100, 3900, "keys/s", True, ">= 1.5x")),
        Result("PostgreSQL, 2 workers", Row("key issuance", 5000, 4000, "keys/s", True, ">= 1.5x")),
        Result("10,000 keys", Row("revoke | last key", 0.25, 3.8, "s", False, ">= 7x, < 0.5")),
        Result("one core", Row("broker scan", 72.4, None, "MB/s", True, ">= 50")),
        Result("1 worker", Row("p99 latency", 12.0, 35.0, "ms", False)),
    ]
    markdown = render(
        results,
        machine=MACHINE,
        command=".venv/bin/python bench/all.py --seconds 10",
        failures=[("memory (1 worker)", "exit 1\nTraceback: boom")],
        notes=["PostgreSQL was not reachable: its runs were skipped."],
    )
    assert markdown.startswith("# Benchmarks\n")
    assert ".venv/bin/python bench/all.py --seconds 10" in markdown
    for key, value in MACHINE.items():
        assert f"- {key}: {value}" in markdown
    table = _table(markdown)
    assert table[0] == ["measure", "setup", "unit", "broker", "peer", "ratio", "target", "met"]
    assert table[1] == ["---"] * 8
    assert table[2:] == [
        ["key issuance", "SQLite, 1 worker", "keys/s", "6,100", "3,900", "1.56x", "≥ 1.5x", "met"],
        [
            "key issuance",
            "PostgreSQL, 2 workers",
            "keys/s",
            "5,000",
            "4,000",
            "1.25x",
            "≥ 1.5x",
            "**unmet**",
        ],
        # a "|" in a name is escaped so the table keeps its columns
        [
            "revoke \\| last key",
            "10,000 keys",
            "s",
            "0.25",
            "3.80",
            "15.20x",
            "≥ 7x, < 0.5 s",
            "met",
        ],
        ["broker scan", "one core", "MB/s", "72.4", "—", "—", "≥ 50 MB/s", "met"],
        ["p99 latency", "1 worker", "ms", "12.0", "35.0", "2.92x", "—", "—"],
    ]
    assert "3 of 4 targets met." in markdown
    assert "PostgreSQL was not reachable" in markdown
    assert "memory (1 worker)" in markdown
    assert "Traceback: boom" in markdown


def test_the_machine_is_described_from_the_system_and_git() -> None:
    about = machine(datetime(2026, 5, 1, 12, 30, tzinfo=UTC))
    assert about["date"] == "2026-05-01 12:30 UTC"
    assert int(about["CPUs (nproc)"]) >= 1
    assert about["CPU model"]
    assert about["git commit"] != "unknown"


def test_issuance_is_also_measured_in_the_default_configuration() -> None:
    """Every issuance run of the suite runs the broker as users do too (INFO access log,
    scheduler on), beside the bench configuration, against the same peers."""
    issue = [job for job in jobs(seconds=10, workers=2, keys=10_000) if job.name == "issue"]
    default_alg = [job for job in issue if "--signing-alg" not in job.args]
    assert len(default_alg) == 3
    for job in default_alg:
        at = job.args.index("--configs")
        assert job.args[at + 1].split(",") == ["bench", "default"], job.args
    # And signing with RS256, held against the default algorithm, on SQLite and PostgreSQL.
    rs256 = [job for job in issue if "--signing-alg" in job.args]
    assert [job.setup for job in rs256] == [
        "SQLite, 1 worker, RS256",
        "PostgreSQL, 1 worker, RS256",
    ]
    for job in rs256:
        assert job.args[job.args.index("--signing-alg") + 1] == "RS256"
        assert "--against-default" in job.args


def test_default_configuration_rows_face_the_peer_and_the_bench_configuration() -> None:
    bench = [Run(2500, 6.0, 20.0, cpu_us_per_key=300), Run(2700, 5.0, 18.0, cpu_us_per_key=310)]
    durable = [Run(900, 16.0, 42.0), Run(880, 15.0, 40.0)]
    close = [Run(2400, 6.0, 21.0, cpu_us_per_key=320), Run(2500, 6.5, 22.0, cpu_us_per_key=330)]
    far = [Run(1800, 9.0, 30.0, cpu_us_per_key=450), Run(1900, 9.0, 31.0, cpu_us_per_key=470)]

    rows = {row.name: row for row in default_config_rows(close, bench, durable, "sqlite, 1 worker")}
    rate = rows["issuance keys/s (sqlite, 1 worker, default configuration)"]
    assert (rate.broker, rate.peer, rate.target) == (2450, 890, ">= 1.5x")
    p99 = rows["issuance p99 ms (sqlite, 1 worker, default configuration)"]
    assert (p99.broker, p99.peer, p99.higher_is_better, p99.target) == (21.5, 41.0, False, "< 10")
    gap = rows["issuance keys/s, default against bench configuration (sqlite, 1 worker)"]
    # Medians of the rounds: 2,450 against 2,600 keys/s is within 10%.
    assert gap.ratio == pytest.approx(2450 / 2600)
    assert target_met(gap) is True
    cpu = rows[
        "issuance broker CPU per key, default against bench configuration (sqlite, 1 worker)"
    ]
    assert (cpu.unit, cpu.higher_is_better, cpu.target) == ("us/key", False, None)
    assert cpu.ratio == pytest.approx(305 / 325)  # above 1 would mean the default is cheaper

    rows = {row.name: row for row in default_config_rows(far, bench, durable, "sqlite, 1 worker")}
    assert (
        target_met(rows["issuance keys/s, default against bench configuration (sqlite, 1 worker)"])
        is False
    )

    markdown = render(
        [Result("SQLite, 1 worker", row) for row in rows.values()], machine=MACHINE, command="x"
    )
    table = _table(markdown)
    gap_line = [line for line in table if line[0].startswith("issuance keys/s, default against")]
    assert gap_line == [
        [
            "issuance keys/s, default against bench configuration (sqlite, 1 worker)",
            "SQLite, 1 worker",
            "keys/s",
            "1,850",
            "2,600",
            "0.71x",
            "≥ 0.9x",
            "**unmet**",
        ]
    ]


def test_revocation_is_measured_by_selector_and_by_the_emergency_brake() -> None:
    """The suspend runs sit beside the selector runs: the same keys, replicas and time
    limit, on SQLite and across two PostgreSQL replicas."""
    revoke = [job for job in jobs(seconds=10, workers=2, keys=10_000) if job.name == "revoke"]
    assert [job.setup for job in revoke] == [
        "SQLite, 1 replica",
        "PostgreSQL, revoked on replica A, verifier on B",
        "SQLite, 1 replica, policy suspended",
        "PostgreSQL, policy suspended on replica A, verifier on B",
    ]
    for job in revoke:
        assert job.script == "revoke.py"
        assert job.args[job.args.index("--keys") + 1] == "10000"
        via = job.args[job.args.index("--via") + 1] if "--via" in job.args else "selector"
        assert via == ("suspend" if "suspended" in job.setup else "selector"), job.args
        on_postgres = job.setup.startswith("PostgreSQL")
        assert ("--replicas" in job.args) is on_postgres
        assert job.database == ("server" if on_postgres else "none")


def test_emergency_brake_rows_face_openbao_and_name_the_refused_key_request(
    tmp_path: Path,
) -> None:
    ours = Propagation(
        10_000,
        issue_seconds=5.0,
        last_seconds=0.08,
        all_seconds=1.9,
        all_rejected=10_000,
        pass_seconds=1.6,
        suspend_seconds=0.05,
        refusals=[
            Refusal("the replica that suspended", 403, "no-policy", 0.004),
            Refusal("the other replica", 201, None, 0.006),  # granted: no row, the run fails
        ],
    )
    peer = Propagation(10_000, 20.0, 1.2, 22.5, 10_000, 20.0)
    path = tmp_path / "rows.json"
    write_rows(path, report_rows(ours, peer, replicas=2, via="suspend"))
    rows = read_rows(path)  # as bench/all.py reads them
    setup = "PostgreSQL, policy suspended on replica A, verifier on B"
    table = _table(render([Result(setup, row) for row in rows], machine=MACHINE, command="x"))
    name = "emergency brake: policy of 10,000 keys suspended across replicas"
    assert table[2:] == [
        [
            f"{name}: suspend to last key refused",
            setup,
            "s",
            "0.080",
            "1.20",
            "15.00x",
            "< 1 s",
            "met",
        ],
        [f"{name}: suspend to all keys refused", setup, "s", "1.90", "22.5", "11.84x", "—", "—"],
        [
            "emergency brake across replicas: suspend returned to key request refused (403) "
            "on the replica that suspended",
            setup,
            "s",
            "0.004",
            "—",
            "—",
            "—",
            "—",
        ],
    ]

    # The selector runs keep their rows and target.
    selector = {row.name: row for row in report_rows(ours, peer, replicas=1, via="selector")}
    assert list(selector) == [
        "revocation of 10,000 keys: revoke to last key refused",
        "revocation of 10,000 keys: revoke to all keys refused",
    ]
    assert selector["revocation of 10,000 keys: revoke to last key refused"].target == (
        ">= 7x, < 0.5"
    )
