"""The comparison page's claims, read from a results store without building the book.

    python scripts/claims_table.py results/quick                # the decision table per paper
    python scripts/claims_table.py results/quick claims.csv     # and every claim row as CSV

Prints the decided share (agrees + disagrees over the counted claims), the decision table
(``compare.decision_table``) and the verdict counts: what a change to a rule moved is the
difference between two such CSVs of the same store.
"""

from __future__ import annotations

import sys
from pathlib import Path

from layerlab.book import compare
from layerlab.core.evidence import verdicts
from layerlab.core.io.results import ResultStore


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not root.is_dir():
        print(f"results dir {str(root)!r} does not exist", file=sys.stderr)
        return 2
    table = compare.claims(ResultStore(root))
    words = compare.claim_words(table)  # one per counted claim; "not run" rows are in no count
    decided = words["word"].isin([verdicts.AGREES, verdicts.DISAGREES])
    print(f"{int(decided.sum())} of {len(words)} counted claims decided ({100 * decided.mean():.0f}%)")
    print(compare.decision_table(table).to_string())
    print(compare.verdict_counts(table).to_string())
    if len(argv) == 2:
        table.assign(word=table["verdict"].map(verdicts.word)).to_csv(argv[1], index=False)
        print(f"{len(table)} rows -> {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
