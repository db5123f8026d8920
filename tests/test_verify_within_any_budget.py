"""`backfill verify` holds no pair set whole: any memory budget gives the same verify.csv, and
the key index, the outcomes by row and the merged set agree with a plain reference join."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runkit import backfill_cli, write_pairs
from test_any_memory_budget import FullDisk, files_open_in
from test_verify_merges import ENV, planted_original, run_and_verify, uuids

import backfill.validation.spill
from backfill.api import normalize_source
from backfill.commands.rehearse import standin_thread
from backfill.errors import TempSpaceError
from backfill.standin import Standin, StandinConfig
from backfill.verification import run_verify, verify_settings
from backfill.verification.files import MERGED_FILE, MergedSet, read_merged
from backfill.verification.index import Budget, KeyIndex, Outcomes
from backfill.verification.match import MERGED, NOT_FOUND, NOT_MERGED

#: Every store past its limit at once, in many partitions and ranges of a few rows.
TINY = Budget(index_bytes=0, unit_bytes=64, outcome_bytes=0, partitions=7, range_rows=5)
DEFAULT = Budget()


def reference(
    sent: list[int], before: set[int], exported: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Each sent key's (outcome, reason) the plain way: a dict over the export in read order."""
    seen: dict[int, tuple[int, int]] = {}
    for key, code in exported:
        if code:
            seen[key] = (NOT_MERGED, code)
        elif key not in seen:
            seen[key] = (MERGED, 0)
    return [(MERGED, 0) if k in before else seen.get(k, (NOT_FOUND, 0)) for k in sent]


def joined(
    budget: Budget,
    folder: Path,
    sent: list[int],
    before: list[int],
    exported: list[tuple[int, int]],
    batch: int,
) -> tuple[list[tuple[int, int]], int, list[int], set[int]]:
    """Through KeyIndex and Outcomes, in batches of ``batch``: the outcomes in ordinal order,
    the known count, the distinct days still to find, and the merged set written."""
    u64 = np.uint64
    with KeyIndex(budget, folder) as index:
        for i in range(0, len(sent), batch):
            part = sent[i : i + batch]
            index.add_sent(np.array(part, u64), np.arange(i, i + len(part)) % 9)
        index.add_before(np.array(before, u64))
        for i in range(0, len(exported), batch):
            keys, codes = zip(*exported[i : i + batch], strict=True)
            index.add_exported(np.array(keys, u64), np.array(codes, np.int32))
        known, days = index.still_to_find()
        with Outcomes(index.sent, budget, folder) as outcomes, MergedSet(folder) as merged:
            index.resolve(outcomes, merged)
            merged.commit()
            got: list[tuple[int, int]] = []
            for i in range(0, len(sent), batch + 1):
                o, r = outcomes.of(i, min(batch + 1, len(sent) - i))
                got += zip(o.tolist(), r.tolist(), strict=True)
    written = {k for block in read_merged(folder) for k in block.tolist()}
    return got, known, days.tolist(), written


keys = st.integers(0, 40).map(lambda k: k * 0x9E3779B97F4A7C15 % 2**64)


@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(keys, max_size=60),
    before=st.lists(keys, max_size=15),
    exported=st.lists(st.tuples(keys, st.integers(0, 3)), max_size=80),
    batch=st.integers(1, 20),
)
def test_the_join_matches_a_plain_dict_under_any_budget(
    tmp_path_factory: pytest.TempPathFactory,
    sent: list[int],
    before: list[int],
    exported: list[tuple[int, int]],
    batch: int,
) -> None:
    """Merged before wins, then any failing copy (the last read gives the reason), then any
    copy; the same in memory and all on disk, and the merged set is before plus found."""
    expected = reference(sent, set(before), exported)
    found = {k for k, (o, _) in zip(sent, expected, strict=True) if o == MERGED}
    known = sum(1 for k in sent if k in set(before))
    days = sorted({i % 9 for i, k in enumerate(sent) if k not in set(before)})
    for budget in (DEFAULT, TINY):
        folder = tmp_path_factory.mktemp("verify")
        got, got_known, got_days, merged = joined(budget, folder, sent, before, exported, batch)
        assert got == expected
        assert (got_known, got_days) == (known, days)
        assert merged == found | set(before)
        assert sorted(p.name for p in folder.iterdir()) == [MERGED_FILE]  # no temp file left


def test_merged_set_reads_back_in_blocks_and_old_sorted_files_too(tmp_path: Path) -> None:
    """verify-merged.npy is read a block at a time; a file of the earlier version (np.save of
    the sorted keys) reads the same; a cut-short or foreign file counts as no merged set."""
    keys = np.random.default_rng(3).integers(0, 2**63, size=2500, dtype=np.uint64)
    with MergedSet(tmp_path) as merged:
        merged.add(keys[:1000])
        merged.add(keys[1000:])
        merged.commit()
    blocks = list(read_merged(tmp_path, block=1024))
    assert [len(b) for b in blocks] == [1024, 1024, 452]
    assert np.array_equal(np.concatenate(blocks), keys)
    assert (tmp_path / MERGED_FILE).stat().st_mode & 0o077 == 0
    old = io.BytesIO()
    np.save(old, np.sort(keys), allow_pickle=False)
    (tmp_path / MERGED_FILE).write_bytes(old.getvalue())
    assert np.array_equal(np.concatenate(list(read_merged(tmp_path))), np.sort(keys))
    (tmp_path / MERGED_FILE).write_bytes(old.getvalue()[:-3])
    assert list(read_merged(tmp_path)) == []
    floats = io.BytesIO()
    np.save(floats, np.ones(4))
    (tmp_path / MERGED_FILE).write_bytes(floats.getvalue())
    assert list(read_merged(tmp_path)) == []
    (tmp_path / MERGED_FILE).write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert list(read_merged(tmp_path)) == []


def test_verify_all_on_disk_writes_what_verify_in_memory_writes(tmp_path: Path) -> None:
    """The planted project verified with every store on disk (tiny budget, ranges of 5 rows):
    verify.csv byte for byte the in-memory one, first without a merged set, then with one."""
    with planted_original(tmp_path) as (standin, mapping, _):
        verify_both_ways(standin, mapping)


def verify_both_ways(standin: Standin, mapping: Path) -> None:
    """verify in memory (the CLI), then twice all on disk: the same verify.csv each time."""
    code, _, err = run_and_verify(standin, mapping)
    assert code == 4, err
    folder = mapping.parent / "runs" / "m-csv"
    in_memory = verify_csv(folder)
    merged_file = (folder / MERGED_FILE).read_bytes()
    (folder / MERGED_FILE).unlink()
    chosen, url = verify_settings(normalize_source(mapping), explicit={"export_url": standin.url},
                                  config_path=None, origin="flag", env=ENV)  # fmt: skip
    first = run_verify(chosen, url, env=ENV, budget=TINY)
    assert verify_csv(folder) == in_memory
    assert sorted(np.concatenate(list(read_merged(folder))).tolist()) == sorted(
        np.concatenate(list(read_merged_bytes(merged_file, mapping.parent))).tolist()
    )
    again = run_verify(chosen, url, env=ENV, budget=TINY)
    assert verify_csv(folder) == in_memory
    assert again.already_merged == first.merged > 1900
    assert (again.merged, again.not_merged) == (first.merged, 40)
    names = [p.name for p in folder.iterdir()]
    assert [n for n in names if n.endswith(".tmp") or "backfill-" in n] == []
    assert files_open_in(folder) == 0  # the unnamed temp files were closed, not just unlinked


def verify_csv(folder: Path) -> bytes:
    """verify.csv's bytes, the time its not_found lines say to try again at aside."""
    data = (folder / "verify.csv").read_bytes()
    return re.sub(rb"again after [0-9T:+-]+", b"again after T", data)


def read_merged_bytes(data: bytes, scratch: Path) -> list[np.ndarray]:
    """The keys of a merged-set file's bytes."""
    place = scratch / "merged-copy"
    place.mkdir(exist_ok=True)
    (place / MERGED_FILE).write_bytes(data)
    keys = list(read_merged(place))
    shutil.rmtree(place)
    return keys


def test_full_disk_while_verifying_is_one_line_and_keeps_the_last_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No room for the key index's temp file: TempSpaceError naming verification's data, the
    run folder and the fix; the verify before stays as it was; the fix, followed, works."""
    mapping = write_pairs(tmp_path / "m.csv", [(a, f"u{i}") for i, a in enumerate(uuids(30, 4))])
    folder = tmp_path / "r"
    with standin_thread(StandinConfig()) as standin:
        sent = backfill_cli("run", mapping, "--api-url", standin.url, "--no-progress",
                            "--out", folder, cwd=tmp_path, env=ENV)  # fmt: skip
        assert sent.code == 0, sent.stderr
        chosen, url = verify_settings(normalize_source(mapping), explicit={"out": str(folder),
                                      "export_url": standin.url}, config_path=None,
                                      origin="flag", env=ENV)  # fmt: skip
        assert run_verify(chosen, url, env=ENV).merged == 30
        before = {name: (folder / name).read_bytes() for name in ("verify.csv", MERGED_FILE)}
        monkeypatch.setattr(backfill.validation.spill, "_temp_file", lambda folder: FullDisk())
        where = re.escape(str(folder))
        said = (rf"^no space left for temporary verification data in {where} .*: free some "
                r"space there, or move the run folder to a disk with room and pass it as --out")
        with pytest.raises(TempSpaceError, match=said):
            run_verify(chosen, url, env=ENV, budget=TINY)
        assert {name: (folder / name).read_bytes() for name in before} == before
        assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
        # The advice, followed as given: the moved folder, passed as --out, verifies.
        monkeypatch.undo()
        moved = tmp_path / "bigger" / "r"
        moved.parent.mkdir()
        shutil.move(folder, moved)
        again = backfill_cli("verify", mapping, "--out", moved, "--export-url", standin.url,
                             "--json", cwd=tmp_path, env=ENV)  # fmt: skip
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["merged"] == 30
