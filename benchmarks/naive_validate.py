"""The validation rules done the obvious way with pandas, as a baseline for ``bench.py``.

    python benchmarks/naive_validate.py FILE.csv --out DIR [--max-cluster-size 500]

Loads the whole file into a DataFrame, applies SPEC rules 1-8 with ordinary pandas idioms and
writes ``DIR/rejects.csv`` (``row,anon_id,identified_id,reason,detail``; the detail is a fixed
text per reason, not the row it refers to). Prints one JSON line: rows read, rows valid and the
count of each reason. Standard library, pandas, and the rules' constants from
``backfill.mixpanel``; not part of ``backfill``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from backfill.mixpanel import PLACEHOLDER_DISTINCT_IDS, UUID4_PATTERN

# The rules' constants come from the project (a module of plain constants); the logic below
# is written independently, the obvious way.
UUID4 = UUID4_PATTERN.strip("^$")
PLACEHOLDERS = sorted(PLACEHOLDER_DISTINCT_IDS | {"nan"})
DETAILS = {
    "missing_anon_id": "anon id is empty",
    "invalid_anon_id": "not a UUID v4",
    "missing_identified_id": "identified id is empty",
    "invalid_identified_id": "placeholder or over 255 bytes",
    "self_merge": "identified id equals anon id",
    "conflicting_anon_id": "anon id maps to two or more identified ids",
    "duplicate_pair": "repeats an earlier pair",
    "cluster_limit": "cluster limit reached",
}


def validate(path: Path, out_dir: Path, max_cluster_size: int = 500) -> dict[str, object]:
    """Apply the rules to the whole file at once; write rejects.csv; return the counts."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    anon = df["anon_id"].str.strip()
    ident = df["identified_id"].str.strip()

    # Rules 1-5: the first failing rule wins, so np.select takes them in order.
    per_row = [
        anon == "",
        ~anon.str.fullmatch(UUID4),
        ident == "",
        ident.str.lower().isin(PLACEHOLDERS) | (ident.str.encode("utf-8").str.len() > 255),
        anon == ident,
    ]
    names = list(DETAILS)
    reason = pd.Series(np.select(per_row, names[:5], default=""), index=df.index)

    # Rules 6-8 among the rows that passed 1-5.
    passing = reason == ""
    pairs = pd.DataFrame({"anon": anon[passing], "ident": ident[passing]})
    conflict = pairs.groupby("anon")["ident"].transform("nunique") > 1
    duplicate = ~conflict & pairs.duplicated(["anon", "ident"])
    survivors = pairs[~conflict & ~duplicate]
    rank = survivors.groupby("ident").cumcount()
    reason[conflict[conflict].index] = "conflicting_anon_id"
    reason[duplicate[duplicate].index] = "duplicate_pair"
    reason[rank[rank >= max_cluster_size - 1].index] = "cluster_limit"

    rejected = reason != ""
    rejects = pd.DataFrame(
        {
            "row": df.index[rejected] + 1,
            "anon_id": anon[rejected],
            "identified_id": ident[rejected],
            "reason": reason[rejected],
        }
    )
    rejects["detail"] = rejects["reason"].map(DETAILS)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects.to_csv(out_dir / "rejects.csv", index=False)
    counts = reason[rejected].value_counts()
    result: dict[str, object] = {
        "rows_read": len(df),
        "rows_valid": int((~rejected).sum()),
        "rejected": {name: int(counts.get(name, 0)) for name in names},
    }
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    """Command line: FILE --out DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-cluster-size", type=int, default=500)
    args = parser.parse_args()
    result = validate(args.input, args.out, args.max_cluster_size)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
