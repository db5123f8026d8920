"""``python -m backfill run`` end to end, as a subprocess, against the stand-in served by the test.

The stand-in runs on this test's event loop; the command runs through
``asyncio.create_subprocess_exec`` so the loop keeps answering while it works.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from runkit import (
    STANDIN_CREDENTIALS,
    Recorded,
    clean_env,
    recording_standin,
    rejects_by_row,
    rejects_lines,
    run_cli,
    uuid4s,
)

from backfill.config.settings import settings_for
from backfill.standin import (
    DEFAULT_SERVICE_ACCOUNT,
    FaultRates,
    Standin,
    StandinConfig,
    running_standin,
)

USER, SECRET = DEFAULT_SERVICE_ACCOUNT
EVENT_TIME = "2024-01-01T00:00:00Z"
EVENT_TIME_MS = 1_704_067_200_000
HEADER = ["anon_id", "identified_id"]
HASH_BUG = (
    "BUG: backfill/validation.py hash_strings/hash_strings_seeds mixes every string for as many "
    "8-byte words as the longest string hashed in the same call, so the same string hashes "
    "differently in another batch or reader chunk"
)


@dataclass
class Plan:
    """An input file and what the run must make of it."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    rejects: dict[int, str] = field(default_factory=dict)  # row -> validation reason
    refused: set[int] = field(default_factory=set)  # rows the server refuses

    def add(self, anon: str, ident: str, reason: str | None = None) -> int:
        """Append a row; return its number (1 = the first record after the header)."""
        self.rows.append((anon, ident))
        row = len(self.rows)
        if reason is not None:
            self.rejects[row] = reason
        return row

    def write(self, path: Path) -> Path:
        """Write the rows as CSV under the default header."""
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(self.rows)
        return path

    @property
    def valid_rows(self) -> list[int]:
        """Rows that pass validation."""
        return [r for r in range(1, len(self.rows) + 1) if r not in self.rejects]

    def imported_pairs(self) -> set[tuple[str, str]]:
        """The pairs the stand-in must end up holding."""
        return {self.rows[r - 1] for r in self.valid_rows if r not in self.refused}


def read_rejects(out: Path) -> tuple[list[str], dict[int, tuple[str, ...]]]:
    """rejects.csv's header, and row -> (anon, identified, reason, detail); each row once."""
    found = rejects_by_row(out, "anon_id", "identified_id", "reason", "detail")
    return rejects_lines(out)[0], found


def read_summary(out: Path) -> dict[str, Any]:
    """summary.json."""
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def run_args(input_path: Path, out: Path, standin: Standin, *extra: str) -> list[str]:
    """``run INPUT --out OUT --api-url STANDIN --no-progress EXTRA...``."""
    return [
        "run",
        str(input_path),
        "--out",
        str(out),
        "--api-url",
        standin.url,
        "--no-progress",
        *extra,
    ]


def all_output_bytes(out: Path) -> bytes:
    """Every file under ``out`` (hidden ones too), concatenated."""
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def no_traceback(text: str) -> None:
    """Assert no Python traceback reached the user."""
    assert "Traceback" not in text, text


# --- the 10,000-pair run under faults -----------------------------------------------------------


def ten_thousand(seed: int) -> Plan:
    """10,000 valid pairs (6 of them refused by the server) among invalid rows of every kind."""
    rng = random.Random(seed)
    fresh = iter(uuid4s(20_000, seed))
    plan = Plan()
    valid_seen: list[tuple[str, str]] = []
    refuse_slots = {997, 2500, 4001, 6666, 8123, 9999}
    n_valid = 0
    while n_valid < 10_000:
        if n_valid and n_valid % 500 == 0 and len(plan.rows) < n_valid + 300:
            a = next(fresh)
            plan.add("", "user-x", "missing_anon_id")
            plan.add("not-a-uuid", "user-x", "invalid_anon_id")
            plan.add(
                str(uuid.UUID(int=rng.getrandbits(128), version=1)), "user-x", "invalid_anon_id"
            )
            plan.add(next(fresh), "", "missing_identified_id")
            plan.add(next(fresh), "null", "invalid_identified_id")
            plan.add(next(fresh), "N/A", "invalid_identified_id")
            plan.add(next(fresh), "x" * 256, "invalid_identified_id")
            plan.add(a, a, "self_merge")
            plan.add(*rng.choice(valid_seen), "duplicate_pair")
            c = next(fresh)
            plan.add(c, f"conflict-{n_valid}-a", "conflicting_anon_id")
            plan.add(c, f"conflict-{n_valid}-b", "conflicting_anon_id")
        if n_valid in refuse_slots:
            ident = f"refuse-me-{n_valid}"
        elif n_valid % 97 == 0:
            ident = f"customer-{n_valid}@a-rather-long-company-domain.example.com"
        else:
            ident = f"user-{n_valid % 2500}"
        pair = (next(fresh), ident)
        row = plan.add(*pair)
        if n_valid in refuse_slots:
            plan.refused.add(row)
        valid_seen.append(pair)
        n_valid += 1
    return plan


async def test_ten_thousand_pairs_under_faults_import_exactly_once(tmp_path: Path) -> None:
    """10k pairs under 5% each of 503/429/drop/500-after-import: imported once, exact rejects."""
    # Every valid pair imported, resends identical, limits kept, rejects.csv = validation
    # rejects + the server's refusals at their source rows, summary right.
    plan = ten_thousand(seed=31)
    source = plan.write(tmp_path / "mappings.csv")
    refused_ids = frozenset(plan.rows[r - 1][1] for r in plan.refused)
    config = StandinConfig(
        refuse_distinct_ids=refused_ids,
        faults=FaultRates(p_503=0.05, p_429=0.05, p_drop=0.05, p_500_after_import=0.05, seed=7),
    )
    out = tmp_path / "out"
    async with running_standin(config) as standin:
        result = await run_cli(
            run_args(source, out, standin, "--retry-base-s", "0.01", "--batch-size", "100"),
            clean_env(STANDIN_CREDENTIALS),
            cwd=tmp_path,
        )
        state = standin.state
    assert result.code == 0, result.stderr
    no_traceback(result.stderr)

    # Every valid pair imported, nothing else; resends were identical events.
    assert state.identify_pairs() == plan.imported_pairs()
    assert len(state.store) == len(plan.imported_pairs()) == 10_000 - 6
    assert all(len(forms) == 1 for forms in state.forms.values()), state.conflicting_keys()
    assert len({k.time for k in state.store}) == 1
    faults = Counter(r.fault for r in state.requests)
    assert all(faults[f] > 0 for f in ("503", "429", "drop", "500_after_import")), faults
    assert state.duplicates > 0, "500-after-import should have made some pairs arrive twice"

    # No request over the limits.
    assert max(r.events for r in state.requests) <= 2000
    assert max(r.bytes_uncompressed for r in state.requests) <= 2_000_000
    assert 413 not in state.statuses()

    # rejects.csv: validation rejects plus the server's refusals, at their source rows.
    header, found = read_rejects(out)
    assert header[:5] == ["row", "anon_id", "identified_id", "reason", "detail"]
    expected = dict(plan.rejects) | {r: "api_rejected" for r in plan.refused}
    assert {row: v[2] for row, v in found.items()} == expected
    for row, (anon, ident, reason, detail) in found.items():
        assert (anon, ident) == plan.rows[row - 1], f"row {row} mapped to the wrong pair"
        if reason == "api_rejected":
            assert "refused" in detail

    # summary.json.
    summary = read_summary(out)
    assert summary["status"] == "completed"
    assert summary["rows_read"] == len(plan.rows)
    assert summary["rows_valid"] == 10_000
    assert summary["events_imported"] == 10_000 - 6
    reasons = Counter(plan.rejects.values())
    for code, count in summary["rejected"].items():
        want = len(plan.refused) if code == "api_rejected" else reasons.get(code, 0)
        assert count == want, code
    retried_5xx = sum(1 for r in state.requests if r.status in (500, 503))
    retried_429 = sum(1 for r in state.requests if r.status == 429)
    dropped = sum(1 for r in state.requests if r.status is None)
    assert summary["retries"] == {"5xx": retried_5xx, "429": retried_429, "connection": dropped}
    assert summary["requests"] == state.requests_count


async def test_default_limits_hold_with_long_escaped_ids(tmp_path: Path) -> None:
    """Default batch size: ~250-byte ids full of escapes are cut under 2 MB; none is over 2000."""
    rng = random.Random(5)
    plan = Plan()
    for i, anon in enumerate(uuid4s(4500, 41)):
        head = f"{i:05d}:"
        body = "".join(rng.choice('"\\a\t\x01') for _ in range(249 - len(head)))
        plan.add(anon, head + body + "z")  # ends in a letter: the reader trims whitespace
    source = plan.write(tmp_path / "long.csv")
    out = tmp_path / "out"
    async with running_standin() as standin:
        result = await run_cli(
            run_args(source, out, standin), clean_env(STANDIN_CREDENTIALS), cwd=tmp_path
        )
        state = standin.state
    assert result.code == 0, result.stderr
    assert state.identify_pairs() == plan.imported_pairs()
    assert state.statuses() == {200: state.requests_count}
    assert max(r.events for r in state.requests) <= 2000
    assert max(r.bytes_uncompressed for r in state.requests) <= 2_000_000
    assert any(r.events < 2000 for r in state.requests[:-1]), "the byte limit should cut"


# --- wrong credentials ---------------------------------------------------------------------------


async def test_wrong_credentials_exit_3_after_the_canary(tmp_path: Path) -> None:
    """401: exit 3, says the credentials were refused, one request (the canary), secret nowhere."""
    secret = "wrong-secret-Zq9-7f3e1c"
    plan = Plan()
    for anon in uuid4s(3000, 51):
        plan.add(anon, f"user-{anon[:8]}")
    source = plan.write(tmp_path / "m.csv")
    out = tmp_path / "out"
    env = clean_env(STANDIN_CREDENTIALS | {"MIXPANEL_SERVICE_ACCOUNT_SECRET": secret})
    async with running_standin() as standin:
        result = await run_cli(
            run_args(source, out, standin, "--concurrency", "4", "--batch-size", "100"),
            env,
            cwd=tmp_path,
        )
        state = standin.state
    assert result.code == 3, result.stderr
    no_traceback(result.stderr)
    assert "refused the credentials" in result.stderr
    assert state.requests_count == 1
    assert set(state.statuses()) == {401}
    assert not state.store
    encoded = base64.b64encode(f"{USER}:{secret}".encode())
    for haystack in (result.stdout.encode(), result.stderr.encode(), all_output_bytes(out)):
        assert secret.encode() not in haystack
        assert encoded not in haystack
    assert read_summary(out)["status"] == "aborted"
    assert (out / "checkpoint.json").exists()


# --- values that look like numbers ---------------------------------------------------------------

NUMBER_LIKE = [
    "00042",
    "1e5",
    "1E5",
    "0042.50",
    "-0",
    "+1",
    "0x1F",
    "1_000",
    ".5",
    "1.0",
    "Infinity",
    "9007199254740993",
    "12345678901234567890",
    "2024-01-01",
]


async def test_number_like_ids_arrive_as_the_exact_strings(tmp_path: Path) -> None:
    """Identified ids like 00042, 1e5, 0042.50 arrive as exactly the strings of the file."""
    # ``TRUE`` and ``NULL`` are placeholders per SPEC (case-insensitive): rejected, not sent.
    plan = Plan()
    anons = uuid4s(len(NUMBER_LIKE) + 3, 61)
    for anon, ident in zip(anons, NUMBER_LIKE, strict=False):
        plan.add(anon, ident)
    plan.add(anons[-3], " 007 ")  # trimmed to 007
    true_row = plan.add(anons[-2], "TRUE", "invalid_identified_id")
    null_row = plan.add(anons[-1], "NULL", "invalid_identified_id")
    # A repeated pair too: a file whose only rejects are per-row ones hits FIRST_ROWS_BUG.
    dup_row = plan.add(anons[0], NUMBER_LIKE[0], "duplicate_pair")
    source = plan.write(tmp_path / "numbers.csv")
    out = tmp_path / "out"
    async with running_standin() as standin:
        result = await run_cli(
            run_args(source, out, standin), clean_env(STANDIN_CREDENTIALS), cwd=tmp_path
        )
        state = standin.state
    assert result.code == 0, result.stderr
    sent = {e["properties"]["$anon_id"]: e["properties"] for e in state.store.values()}
    for anon, ident in zip(anons, NUMBER_LIKE, strict=False):
        assert sent[anon]["$identified_id"] == ident
        assert sent[anon]["distinct_id"] == ident
        assert type(sent[anon]["$identified_id"]) is str
    assert sent[anons[-3]]["$identified_id"] == "007"
    assert anons[-2] not in sent
    assert anons[-1] not in sent
    _, found = read_rejects(out)
    assert {r: v[2] for r, v in found.items()} == {
        true_row: "invalid_identified_id",
        null_row: "invalid_identified_id",
        dup_row: "duplicate_pair",
    }
    assert found[true_row][1] == "TRUE"


# --- credentials setup errors --------------------------------------------------------------------

SETUP_ERRORS = {
    "no_credentials": ({}, [], "no Mixpanel credentials"),
    "username_only": (
        {"MIXPANEL_SERVICE_ACCOUNT_USERNAME": USER, "MIXPANEL_PROJECT_ID": "1"},
        [],
        "MIXPANEL_SERVICE_ACCOUNT_SECRET",
    ),
    "secret_only": (
        {"MIXPANEL_SERVICE_ACCOUNT_SECRET": SECRET, "MIXPANEL_PROJECT_ID": "1"},
        [],
        "MIXPANEL_SERVICE_ACCOUNT_USERNAME",
    ),
    "no_project_id": (
        {"MIXPANEL_SERVICE_ACCOUNT_USERNAME": USER, "MIXPANEL_SERVICE_ACCOUNT_SECRET": SECRET},
        [],
        "MIXPANEL_PROJECT_ID",
    ),
    "plain_http_remote": (STANDIN_CREDENTIALS, ["--api-url", "http://example.com"], "https"),
    "userinfo_in_url": (
        STANDIN_CREDENTIALS,
        ["--api-url", "http://u:pw-in-url@{host}"],
        "user:password",
    ),
}


async def test_credentials_setup_errors_exit_2_before_any_request(tmp_path: Path) -> None:
    """Credentials setup errors exit 2 with one line naming the fix, before any request."""
    # Missing or half credentials, no project id, plain http off loopback, user:pass@ in URL.
    plan = Plan()
    for anon in uuid4s(20, 71):
        plan.add(anon, f"user-{anon[:6]}")
    source = plan.write(tmp_path / "m.csv")
    async with running_standin() as standin:
        host = f"{standin.host}:{standin.port}"
        runs = [
            run_cli(
                [
                    *run_args(source, tmp_path / name, standin),
                    *(a.format(host=host) for a in extra),
                ],
                clean_env(env),
                cwd=tmp_path,
            )
            for name, (env, extra, _) in SETUP_ERRORS.items()
        ]
        results = dict(zip(SETUP_ERRORS, await asyncio.gather(*runs), strict=True))
        assert standin.state.requests_count == 0
    for name, (_, _, needle) in SETUP_ERRORS.items():
        result = results[name]
        assert result.code == 2, (name, result.stderr)
        no_traceback(result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("backfill: error:"), (name, lines[0])
        assert needle in lines[0], (name, lines[0])
        assert SECRET not in result.stderr + result.stdout
        assert "pw-in-url" not in result.stderr + result.stdout


# --- legacy project secret ----------------------------------------------------------------------

LEGACY = "legacy-project-secret-5e6f7a"


async def _legacy_run(tmp_path: Path, env: dict[str, str]) -> tuple[Any, Recorded, Path, Plan]:
    plan = Plan()
    for anon in uuid4s(300, 81):
        plan.add(anon, f"user-{anon[:6]}")
    source = plan.write(tmp_path / "m.csv")
    out = tmp_path / "out"
    config = StandinConfig(api_secrets=frozenset({LEGACY}))
    async with recording_standin(config) as rec:
        result = await run_cli(
            run_args(source, out, rec.standin),
            clean_env(env),
            cwd=tmp_path,
        )
    return result, rec, out, plan


async def test_legacy_api_secret_works_with_a_deprecation_warning(tmp_path: Path) -> None:
    """MIXPANEL_API_SECRET: imports, warns that it is legacy, sends no project_id, never leaks."""
    env = {"MIXPANEL_API_SECRET": LEGACY, "MIXPANEL_PROJECT_ID": "1"}
    result, rec, out, plan = await _legacy_run(tmp_path, env)
    assert result.code == 0, result.stderr
    assert "warning" in result.stderr.lower()
    assert "MIXPANEL_API_SECRET" in result.stderr
    assert "legacy" in result.stderr.lower()
    assert rec.state.identify_pairs() == plan.imported_pairs()
    assert rec.state.requests
    assert all(r.auth == "api-secret" for r in rec.state.requests)
    assert rec.queries
    assert all("project_id" not in q for q in rec.queries)
    assert all(q.get("strict") == "1" for q in rec.queries)
    for haystack in (result.stdout.encode(), result.stderr.encode(), all_output_bytes(out)):
        assert LEGACY.encode() not in haystack


async def test_legacy_api_secret_needs_no_project_id(tmp_path: Path) -> None:
    """MIXPANEL_API_SECRET alone (no project id) is enough to run."""
    result, rec, _, plan = await _legacy_run(tmp_path, {"MIXPANEL_API_SECRET": LEGACY})
    assert result.code == 0, result.stderr
    assert rec.state.identify_pairs() == plan.imported_pairs()


FIRST_ROWS_BUG = (
    "BUG: backfill/validation.py Verdicts.first_rows: with no conflict or duplicate in "
    "the file, ref_rows is empty, `pos[pos >= len(ref_rows)] = 0` leaves index 0 and "
    "`ref_first[0]` raises IndexError, so any file whose rejects are all per-row (bad UUID, "
    "placeholder, ...) ends in 'internal error' (exit 1) from pipeline.reject_rows:101"
)


async def test_rejects_without_any_duplicate_or_conflict(tmp_path: Path) -> None:
    """A file whose only reject is an invalid anon id runs: exit 0, the row in rejects.csv."""
    plan = Plan()
    for anon in uuid4s(20, 93):
        plan.add(anon, f"user-{anon[:6]}")
    bad_row = plan.add("not-a-uuid", "user-1", "invalid_anon_id")
    source = plan.write(tmp_path / "m.csv")
    out = tmp_path / "out"
    async with running_standin() as standin:
        result = await run_cli(
            run_args(source, out, standin), clean_env(STANDIN_CREDENTIALS), cwd=tmp_path
        )
        state = standin.state
    assert result.code == 0, result.stderr
    assert state.identify_pairs() == plan.imported_pairs()
    _, found = read_rejects(out)
    assert {r: v[2] for r, v in found.items()} == {bad_row: "invalid_anon_id"}


# --- dry run, region -----------------------------------------------------------------------------


async def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    """``run --dry-run`` validates and reports but sends nothing (credentials or not)."""
    plan = Plan()
    for anon in uuid4s(50, 91):
        plan.add(anon, f"user-{anon[:6]}")
    plan.add("bad", "user-1", "invalid_anon_id")
    plan.add(*plan.rows[0], "duplicate_pair")  # see FIRST_ROWS_BUG
    source = plan.write(tmp_path / "m.csv")
    async with running_standin() as standin:
        with_creds = await run_cli(
            [*run_args(source, tmp_path / "a", standin), "--dry-run"],
            clean_env(STANDIN_CREDENTIALS),
            cwd=tmp_path,
        )
        without = await run_cli(
            [*run_args(source, tmp_path / "b", standin), "--dry-run"], clean_env(), cwd=tmp_path
        )
        assert standin.state.requests_count == 0
    for result, out in ((with_creds, tmp_path / "a"), (without, tmp_path / "b")):
        assert result.code == 0, result.stderr
        summary = read_summary(out)
        assert summary["status"] == "validated"
        assert summary["events_imported"] == 0
        assert summary["rows_valid"] == 50
        assert not (out / "checkpoint.json").exists()


@pytest.mark.parametrize(
    ("flags", "url"),
    [
        ({}, "https://api.mixpanel.com/import"),
        ({"region": "us"}, "https://api.mixpanel.com/import"),
        ({"region": "eu"}, "https://api-eu.mixpanel.com/import"),
        ({"region": "in"}, "https://api-in.mixpanel.com/import"),
        ({"region": "eu", "api_url": "http://127.0.0.1:9"}, "http://127.0.0.1:9/import"),
    ],
)
def test_region_selects_the_import_url(flags: dict[str, str], url: str) -> None:
    """--region eu (no --api-url) targets api-eu; --api-url overrides the region."""
    settings = settings_for(
        "run", ("m.csv",), explicit=flags, config_path=None, origin="flag", env={}
    )
    assert settings.import_url == url


# --- the hash bug, seen from a run ---------------------------------------------------------------


async def test_rerun_with_another_batch_size_sends_identical_events(tmp_path: Path) -> None:
    """A --restart rerun with another --batch-size resends identical events (deduplicated)."""
    plan = Plan()
    for i, anon in enumerate(uuid4s(1000, 101)):
        plan.add(anon, f"customer-{i}-with-a-long-id-" + "z" * 60 if i == 3 else f"u{i}")
    source = plan.write(tmp_path / "m.csv")
    out = tmp_path / "out"
    async with running_standin() as standin:
        base = [*run_args(source, out, standin), "--event-time", EVENT_TIME]
        first = await run_cli(base, clean_env(STANDIN_CREDENTIALS), cwd=tmp_path)
        assert first.code == 0, first.stderr
        assert len(standin.state.store) == 1000
        again = await run_cli(
            [*base, "--restart", "--batch-size", "300"],
            clean_env(STANDIN_CREDENTIALS),
            cwd=tmp_path,
        )
        assert again.code == 0, again.stderr
        state = standin.state
    assert {k.time for k in state.store} == {EVENT_TIME_MS}
    assert len(state.store) == 1000, "the rerun's events were not the identical events"
