"""Outside bytes built to hurt: every reader ends in one line and its exit code (issue 19).

Readers: Mixpanel's answers, ``checkpoint.json`` (``run``, ``validate``, ``status``),
``summary.json`` (``status``), the registry ``runs.json``, the credentials and the input files.
Hostile bytes: nesting 100,000 deep, a file over the size bound, invalid UTF-8, NUL bytes,
JSON of the wrong types. Also: a server that echoes the credential among escape sequences, an
answer nested 100,000 deep through the CLI, and a single line of 64 MB read in linear time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
from runkit import (
    REPO,
    STANDIN_CREDENTIALS,
    CliResult,
    clean_env,
    encode,
    make_pairs,
    run_cli,
    uuid4s,
    write_pairs,
)

from backfill import cli
from backfill.errors import Aborted, RetryableSendError
from backfill.folder.files import MAX_JSON_FILE_BYTES
from backfill.folder.registry import STATE_FILE, key_for, state_dir
from backfill.read.lines import read_lines
from backfill.send.answers import Answer, interpret
from backfill.standin import DEFAULT_SERVICE_ACCOUNT, running_standin
from backfill.standin.faults import Fault

URL = "http://127.0.0.1:9/import"
HOSTILE: dict[str, bytes] = {
    "deep": b"[" * 100_000,
    "deep object": b'{"a":' * 50_000,
    "invalid UTF-8": b'{"version": "\xff\xfe", "status": "\xc3"}',
    "NUL": b'{"version": 1,\x00 "status": "completed"}',
    "NUL in a string": b'{"status": "compl\x00eted", "version": "\x00"}',
    "NaN": b'{"version": NaN, "events_imported": Infinity}',
    "huge number": b'{"version": ' + b"9" * 5000 + b"}",
    "not an object": b"[1, 2, 3]",
    "wrong types": (
        b'{"version": [1], "identity": "x", "done": {"a": 1}, "events_imported": "many", '
        b'"status": "completed", "rows_read": [1], "rejected": 5, "files": 3, "this_run": 1}'
    ),
    "escape sequences": b'{"status": "\x1b[2J\x1b]0;owned\x07", "events_imported": "\x1b[31m"}',
}
HUGE = "huge"  # written sparse: MAX_JSON_FILE_BYTES + 1 zero bytes


def _write(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == HUGE:
        with path.open("wb") as f:
            f.truncate(MAX_JSON_FILE_BYTES + 1)
    else:
        path.write_bytes(HOSTILE[kind])


def _cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> CliResult:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def _one_line(result: CliResult, code: int, *words: str) -> None:
    """Exit ``code`` and, if it is an error, exactly one line naming ``words`` (then, at most,
    the command to copy that the CLI prints after an error it knows the fix of)."""
    assert result.code == code, result.stderr
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    if code:
        lines = result.stderr.strip().splitlines()
        if len(lines) == 2:
            assert lines[1].startswith(("backfill: run next: ", "backfill: to resume, run: "))
            lines = lines[:1]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("backfill: error: "), result.stderr
        for word in words:
            assert word in lines[0], lines[0]


def _answer_reader(kind: str) -> None:
    """An answer's body: a 200 or 400 stops (``Aborted``, exit 3), a 503 is retried; one line."""
    body = b"\x00" * (9 << 20) if kind == HUGE else HOSTILE[kind]
    batch = encode(make_pairs(3, seed=1), 3)[0]
    for status in (200, 400):
        with pytest.raises(Aborted, match=f"HTTP {status}") as e:
            interpret(batch, Answer(status, body), URL)
        assert "\n" not in str(e.value)
        assert "\x1b" not in str(e.value)
    with pytest.raises(RetryableSendError, match=r"^HTTP 503: ") as retry:
        interpret(batch, Answer(503, body), URL)
    assert "\n" not in str(retry.value)
    assert len(str(retry.value)) < 400


def test_every_reader_of_outside_bytes_ends_in_one_line_and_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reader, fed each hostile file: exit 2 naming the file and the fix, or ignored."""
    for name, value in STANDIN_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(5, 3))])
    state = state_dir(os.environ)
    for kind in [*HOSTILE, HUGE]:
        _answer_reader(kind)
        out = tmp_path / f"out-{kind.replace(' ', '-')}"
        _write(out / "checkpoint.json", kind)
        ran = _cli(capsys, "run", source, "--out", out, "--api-url", URL, "--no-progress")
        _one_line(ran, 2, f"{out / 'checkpoint.json'}", "--restart", "--out")
        _one_line(_cli(capsys, "status", "--out", out), 2, "checkpoint.json", "--restart")
        _one_line(_cli(capsys, "validate", source, "--out", out, "--no-progress"), 0)
        alone = tmp_path / f"summary-{kind.replace(' ', '-')}"
        _write(alone / "summary.json", kind)
        _one_line(_cli(capsys, "status", "--out", alone), 2, "summary.json", "again")
        # The registry is a convenience: unreadable, it is ignored (README) and the run goes on.
        _write(state / STATE_FILE, kind)
        _one_line(_cli(capsys, "validate", source, "--no-progress"), 0)
    # An entry of the right shape whose folder holds a NUL byte: no run there, carry on.
    entry = {key_for([str(source)]): {"out": "runs/a\x00b"}}
    (state / STATE_FILE).write_text(json.dumps(entry), encoding="utf-8")
    _one_line(_cli(capsys, "validate", source, "--no-progress"), 0)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"[" * 100_000, ["line 2", "too deeply"]),
        (b'{"anon_id": ' + b"[" * 100_000 + b"}", ["line 2", "too deeply"]),
        (b'{"anon_id": "\xff", "identified_id": "u"}', ["UTF-8"]),
        (b'{"anon_id": "a\x00", "identified_id": "u"}', ["binary data"]),
        (b"42", ["line 2 holds a JSON number, not an object"]),
    ],
)
def test_hostile_jsonl_lines_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: bytes, words: list[str]
) -> None:
    """A JSONL line nested 100,000 deep, not UTF-8, with a NUL or a number: exit 2, one line."""
    source = tmp_path / "m.jsonl"
    source.write_bytes(b'{"anon_id": "a", "identified_id": "u"}\n' + line + b"\n")
    result = _cli(capsys, "validate", source, "--out", tmp_path / "out", "--no-progress")
    _one_line(result, 2, *words)


@pytest.mark.parametrize("fault", ["200_deep", "400_deep", "503_deep"])
async def test_answer_nested_100000_deep_stops_the_run_with_exit_3(
    tmp_path: Path, fault: str
) -> None:
    """A body of 100,000 ``[`` on a 200, 400 or 503: exit 3 and one line, no RecursionError."""
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(4, 5))])
    async with running_standin() as standin:
        standin.state.always = cast(Fault, fault)
        args = ["run", str(source), "--out", str(tmp_path / "out"), "--api-url", standin.url]
        flags = ["--no-progress", "--retry-base-s", "0.01", "--max-attempts", "2"]
        result = await run_cli([*args, *flags], clean_env(STANDIN_CREDENTIALS), cwd=tmp_path)
    said = "failed 2 times" if fault == "503_deep" else "without Mixpanel's num_records_imported"
    _one_line(result, 3, said)


@pytest.mark.parametrize("fault", ["403_echo", "502_echo"])
async def test_echoed_credential_and_escapes_reach_neither_terminal_nor_run_folder(
    tmp_path: Path, fault: str
) -> None:
    """A proxy page echoing Authorization among ANSI escapes: nothing of either is shown."""
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(4, 6))])
    out = tmp_path / "out"
    async with running_standin() as standin:
        standin.state.always = cast(Fault, fault)
        args = ["run", str(source), "--out", str(out), "--api-url", standin.url, "--no-progress"]
        flags = ["--retry-base-s", "0.01", "--max-attempts", "2"]
        result = await run_cli([*args, *flags], clean_env(STANDIN_CREDENTIALS), cwd=tmp_path)
        echoes = [r for r in standin.state.requests if r.status is not None]
    assert echoes, "the stand-in answered"
    _one_line(result, 3, "Proxy", "Authorization: ****")
    user, secret = DEFAULT_SERVICE_ACCOUNT
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    shown = [result.stdout, result.stderr]
    shown += [p.read_text(encoding="utf-8", errors="replace") for p in out.iterdir() if p.is_file()]
    for text in shown:
        for leak in (secret, token, token.rstrip("="), "\x1b", "\x07"):
            assert leak not in text


async def test_brotli_answer_names_the_encoding(tmp_path: Path) -> None:
    """A 200 in Content-Encoding br: exit 3 naming the encoding, not "bad response (400)"."""
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(4, 7))])
    async with running_standin() as standin:
        standin.state.always = "200_brotli"
        args = ["run", str(source), "--out", str(tmp_path / "out"), "--api-url", standin.url]
        result = await run_cli(
            [*args, "--no-progress"], clean_env(STANDIN_CREDENTIALS), cwd=tmp_path
        )
    _one_line(result, 3, "answered in an encoding backfill cannot read", "brotli (br)")
    assert "bad response" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MIXPANEL_SERVICE_ACCOUNT_SECRET", b"s3cr\xffet-value"),
        ("MIXPANEL_SERVICE_ACCOUNT_USERNAME", b"user\xe9"),
        ("MIXPANEL_API_SECRET", b"\xc3\xa9legacy-secret"),
    ],
)
def test_credential_that_is_not_printable_ascii_is_refused_before_validation(
    tmp_path: Path, variable: str, value: bytes
) -> None:
    """A credential byte that is not UTF-8 (or not ASCII): exit 2 before reading, secret unshown."""
    source = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuid4s(4, 8))])
    env = {k.encode(): v.encode() for k, v in clean_env().items()}
    if variable != "MIXPANEL_API_SECRET":
        env |= {k.encode(): v.encode() for k, v in STANDIN_CREDENTIALS.items()}
    env[variable.encode()] = value
    env[b"PYTHONPATH"] = str(REPO).encode()
    out = tmp_path / "out"
    args = ["run", str(source), "--out", str(out), "--api-url", URL, "--project-id", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "backfill", *args], cwd=tmp_path, env=env, capture_output=True
    )
    err = proc.stderr.decode("utf-8", "replace")
    _one_line(CliResult(proc.returncode, proc.stdout.decode(), err), 2, variable, "Mixpanel")
    assert "not printable ASCII" in err
    assert value not in proc.stderr
    assert value[:4] not in proc.stderr
    assert b"position" not in proc.stderr
    assert not (out / "rejects.csv").exists(), "refused before validation"


def test_line_reading_is_linear_in_the_length_of_a_line() -> None:
    """64 MiB in one line, read 4 KiB at a time: whole and fast (joining per block is n²/4 KiB)."""
    data = b"\xef\xbb\xbfhead\n" + b"x" * (64 << 20) + b"\nlast"
    started = time.monotonic()
    got = list(read_lines(io.BytesIO(data), 4096))
    assert time.monotonic() - started < 10  # a quadratic reader copies 512 TiB here
    assert [len(x) for x in got] == [4, 64 << 20, 4]
    assert got[0] == b"head"
    kept = list(read_lines(io.BytesIO(b"a\nb\n\nc"), 1, keepends=True))
    assert kept == [b"a\n", b"b\n", b"\n", b"c"]


def test_single_line_of_64_mb_is_refused_within_10_s(tmp_path: Path) -> None:
    """A CSV whose second line holds 64 MB: exit 2 and one line, well within 10 s."""
    source = tmp_path / "big.csv"
    with source.open("wb") as f:
        f.write(b"anon_id,identified_id\n")
        for _ in range(64):
            f.write(b"a" * (1 << 20))
        f.write(b",u1\n")
    env = clean_env()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "backfill", "validate", str(source), "--out", str(tmp_path / "o")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 10
    _one_line(CliResult(proc.returncode, proc.stdout, proc.stderr), 2, "line 2", "128 KiB")
