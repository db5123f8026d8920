"""The spill store and the partitioned index: any memory budget gives the same verdicts, temp
files never outlive a run on any exit path, and a full disk is one clear line, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from runkit import rejects_lines as read_rejects

import backfill.commands.pipeline
import backfill.validation.spill
from backfill.cli import main
from backfill.errors import TempSpaceError
from backfill.read import Chunk, Columns, open_chunks
from backfill.validation.judge import judge
from backfill.validation.reasons import Reason
from backfill.validation.spill import Records, Store
from backfill.validation.verdicts import References

NOW_MS = 1_760_000_000_000


def files_open_in(folder: Path) -> int:
    """How many open file descriptors of this process point into ``folder``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/"):
                count += 1
    return count


def unit_keys(store: Store, unit_bytes: int) -> list[tuple[list[int], list[int]]]:
    """Each unit's (rows, keys) as lists."""
    return [(u.numbers[0].tolist(), u.numbers[1].tolist()) for u in store.units(unit_bytes)]


def keyed_records(n: int, distinct: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows 0..n-1 with keys drawn from ``distinct`` random 64-bit values."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**64 - 1, size=distinct, dtype=np.uint64, endpoint=True)
    return np.arange(n, dtype=np.int64), values[rng.integers(0, distinct, size=n)]


class TestStore:
    def test_below_the_limit_records_stay_in_memory_as_one_unit(self, tmp_path: Path) -> None:
        """Under its limit a store writes nothing and gives everything back in order."""
        rows, keys = keyed_records(1000, 50, 1)
        with Store(
            (np.int64, np.uint64), key=1, partitions=4, limit_bytes=1 << 20, spill_dir=tmp_path
        ) as store:
            for lo in range(0, 1000, 64):
                store.add(Records((rows[lo : lo + 64], keys[lo : lo + 64])))
            units = unit_keys(store, 100)
            assert not store.spilled
        assert units == [(rows.tolist(), keys.tolist())]

    @pytest.mark.parametrize(("partitions", "unit_bytes"), [(1, 1), (3, 200), (7, 1 << 20)])
    def test_units_keep_each_key_whole_and_in_file_order(
        self, tmp_path: Path, partitions: int, unit_bytes: int
    ) -> None:
        """On disk, every record comes back once, each key in one unit, rows ascending."""
        rows, keys = keyed_records(500, 40, 2)
        with Store(
            (np.int64, np.uint64),
            key=1,
            partitions=partitions,
            limit_bytes=16 * 37,
            spill_dir=tmp_path,
        ) as store:
            for lo in range(0, 500, 23):
                store.add(Records((rows[lo : lo + 23], keys[lo : lo + 23])))
            units = unit_keys(store, unit_bytes)
            assert store.spilled
        unit_of: dict[int, int] = {}
        for u, (unit_rows, unit_keys_) in enumerate(units):
            assert unit_rows == sorted(unit_rows)
            for key in unit_keys_:
                assert unit_of.setdefault(key, u) == u
        assert sorted(r for unit_rows, _ in units for r in unit_rows) == rows.tolist()
        assert all(unit_rows for unit_rows, _ in units), "no empty unit"
        if unit_bytes == 1:
            assert len(units) > 10, "a partition bigger than a unit is read in several"

    def test_strings_come_back_exactly(self, tmp_path: Path) -> None:
        """Strings of any length and script survive the trip to disk, with their rows."""
        words = ["", "a", "zoë.müller@icloud.com", "😀" * 70, "two\nlines", "x" * 300, "null"]
        rng = random.Random(3)
        texts = [rng.choice(words) + str(i % 5) for i in range(300)]
        rows = np.arange(300, dtype=np.int64)
        keys = np.array([hash(t) % 97 for t in texts], dtype=np.uint64)
        with Store(
            (np.int64, np.uint64),
            key=1,
            text=True,
            partitions=3,
            limit_bytes=500,
            spill_dir=tmp_path,
        ) as store:
            for lo in range(0, 300, 17):
                part = pa.array(texts[lo : lo + 17], pa.string())
                store.add(Records((rows[lo : lo + 17], keys[lo : lo + 17]), part))
            got: dict[int, str] = {}
            for unit in store.units(700):
                assert unit.text is not None
                got.update(zip(unit.numbers[0].tolist(), unit.text.to_pylist(), strict=True))
            assert store.spilled
        assert got == dict(enumerate(texts))

    def test_temp_file_has_no_name_and_closing_frees_it(self, tmp_path: Path) -> None:
        """Spilled data lives in a file without a name: the folder stays empty, close frees it."""
        store = Store((np.int64,), key=0, partitions=2, limit_bytes=0, spill_dir=tmp_path)
        store.add(Records((np.arange(10, dtype=np.int64),)))
        assert store.spilled
        assert os.listdir(tmp_path) == []
        assert files_open_in(tmp_path) == 1
        store.close()
        assert files_open_in(tmp_path) == 0

    def test_full_disk_is_a_temp_space_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC while spilling raises TempSpaceError naming the folder and the fix."""
        monkeypatch.setattr(backfill.validation.spill, "_temp_file", lambda folder: FullDisk())
        store = Store((np.int64,), key=0, partitions=2, limit_bytes=0, spill_dir=tmp_path)
        with pytest.raises(TempSpaceError, match="no space left") as caught:
            store.add(Records((np.arange(10, dtype=np.int64),)))
        assert str(tmp_path) in str(caught.value)
        assert "--out" in str(caught.value)

    def test_unwritable_folder_is_a_temp_space_error(self, tmp_path: Path) -> None:
        """A spill folder that does not exist is refused with its name, not a traceback."""
        store = Store((np.int64,), key=0, partitions=2, limit_bytes=0, spill_dir=tmp_path / "nope")
        with pytest.raises(TempSpaceError, match="cannot write temporary validation data"):
            store.add(Records((np.arange(10, dtype=np.int64),)))


class FullDisk(io.BytesIO):
    """A file on a disk with no room left."""

    def write(self, data: Any) -> int:
        """Refuse, as a full disk does."""
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- the reference table ----------------------------------------------------------------------


@pytest.mark.parametrize("limit_bytes", [0, 1 << 20])
def test_references_answer_across_ranges_in_any_order(tmp_path: Path, limit_bytes: int) -> None:
    """Added out of order, on disk in ranges or in memory, each row finds its reference."""
    refs = References(100, limit_bytes=limit_bytes, spill_dir=tmp_path, range_rows=8)
    pairs = {r: r // 3 for r in range(5, 100, 4)}
    items = list(pairs.items())
    random.Random(4).shuffle(items)
    for lo in range(0, len(items), 5):
        rows, firsts = zip(*items[lo : lo + 5], strict=True)
        refs.add(np.array(rows, dtype=np.int64), np.array(firsts, dtype=np.int64))
    refs.finish()
    asked = np.array([1, 6, 7, 10, 50, 98, 99, 100, 101, 400], dtype=np.int64)  # 1-based
    expected = [pairs[r - 1] + 1 if r - 1 in pairs else 0 for r in asked.tolist()]
    assert refs.first_rows(asked).tolist() == expected
    assert refs.first_rows(asked[::-1]).tolist() == expected[::-1]
    refs.close()


# --- judging through the partitions -----------------------------------------------------------

U = "8e8afc84-9b31-46ab-a745-e5279afad5ab"


def mapping_rows(seed: int, n: int) -> list[tuple[str, str]]:
    """Rows with repeats, conflicts, bad ids and a full cluster."""
    rng = random.Random(seed)
    anons = [f"{rng.getrandbits(32):08x}-9b31-46ab-a745-e5279afad5ab" for _ in range(n // 3)]
    idents = [f"user_{i}" for i in range(n // 10)] + ["null"]
    home = {a: "kiosk" if rng.random() < 0.1 else rng.choice(idents) for a in anons}
    rows = []
    for _ in range(n):
        anon = rng.choice(anons)
        rows.append((anon, home[anon] if rng.random() < 0.97 else rng.choice(idents)))
    return rows


def test_failing_source_leaves_no_file_and_no_open_descriptor(
    tmp_path: Path, write_csv: Any
) -> None:
    """A read that fails after the index went to disk leaves nothing behind."""
    path = write_csv(tmp_path, mapping_rows(5, 400))
    chunks = open_chunks(path, "csv", Columns(), 50)

    def failing() -> Iterator[Chunk]:
        for k, chunk in enumerate(chunks()):
            if k == 5:
                raise OSError("the disk went away")
            yield chunk

    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(OSError, match="went away"):
        judge(failing, now_ms=NOW_MS, max_cluster_size=3, spill_dir=spill, index_memory_bytes=0)
    assert files_open_in(spill) == 0
    assert os.listdir(spill) == []


def test_verdicts_close_gives_back_the_reference_file(tmp_path: Path, write_csv: Any) -> None:
    """A judged input holds one temp file for its references, until Verdicts.close."""
    path = write_csv(tmp_path, mapping_rows(6, 400))
    spill = tmp_path / "spill"
    spill.mkdir()
    v = judge(
        open_chunks(path, "csv", Columns(), 50),
        now_ms=NOW_MS,
        max_cluster_size=3,
        spill_dir=spill,
        index_memory_bytes=0,
        partitions=3,
    )
    assert v.spilled_bytes > 0
    assert files_open_in(spill) == 1
    assert {Reason(int(r)) for r in v.reasons} >= {Reason.DUPLICATE_PAIR, Reason.CLUSTER_LIMIT}
    v.close()
    assert files_open_in(spill) == 0
    assert os.listdir(spill) == []
    with pytest.raises(ValueError, match="closed"):
        v.first_rows(np.array([1]))


def test_spilled_validation_writes_the_same_report(
    tmp_path: Path, write_csv: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`backfill validate` with the index on disk writes the same rejects.csv, no stray files."""
    path = write_csv(tmp_path, mapping_rows(7, 3000))
    args = ["validate", str(path), "--no-progress", "--max-cluster-size", "4"]
    assert main([*args, "--out", str(tmp_path / "memory")]) == 0
    monkeypatch.setattr(
        backfill.commands.pipeline,
        "judge",
        functools.partial(judge, index_memory_bytes=0, partitions=3),
    )
    assert main([*args, "--out", str(tmp_path / "disk")]) == 0
    capsys.readouterr()
    memory = read_rejects(tmp_path / "memory" / "rejects.csv")
    assert read_rejects(tmp_path / "disk" / "rejects.csv") == memory
    assert {r[3] for r in memory[1:]} >= {"duplicate_pair", "conflicting_anon_id", "cluster_limit"}
    assert sorted(os.listdir(tmp_path / "disk")) == sorted(os.listdir(tmp_path / "memory"))


def test_full_disk_while_validating_exits_2_with_one_line(
    tmp_path: Path, write_csv: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """No room for the temp files: exit 2, one line naming the folder and the fix."""
    path = write_csv(tmp_path, mapping_rows(8, 300))
    monkeypatch.setattr(
        backfill.commands.pipeline, "judge", functools.partial(judge, index_memory_bytes=0)
    )
    monkeypatch.setattr(backfill.validation.spill, "_temp_file", lambda folder: FullDisk())
    monkeypatch.delenv("BACKFILL_DEBUG", raising=False)
    code = main(["validate", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("backfill: error: no space left for temporary validation data in ")
    assert str(tmp_path / "o") in err
    assert len(err.strip().splitlines()) == 1
