"""A recipe through train.py from scratch, as its docstring runs it: wall time and its last evaluation.

    python benchmarks/recipe_run.py --config configs/audio_quickstart.py [--workdir /tmp/jaxnets-recipe-bench]

Writes results/<the recipe's name>_run.json and .md (what docs/ quote about the recipe's accuracy and time).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

from harness import REPO, environment, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a recipe, e.g. configs/audio_quickstart.py")
    parser.add_argument("--workdir", default="/tmp/jaxnets-recipe-bench")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    if workdir.exists():
        sys.exit(f"{workdir} exists: give a new --workdir (nothing is overwritten)")
    env = environment.capture()  # before the run: its load is not the machine's
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "--config", args.config, "--workdir", str(workdir)], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluations = [r for r in records if "eval_top1" in r]
    name = pathlib.Path(args.config).stem
    report = {"environment": env, "config": args.config, "wall_seconds": seconds, "evaluations": evaluations}
    body = [f"`python train.py --config {args.config}` from an empty workdir: {seconds:.0f} s wall (start-up, "
            "compiles and data preparation included).", "",
            *results.table(["step", "eval top-1", "eval loss"],
                           [[r["step"], f"{r['eval_top1']:.4f}", f"{r['eval_loss']:.4f}"] for r in evaluations])]
    print(results.write(results.default_path(f"{name}_run"), report, f"Recipe run: {name}", body))


if __name__ == "__main__":
    main()
