"""`backfill rehearse` and `backfill serve`: the whole migration against the local stand-in."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import sys
from pathlib import Path

from backfill.standin import DEFAULT_SERVICE_ACCOUNT

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "mappings.csv"
VALID_IN_SAMPLE = 631


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "BACKFILL_"))}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


async def _backfill(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_readme_rehearsal_imports_the_valid_pairs(tmp_path: Path) -> None:
    """The README's rehearsal shows the sample's valid pairs imported and the rest rejected."""
    code, out, err = await _backfill(
        "rehearse", str(SAMPLE), "--time-column", "merged_at", cwd=tmp_path, env=_env()
    )
    assert code == 0, err
    assert "Traceback" not in out + err
    assert re.search(rf"events imported +{VALID_IN_SAMPLE}\b", out)
    assert re.search(rf"events imported +{VALID_IN_SAMPLE} unique", out)  # the stand-in's side
    for reason in ("invalid_anon_id", "conflicting_anon_id", "cluster_limit", "invalid_time"):
        assert reason in out
    folder = tmp_path / "runs" / "mappings-csv-rehearsal"
    received = (folder / "received.ndjson").read_text().splitlines()
    assert len(received) == VALID_IN_SAMPLE
    assert {json.loads(line)["event"] for line in received} == {"$identify"}
    with (folder / "rejects.csv").open(newline="") as f:
        rejects = list(csv.DictReader(f))
    assert len(rejects) == 649 - VALID_IN_SAMPLE
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["events_imported"] == VALID_IN_SAMPLE
    assert not (tmp_path / "runs" / "mappings-csv").exists()  # never a real run's folder


async def test_rehearsing_a_simplified_project_shows_the_refusal(tmp_path: Path) -> None:
    """``rehearse --system simplified``: exit 3 after the canary, the message leads to the fix
    and says the stand-in refused, not Mixpanel."""
    code, out, err = await _backfill(
        "rehearse", str(SAMPLE), "--system", "simplified", "--no-progress", cwd=tmp_path, env=_env()
    )
    assert code == 3, err
    assert "Traceback" not in out + err
    assert "Simplified ID Merge" in err
    assert "--id-merge simplified" in err
    assert "error: the stand-in refused the request" in err
    assert "Mixpanel refused" not in err
    assert re.search(r"events imported +0\b", out)
    assert re.search(r"requests +1\b", out)


async def test_rehearsal_with_faults_retries_and_completes(tmp_path: Path) -> None:
    """With injected faults the rehearsal retries and still imports every valid pair once."""
    code, _out, err = await _backfill(
        "rehearse",
        str(SAMPLE),
        "--time-column",
        "merged_at",
        "--fault-rate",
        "0.3",
        "--retry-base-s",
        "0.01",
        "--max-attempts",
        "25",  # 0.3**25: no batch can run out of tries by bad luck
        "--batch-size",
        "20",
        cwd=tmp_path,
        env=_env(),
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "runs/mappings-csv-rehearsal/summary.json").read_text())
    assert summary["events_imported"] == VALID_IN_SAMPLE
    assert sum(summary["retries"].values()) > 0


async def test_rehearsal_ignores_real_credentials(tmp_path: Path) -> None:
    """Real credentials in the environment are neither used nor written anywhere."""
    secret = "real-production-secret-do-not-leak"
    env = _env(
        MIXPANEL_SERVICE_ACCOUNT_USERNAME="prod.user",
        MIXPANEL_SERVICE_ACCOUNT_SECRET=secret,
        MIXPANEL_PROJECT_ID="987654",
    )
    code, out, err = await _backfill("rehearse", str(SAMPLE), cwd=tmp_path, env=env)
    assert code == 0, err
    assert secret not in out + err
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


async def test_rehearsal_rejects_a_bad_fault_rate(tmp_path: Path) -> None:
    """A fault rate outside 0-1 exits 2 with one line naming the option."""
    code, _out, err = await _backfill(
        "rehearse", str(SAMPLE), "--fault-rate", "2", cwd=tmp_path, env=_env()
    )
    assert code == 2
    assert "--fault-rate must be a number from 0 to 1" in err
    assert "Traceback" not in err


async def test_serve_answers_a_real_run_and_stops_on_sigint(tmp_path: Path) -> None:
    """`backfill serve` prints its URL and throwaway credentials, serves a run, stops cleanly."""
    store = tmp_path / "received.ndjson"
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        "serve",
        "--port",
        "0",
        "--store",
        str(store),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=_env(),
    )
    try:
        assert server.stdout is not None
        banner = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/import", banner)
        assert url, banner
        user, secret = DEFAULT_SERVICE_ACCOUNT
        assert f"MIXPANEL_SERVICE_ACCOUNT_USERNAME={user}" in banner
        env = _env(
            MIXPANEL_SERVICE_ACCOUNT_USERNAME=user,
            MIXPANEL_SERVICE_ACCOUNT_SECRET=secret,
            MIXPANEL_PROJECT_ID="1",
        )
        code, _out, err = await _backfill(
            "run",
            str(SAMPLE),
            "--api-url",
            url.group(1),
            "--out",
            str(tmp_path / "out"),
            cwd=tmp_path,
            env=env,
        )
        assert code == 0, err
        assert len(store.read_text().splitlines()) > 0
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(server.communicate(), 30)
    assert server.returncode == 0
    assert "stopped" in rest.decode()


async def test_serve_stops_promptly_with_requests_in_flight(tmp_path: Path) -> None:
    """At Ctrl-C `serve` cuts requests still in flight (5 s latency) and exits within 1 s of
    printing its summary, which is a few readable lines, not JSON."""
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "backfill", "serve", "--port", "0", "--latency", "5", "--quiet"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=_env(),
    )
    assert server.stdout is not None
    banner = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
    url = re.search(r"(http://127\.0\.0\.1:\d+/import)", banner)
    assert url, banner
    user, secret = DEFAULT_SERVICE_ACCOUNT
    _reader, writer = await asyncio.open_connection(*url.group(1)[7:].split("/")[0].split(":"))
    body = b'[{"event":"$identify","properties":{"time":1,"distinct_id":"a","$insert_id":"x"}}]'
    writer.write(
        b"POST /import?strict=1&project_id=1 HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    await asyncio.sleep(0.5)  # the request is now in its 5 s of latency
    server.send_signal(signal.SIGINT)
    stopped = await asyncio.wait_for(server.stdout.readline(), 10)
    assert stopped.decode().strip() == "backfill stand-in stopped:"
    rest, _ = await asyncio.wait_for(server.communicate(), 1.0)
    writer.close()
    assert server.returncode == 0
    assert "  requests          " in rest.decode()
    assert "{" not in rest.decode()
    assert user in banner
    assert secret not in rest.decode()
