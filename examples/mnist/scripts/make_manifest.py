#!/usr/bin/env python3
"""Regenerates data_manifest_micro/manifest.jsonl from data/features/.

One JSON object per CSV: {"url", "path", "sha256", "size"}. `path` is where the
file lands inside the data directory (training/xaaa.csv); `url` is BASE_URL
followed by the file's place under this template (data/features/training/xaaa.csv),
so serving this template's directory over HTTP at BASE_URL makes every URL
resolve. Rerun after make_data.py so the hashes and sizes stay true.
Standard library only.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

DEFAULT_BASE_URL = "http://127.0.0.1:8765"


def main() -> int:
    example_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help="URL at which this template's directory is served (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=example_root / "data" / "features",
        help="data directory to describe (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=example_root / "data_manifest_micro" / "manifest.jsonl",
        help="manifest file to write (default: %(default)s)",
    )
    args = parser.parse_args()

    files = sorted(path for path in args.data.rglob("*.csv") if path.is_file())
    if not files:
        print(f"make_manifest.py: no *.csv files under {args.data}; run make_data.py first", file=sys.stderr)
        return 1

    data_dir = args.data.resolve()
    try:
        url_prefix = data_dir.relative_to(example_root).as_posix()
    except ValueError:
        # Data outside the template: its files are served from the base URL's root.
        url_prefix = ""
    base_url = args.base_url.rstrip("/")

    lines = []
    for path in files:
        relative = path.resolve().relative_to(data_dir).as_posix()
        content = path.read_bytes()
        url = "/".join(part for part in (base_url, url_prefix, relative) if part)
        entry = {
            "url": url,
            "path": relative,
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
        lines.append(json.dumps(entry))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} entries to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
