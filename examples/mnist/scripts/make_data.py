#!/usr/bin/env python3
"""Writes data/features/{training,validation,test}/x???.csv from scikit-learn's
8x8 digits (bundled with scikit-learn, so nothing is downloaded).

The shuffle uses a fixed seed, so rerunning gives byte-identical files and the
data bundle keeps the same content hash. Each split is cut into chunks named the
way `split` names its pieces (xaaa.csv, xaab.csv, ...), like the original data.
"""

import argparse
import csv
import itertools
import random
import string
import sys
from pathlib import Path

SEED = 20240501
CHUNK_ROWS = 200
SPLITS = (("training", 0.6), ("validation", 0.2), ("test", 0.2))
FEATURE_COUNT = 64


def chunk_names():
    # xaaa, xaab, ..., xaaz, xaba, ...: lexical order equals row order.
    for letters in itertools.product(string.ascii_lowercase, repeat=3):
        yield "x" + "".join(letters) + ".csv"


def main() -> int:
    example_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=example_root / "data" / "features",
        help="directory that receives training/, validation/ and test/ (default: %(default)s)",
    )
    args = parser.parse_args()

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("make_data.py: scikit-learn is not installed; run: pip install scikit-learn", file=sys.stderr)
        return 1

    digits = load_digits()
    rows = [
        [int(label)] + [int(value) for value in pixels]
        for label, pixels in zip(digits.target, digits.data)
    ]
    random.Random(SEED).shuffle(rows)

    total = len(rows)
    train_end = round(total * SPLITS[0][1])
    validation_end = train_end + round(total * SPLITS[1][1])
    split_rows = {
        "training": rows[:train_end],
        "validation": rows[train_end:validation_end],
        "test": rows[validation_end:],
    }

    header = ["label"] + [f"p{index}" for index in range(FEATURE_COUNT)]
    for split, _ in SPLITS:
        split_dir = args.out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        # Stale chunks from an earlier run with more rows would otherwise stay in the bundle.
        for stale in split_dir.glob("x*.csv"):
            stale.unlink()
        chunks = [split_rows[split][start:start + CHUNK_ROWS] for start in range(0, len(split_rows[split]), CHUNK_ROWS)]
        for name, chunk in zip(chunk_names(), chunks):
            with open(split_dir / name, "w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(chunk)
        print(f"{split}: {len(split_rows[split])} rows in {len(chunks)} files under {split_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
