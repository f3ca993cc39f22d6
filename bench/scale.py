"""Scale: the same embeddings pipeline at 100,000 and at 1,000,000 texts (768 dims, dense), one emulator, one run.

    python bench/scale.py                               # 100,000 then 1,000,000 texts (about 20 minutes on 2 cores)
    python bench/scale.py --small 10000 --large 100000  # a smaller pair

Each size runs in a fresh process into a fresh DuckDB file (bench/embeddings.py's ``gaia`` part, the settings the
script uses: see ``gaia_source.settings.dlt_defaults``). Cost should grow linearly: time at the large size over time
at the small one close to the size ratio, peak RSS nearly flat.

Targets (issue 21): 1,000,000 texts with peak RSS <= 1.5 GB and time <= 10.5x the 100,000 run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emulator, run_part, workdir  # noqa: E402
from embeddings import make_texts  # noqa: E402

EMBEDDINGS = str(Path(__file__).resolve().parent / "embeddings.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    texts_file = workdir("gaia-bench-scale-") / "texts.txt"
    make_texts(texts_file, args.large)
    results = {}
    print(f"scale: embeddings {args.small:,} then {args.large:,} texts x {args.dim} dims (dense), batch 64, "
          "concurrency 8, one emulator (nexus) in its own process", flush=True)
    with emulator("nexus", "--dim", str(args.dim)) as base_url:
        for count in (args.small, args.large):
            part = run_part(EMBEDDINGS, "gaia", {
                "texts_file": str(texts_file), "texts": count, "dim": args.dim, "batch_size": 64, "concurrency": 8,
                "slice": 0, "base_url": base_url, "dir": str(workdir("gaia-bench-scale-")),
            })
            assert part["rows"] == count, part
            results[count] = part
            print(f"{count:>10,} texts: {part['seconds']:8.1f} s   {count / part['seconds']:6.0f} texts/s   "
                  f"{1000 * part['seconds'] / count:6.3f} s per 1,000   peak RSS {part['peak_rss_mb']:6.0f} MB   "
                  f"steps {part['steps']}", flush=True)
    small, large = results[args.small], results[args.large]
    size_ratio = args.large / args.small
    print(f"time {args.large:,} / {args.small:,}: {large['seconds'] / small['seconds']:.2f}x for {size_ratio:.0f}x the "
          f"texts (target <= {1.05 * size_ratio:.1f}x)")
    print(f"peak RSS at {args.large:,} texts: {large['peak_rss_mb']:.0f} MB (target <= 1536 MB; "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the {args.small:,} run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
