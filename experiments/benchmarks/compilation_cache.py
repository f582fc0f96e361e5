"""Start-up cost of a run with and without ``execution.compilation_cache``.

Each repetition starts three ``fedpriv-train`` processes with the same configuration: one
without the cache, then two with a fresh cache directory (the first fills it, the second
loads from it). It reports each run's ``compile_seconds`` and ``wall_seconds`` from its
``summary.json``, the process's wall-clock time, and the ratios of the loaded run to the
uncached one measured in the same repetition; the final accuracies must agree.

    python experiments/benchmarks/compilation_cache.py --repeats 3 [--json] [-- OVERRIDES...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(run_dir: Path, overrides: list[str], cache: Path | None) -> dict:
    cmd = [sys.executable, "-m", "fedpriv.train", "progress=false", f"hydra.run.dir={run_dir}"]
    if cache is not None:
        cmd.append(f"execution.compilation_cache={cache}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # only the option under test
    t0 = time.perf_counter()
    subprocess.run([*cmd, *overrides], check=True, capture_output=True, env=env)
    process = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "process_seconds": round(process, 3),
        "wall_seconds": summary["diagnostics"]["wall_seconds"],
        "compile_seconds": summary["diagnostics"]["compile_seconds"],
        "accuracy": summary["final"].get("test_accuracy"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help="fedpriv-train overrides (after --)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedpriv-cache-bench-") as tmp:
        root = Path(tmp)
        for r in range(args.repeats):
            cache = root / f"cache{r}"
            row = {
                "uncached": one_run(root / f"plain{r}", args.overrides, None),
                "filling": one_run(root / f"fill{r}", args.overrides, cache),
                "loaded": one_run(root / f"load{r}", args.overrides, cache),
            }
            accs = {v["accuracy"] for v in row.values()}
            assert len(accs) == 1, f"the cache changed the result: {row}"
            for key in ("compile_seconds", "process_seconds"):
                row[f"loaded/uncached {key}"] = round(row["loaded"][key] / row["uncached"][key], 3)
            rows.append(row)
            if not args.json:
                print(
                    f"repeat {r}: compile {row['uncached']['compile_seconds']:.2f} s uncached, "
                    f"{row['loaded']['compile_seconds']:.2f} s from the cache "
                    f"(x{row['loaded/uncached compile_seconds']:.2f}); process "
                    f"{row['uncached']['process_seconds']:.1f} s -> "
                    f"{row['loaded']['process_seconds']:.1f} s "
                    f"(x{row['loaded/uncached process_seconds']:.2f})",
                    flush=True,
                )
    out = {
        "overrides": args.overrides,
        "repeats": rows,
        "median_compile_ratio": statistics.median(
            r["loaded/uncached compile_seconds"] for r in rows
        ),
        "median_process_ratio": statistics.median(
            r["loaded/uncached process_seconds"] for r in rows
        ),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"median loaded/uncached: compile x{out['median_compile_ratio']:.2f}, "
            f"process x{out['median_process_ratio']:.2f}"
        )
    return out


if __name__ == "__main__":
    main()
