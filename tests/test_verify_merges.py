"""`backfill verify` through the CLI against the stand-in: what Mixpanel merged, from its export."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import stat
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from runkit import STANDIN_CREDENTIALS, backfill_cli, clean_env, write_pairs

from backfill.commands.rehearse import standin_thread
from backfill.mixpanel import IdMerge
from backfill.standin import Standin, StandinConfig, StandinState
from backfill.standin.state import EventKey

T_MS = 1_700_000_000_000  # 2023-11-14
DAY_MS = 86_400_000
ENV = clean_env(STANDIN_CREDENTIALS)


def uuids(n: int, seed: int) -> list[str]:
    """``n`` distinct reproducible UUID v4 strings."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def write_preload(path: Path, events: list[dict[str, object]]) -> Path:
    """A --preload file."""
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def sdk(event: str, props: dict[str, object], n: int, day: int) -> dict[str, object]:
    """An event the project's own SDKs sent on ``day`` days after T_MS."""
    return {"event": event, "properties": {**props, "time": T_MS + day * DAY_MS + n,
                                           "$insert_id": f"sdk-{event[:4]}-{n}"}}  # fmt: skip


def export_queries(state: StandinState) -> int:
    """Requests the stand-in's export answered, whatever the answer."""
    return sum(1 for r in state.requests if r.path.startswith("/api/2.0/export"))


def lagging(state: StandinState) -> set[str]:
    """The insert ids of this migration's events the export does not show yet."""
    return {k.insert_id for k in state.store if state.lagging(k)}


def read_verify(folder: Path) -> list[dict[str, str]]:
    """verify.csv's lines."""
    with (folder / "verify.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def original_project(tmp_path: Path) -> Iterator[tuple[Standin, Path, list[str]]]:
    """An Original project already holding 40 merges of this file's anon ids to other users,
    its SDKs' $identify events on the same days, and 1% of imported events lagging."""
    with planted_original(tmp_path) as project:
        yield project


@contextlib.contextmanager
def planted_original(tmp_path: Path) -> Iterator[tuple[Standin, Path, list[str]]]:
    """The stand-in of ``original_project``, its mapping file and the file's anon ids."""
    anon = uuids(2000, 1)
    rows = [(a, f"user-{i}") for i, a in enumerate(anon)]
    planted = [
        sdk(
            "$identify",
            {"$anon_id": a, "$identified_id": f"o{i}", "distinct_id": f"o{i}"},
            i,
            i % 3,
        )
        for i, a in enumerate(anon[:40])
    ]
    own = uuids(100, 2)
    planted += [sdk("$identify", {"$anon_id": a, "$identified_id": f"sdk-user-{i}",
                                  "distinct_id": f"sdk-user-{i}"}, 100 + i, i % 3)
                for i, a in enumerate(own)]  # fmt: skip
    preload = write_preload(tmp_path / "project.ndjson", planted)
    write_csv_times(tmp_path / "m.csv", rows)
    config = StandinConfig(preload_path=preload, export_lag=0.01)
    with standin_thread(config) as standin:
        yield standin, tmp_path / "m.csv", anon


def write_csv_times(path: Path, rows: list[tuple[str, str]]) -> None:
    """A mapping CSV whose rows spread over three days (a time column)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["anon_id", "identified_id", "merged_at"])
        for i, (a, u) in enumerate(rows):
            out.writerow([a, u, T_MS + (i % 3) * DAY_MS + 1000 + i])


def run_and_verify(standin: Standin, mapping: Path, *extra: str) -> tuple[int, str, str]:
    """`backfill run` then `backfill verify` against the stand-in; verify's exit and output."""
    cwd = mapping.parent
    sent = backfill_cli("run", mapping, "--api-url", standin.url, "--time-column", "merged_at",
                        "--no-progress", *extra, cwd=cwd, env=ENV)  # fmt: skip
    assert sent.code == 0, sent.stderr
    checked = backfill_cli("verify", mapping, "--export-url", standin.url, "--json", cwd=cwd,
                           env=ENV)  # fmt: skip
    return checked.code, checked.stdout, checked.stderr


def test_original_project_planted_merges_are_not_merged_and_lag_not_found(
    original_project: tuple[Standin, Path, list[str]],
) -> None:
    """40 contradicted merges are not_merged with the reason, the 1% lag not_found, the rest
    merged, no project event listed, exit 4, within 5 queries; after the lag, only not_merged."""
    standin, mapping, anon = original_project
    code, out, err = run_and_verify(standin, mapping)
    assert code == 4, err
    lines = read_verify(mapping.parent / "runs" / "m-csv")
    assert len(lines) == 2000  # every sent pair, none of the project's own events
    by = {o: [r for r in lines if r["outcome"] == o] for o in ("merged", "not_merged", "not_found")}
    assert {r["anon_id"] for r in by["not_merged"]} == set(anon[:40])
    assert {r["reason"] for r in by["not_merged"]} == {"errAnonDistinctIdAlreadyMerged"}
    assert all("already merged" in r["detail"] for r in by["not_merged"])
    late = lagging(standin.state)
    assert len(late) > 0
    assert len(by["not_found"]) == len(late)
    summary = json.loads(out)
    assert (summary["merged"], summary["not_merged"]) == (2000 - 40 - len(late), 40)
    assert export_queries(standin.state) <= 5
    standin.state.export_lag = 0.0
    again = backfill_cli("verify", mapping, "--export-url", standin.url, "--json",
                         cwd=mapping.parent, env=ENV)  # fmt: skip
    assert again.code == 4
    final = json.loads(again.stdout)
    assert (final["not_found"], final["not_merged"], final["merged"]) == (0, 40, 1960)
    block = json.loads((mapping.parent / "runs/m-csv/summary.json").read_text())["verify"]
    assert block["not_found"] == 0
    page = (mapping.parent / "runs/m-csv/report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="verification">') :]
    assert "<td>merged</td><td class=\"num\">1,960</td>" in section
    assert "<td>errAnonDistinctIdAlreadyMerged</td><td class=\"num\">40</td>" in section
    assert page.count('<section id="verification">') == 1  # verified twice, shown once


def test_simplified_project_devices_paired_elsewhere(tmp_path: Path) -> None:
    """25 devices already paired with other users are not_merged ($identity_failure_reason);
    the lagging share not_found; the project's own events never listed; exit 4."""
    anon = uuids(1000, 3)
    rows = [(f"$device:{a}" if i % 2 else a, f"user-{i}") for i, a in enumerate(anon)]
    planted = [
        sdk(
            "Identity Backfill",
            {"$device_id": a, "$user_id": f"o{i}", "distinct_id": f"o{i}"},
            i,
            0,
        )
        for i, a in enumerate(anon[:25])
    ]
    planted += [sdk("Identity Backfill", {"$device_id": d, "$user_id": f"sdk-{i}",
                                          "distinct_id": f"sdk-{i}"}, 50 + i, 1)
                for i, d in enumerate(uuids(30, 4))]  # fmt: skip
    preload = write_preload(tmp_path / "project.ndjson", planted)
    write_csv_times(tmp_path / "m.csv", rows)
    config = StandinConfig(preload_path=preload, export_lag=0.01, id_merge=IdMerge.SIMPLIFIED)
    with standin_thread(config) as standin:
        code, _out, err = run_and_verify(standin, tmp_path / "m.csv", "--id-merge", "simplified")
        assert code == 4, err
        lines = read_verify(tmp_path / "runs" / "m-csv")
        assert len(lines) == 1000
        bad = [r for r in lines if r["outcome"] == "not_merged"]
        assert {r["row"] for r in bad} == {str(i + 1) for i in range(25)}
        assert {r["reason"] for r in bad} == {"errDeviceAlreadyPairedWithAnotherUser"}
        late = lagging(standin.state)
        assert sum(r["outcome"] == "not_found" for r in lines) == len(late) > 0
        assert export_queries(standin.state) <= 5
        standin.state.export_lag = 0.0
        again = backfill_cli("verify", tmp_path / "m.csv", "--export-url", standin.url,
                             cwd=tmp_path, env=ENV)  # fmt: skip
        assert again.code == 4
        assert "not found yet     0" in again.stdout


def test_every_pair_merged_exits_0_and_verify_csv_is_private(tmp_path: Path) -> None:
    """With nothing planted and no lag, every sent pair is merged: exit 0, verify.csv 0600."""
    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(50, 5))])
    with standin_thread(StandinConfig()) as standin:
        sent = backfill_cli("run", mapping, "--api-url", standin.url, "--no-progress",
                            cwd=tmp_path, env=ENV)  # fmt: skip
        assert sent.code == 0, sent.stderr
        checked = backfill_cli("verify", mapping, "--export-url", standin.url, cwd=tmp_path,
                               env=ENV)  # fmt: skip
        assert checked.code == 0, checked.stderr
        assert "merged            50" in checked.stdout
        path = tmp_path / "runs" / "m-csv" / "verify.csv"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # A second verify asks nothing: every pair is already known merged.
        before = export_queries(standin.state)
        again = backfill_cli("verify", mapping, "--export-url", standin.url, cwd=tmp_path, env=ENV)
        assert again.code == 0
        assert export_queries(standin.state) == before


def test_two_429s_are_waited_out_and_a_401_is_one_line_exit_3(tmp_path: Path) -> None:
    """Two 429s on the first export queries are waited out (Retry-After); a 401 is one line,
    exit 3."""
    from backfill.standin import FaultRates

    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(20, 6))])
    config = StandinConfig(faults=FaultRates(retry_after_s=0.05))
    with standin_thread(config) as standin:
        sent = backfill_cli("run", mapping, "--api-url", standin.url, "--no-progress",
                            cwd=tmp_path, env=ENV)  # fmt: skip
        assert sent.code == 0, sent.stderr
        wrong = dict(ENV, MIXPANEL_SERVICE_ACCOUNT_SECRET="wrong")
        refused = backfill_cli("verify", mapping, "--export-url", standin.url, cwd=tmp_path,
                               env=wrong)  # fmt: skip
        assert refused.code == 3
        errors = [line for line in refused.stderr.splitlines() if "error" in line]
        assert len(errors) == 1
        assert "refused the credentials (401" in errors[0]
        assert "wrong" not in refused.stderr
        standin.state.script(["429", "429"])
        checked = backfill_cli("verify", mapping, "--export-url", standin.url, cwd=tmp_path,
                               env=ENV)  # fmt: skip
        assert checked.code == 0, checked.stderr
        assert [r.status for r in standin.state.requests[-3:]] == [429, 429, 200]


def test_export_shape_gzip_and_raw_duplicates() -> None:
    """The stand-in's export answers JSON Lines, gzip when asked, repeats resent events and
    refuses a missing date with a 400."""
    import asyncio
    import gzip

    import aiohttp

    from backfill.standin import DEFAULT_SERVICE_ACCOUNT, running_standin

    event = {"event": "E", "properties": {"time": T_MS, "distinct_id": "d", "$insert_id": "i1"}}

    async def main() -> None:
        async with running_standin(StandinConfig()) as standin:
            standin.state.store_accepted([event, event], refused=0)
            auth = {"Authorization": aiohttp.encode_basic_auth(*DEFAULT_SERVICE_ACCOUNT)}
            url = standin.url + "/api/2.0/export"
            query = {"project_id": "1", "from_date": "2023-11-14", "to_date": "2023-11-14"}
            async with aiohttp.ClientSession(auto_decompress=False) as s:
                async with s.get(url, params=query,
                                 headers={**auth, "Accept-Encoding": "gzip"}) as r:  # fmt: skip
                    assert r.headers["Content-Encoding"] == "gzip"
                    lines = gzip.decompress(await r.read()).splitlines()
                async with s.get(url, params={"project_id": "1"}, headers=auth) as r:
                    assert r.status == 400
            assert len(lines) == 2
            assert json.loads(lines[0])["properties"]["time"] == T_MS // 1000
            assert EventKey("E", T_MS, "d", "i1") in standin.state.store

    asyncio.run(main())


def test_lag_is_a_stable_share() -> None:
    """export_lag hides about that share of imported events, the same ones every time."""
    state = StandinState(StandinConfig(export_lag=0.1))
    keys = [EventKey("E", T_MS, "d", f"id-{i}") for i in range(5000)]
    hidden = {k for k in keys if state.lagging(k)}
    assert 350 < len(hidden) < 650
    assert hidden == {k for k in keys if zlib.crc32(k.insert_id.encode()) % 10_000 < 1000}


def test_rehearse_ends_with_the_verification(tmp_path: Path) -> None:
    """`backfill rehearse` shows the stand-in export's verification at its end."""
    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(30, 7))])
    done = backfill_cli("rehearse", mapping, "--no-progress", cwd=tmp_path, env=clean_env())
    assert done.code == 0, done.stderr
    assert "verification (1 export query" in done.stdout
    assert "merged            30" in done.stdout
    assert (tmp_path / "runs" / "m-csv-rehearsal" / "verify.csv").exists()


def test_simplified_pairing_binds_device_events_not_bare_ids() -> None:
    """A Simplified pairing joins events keyed $device:D or carrying $device_id D to the user;
    an event whose distinct_id is a bare D stays a user D."""
    from backfill.standin.identity import SimplifiedIdentity

    graph = SimplifiedIdentity()
    pairing = {"$device_id": "$device:D", "$user_id": "U", "distinct_id": "U"}
    graph.observe({"event": "Identity Backfill", "properties": pairing})
    assert graph.owner_of_event({"event": "x", "properties": {"distinct_id": "$device:D"}}) == "U"
    assert graph.owner_of_event({"event": "x", "properties": {"$device_id": "D"}}) == "U"
    assert graph.owner_of_event({"event": "x", "properties": {"distinct_id": "D"}}) == "D"
    unpaired = {"event": "x", "properties": {"distinct_id": "$device:E"}}
    assert graph.owner_of_event(unpaired) == "$device:E"


def test_python_api_returns_a_frozen_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backfill.verify(source, out=..., export_url=...) returns a frozen Verification."""
    import dataclasses

    import backfill

    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(10, 8))])
    with standin_thread(StandinConfig()) as standin:
        sent = backfill_cli("run", mapping, "--api-url", standin.url, "--no-progress",
                            "--out", tmp_path / "r", cwd=tmp_path, env=ENV)  # fmt: skip
        assert sent.code == 0, sent.stderr
        for key, value in ENV.items():
            if key.startswith("MIXPANEL_"):
                monkeypatch.setenv(key, value)
        result = backfill.verify(mapping, out=tmp_path / "r", export_url=standin.url)
    assert (result.merged, result.complete, result.exit_code) == (10, True, 0)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign"):
        result.merged = 0


def test_a_row_future_dated_at_the_run_is_not_counted_sent_once_its_time_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify judges rows as the run did (its fixed start): a row refused then as future-dated
    is no sent pair today, so nothing is left not_found once the export has everything."""
    import time

    import backfill
    from backfill.commands import pipeline

    day_ago_ms = int(time.time() * 1000) - 86_400_000
    anon = uuids(6, 11)
    rows = [(a, f"u{i}", str(day_ago_ms - 3_600_000)) for i, a in enumerate(anon[:5])]
    rows.append((anon[5], "u5", str(day_ago_ms + 60_000)))  # a minute past the run's clock
    mapping = tmp_path / "m.csv"
    with mapping.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([("anon_id", "identified_id", "merged_at"),
                                                       *rows])  # fmt: skip
    for key, value in ENV.items():
        if key.startswith("MIXPANEL_"):
            monkeypatch.setenv(key, value)
    with standin_thread(StandinConfig()) as standin:
        monkeypatch.setattr(pipeline, "now_ms", lambda: day_ago_ms)
        summary = backfill.run(mapping, out=tmp_path / "r", api_url=standin.url,
                               time_column="merged_at")  # fmt: skip
        assert (summary.events_imported, summary.rejected["invalid_time"]) == (5, 1)
        monkeypatch.undo()
        for key, value in ENV.items():
            if key.startswith("MIXPANEL_"):
                monkeypatch.setenv(key, value)
        result = backfill.verify(mapping, out=tmp_path / "r", export_url=standin.url)
    assert (result.merged, result.not_found, result.exit_code) == (5, 0, 0)


def test_pairs_mixpanel_refused_stay_out_however_the_file_is_spelled(tmp_path: Path) -> None:
    """verify of x/../x/m.csv after a run of x/m.csv whose 3 pairs Mixpanel refused: those
    pairs are known by the file's fingerprint, not its spelling, and are no sent pair."""
    (tmp_path / "x").mkdir()
    pairs = [(a, f"u{i}") for i, a in enumerate(uuids(12, 21))]
    write_pairs(tmp_path / "x" / "m.csv", pairs)
    refused = frozenset({"u1", "u5", "u9"})
    with standin_thread(StandinConfig(refuse_distinct_ids=refused)) as standin:
        sent = backfill_cli("run", "x/m.csv", "--api-url", standin.url, "--no-progress",
                            "--out", tmp_path / "r", cwd=tmp_path, env=ENV)  # fmt: skip
        assert sent.code == 0, sent.stderr
        checked = backfill_cli("verify", "x/../x/m.csv", "--export-url", standin.url, "--json",
                               "--out", tmp_path / "r", cwd=tmp_path, env=ENV)  # fmt: skip
    assert checked.code == 0, checked.stderr
    result = json.loads(checked.stdout)
    assert (result["pairs_sent"], result["merged"], result["not_found"]) == (9, 9, 0)


def test_python_verify_speaks_in_keywords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backfill.verify's errors name keywords, not flags, as validate's and run's do."""
    import backfill

    for key, value in ENV.items():
        if key.startswith("MIXPANEL_"):
            monkeypatch.setenv(key, value)
    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(2, 3))])
    with pytest.raises(backfill.InputError, match=r"no run found in .*: .*pass out with the"):
        backfill.verify(mapping, out=tmp_path / "nowhere", export_url="http://127.0.0.1:9")
