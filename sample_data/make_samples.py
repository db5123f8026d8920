"""Regenerate mappings.csv and mappings.parquet (same rows) with: python sample_data/make_samples.py

A realistic small export: ~600 anon-to-user mappings with a merge time, including at least one
row of every reject reason, ids that look like numbers (which must stay strings), and a shared
kiosk login with more anon ids than one Mixpanel identity cluster can hold.
"""

from __future__ import annotations

import csv
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
rng = random.Random(20261128)


def anon() -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def when() -> str:
    day = rng.randint(1, 28)
    month = rng.randint(1, 12)
    if rng.random() < 0.5:
        return f"2024-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
    return str(1_704_067_200 + rng.randint(0, 300 * 86_400))  # epoch seconds in 2024


rows: list[tuple[str, str, str]] = []
users = [f"user_{n:05d}" for n in rng.sample(range(10_000, 99_999), 60)]
users += ["00042", "1e5", "ana.souza@example.com", "Jörg.Müller@example.de"]
for u in users:
    for _ in range(rng.randint(1, 3)):
        rows.append((anon(), u, when()))

# One of every reject reason, with the near-misses beside them.
shared = anon()
rows += [
    ("", "user_10001", when()),  # missing_anon_id
    ("6fa459ea-ee8a-11ca-b6e1-0800200c9a66", "user_10002", when()),  # invalid_anon_id: UUID v1
    ("{" + anon() + "}", "user_10003", when()),  # invalid_anon_id: braced
    (anon().replace("-", ""), "user_10004", when()),  # invalid_anon_id: undashed
    ("00000000-0000-0000-0000-000000000000", "user_10005", when()),  # invalid_anon_id: nil
    (anon().upper(), "user_10006", when()),  # valid: uppercase UUID v4
    (anon(), "", when()),  # missing_identified_id
    (anon(), "null", when()),  # invalid_identified_id: placeholder
    (anon(), "Undefined", when()),  # invalid_identified_id: placeholder, any case
    (anon(), "x" * 300, when()),  # invalid_identified_id: over 255 bytes
]
same = anon()
rows.append((same, same, when()))  # self_merge
rows += [
    (anon(), "user_10007", "last tuesday"),  # invalid_time: unparseable
    (anon(), "user_10008", "1969-07-20T20:17:00Z"),  # invalid_time: before 1971
    (anon(), "user_10009", "2099-01-01T00:00:00Z"),  # invalid_time: in the future
    (shared, "user_20001", when()),  # conflicting_anon_id (both rows)
    (shared, "user_20002", when()),
]
dup = (anon(), "user_20003", when())
rows += [dup, dup]  # duplicate_pair (the second)
kiosk = "kiosk@store-12.example.com"
rows += [(anon(), kiosk, when()) for _ in range(501)]  # cluster_limit: rows past the 499th

header = ["anon_id", "identified_id", "merged_at"]
with (HERE / "mappings.csv").open("w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
table = pa.table({h: pa.array([r[i] or None for r in rows], pa.string()) for i, h in enumerate(header)})
pq.write_table(table, HERE / "mappings.parquet")
print(f"{len(rows)} rows written")
