"""The ENAS quickstart search end to end, and the comparison the ENAS literature found decisive.

    python benchmarks/enas_search_quickstart.py [--workdir /tmp/jaxnets-enas-bench] [--random-arcs 5]
    python benchmarks/enas_search_quickstart.py --config configs/enas_search_audio.py --workdir ...   # on sound

1. The search, as the README runs it: train.py --config configs/enas_search_quickstart.py (or --config; timed).
2. Its final arc trained from scratch: train.py --config SEARCH/final_config.py.
3. The same recipe with each of N uniformly random arcs of the same space (`random_arc(seed i)`), trained
   the same way: only the ARC line of final_config.py differs.
Writes results/<the recipe's name>.json and .md: the wall times, the controller's mean reward per epoch
(its rise, against its epoch-to-epoch noise) and the test top-1 of the found arc beside the random arcs.
Runs one train.py at a time (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
from harness import REPO, environment, load_recipe, results

from jaxnets.models.enas import random_arc


def train(config: pathlib.Path, workdir: pathlib.Path) -> float:
    """Runs train.py to the end; returns its wall time in seconds."""
    start = time.perf_counter()
    with open(workdir.with_suffix(".log"), "w") as log:
        subprocess.run([sys.executable, "train.py", "--config", str(config), "--workdir", str(workdir)], cwd=REPO,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_top1(workdir: pathlib.Path) -> float:
    return [r for r in jsonl(workdir / "metrics.jsonl") if "eval_top1" in r][-1]["eval_top1"]


def reward_curve(search: pathlib.Path) -> list[float]:
    return [r["controller_reward"] for r in jsonl(search / "search.jsonl") if "epoch" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/jaxnets-enas-bench")
    parser.add_argument("--config", default="configs/enas_search_quickstart.py", help="the search's recipe")
    parser.add_argument("--random-arcs", type=int, default=5)
    parser.add_argument("--window", type=int, default=10, help="epochs averaged at the start and the end")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir)
    if root.exists():
        sys.exit(f"{root} exists: give a new --workdir (nothing is overwritten)")
    root.mkdir(parents=True)
    env = environment.capture()  # before the runs: their load is not the machine's

    search = root / "search"
    recipe_path = REPO / args.config
    search_seconds = train(recipe_path, search)
    final_recipe = search / "final_config.py"
    final_seconds = train(final_recipe, root / "final")
    model = load_recipe(final_recipe).model_overrides
    random_top1 = []
    for seed in range(args.random_arcs):
        arc = " ".join(map(str, random_arc(seed, model.num_layers, model.num_branches, model.whole_channels,
                                           model.num_filters).tolist()))
        recipe = root / f"random_{seed}.py"
        recipe.write_text(re.sub(r"^ARC = .*$", f"ARC = {arc!r}", final_recipe.read_text(), flags=re.M))
        train(recipe, root / f"random_{seed}")
        random_top1.append({"arc": arc, "test_top1": final_top1(root / f"random_{seed}")})

    rewards = np.asarray(reward_curve(search))
    w = args.window
    final_record = [r for r in jsonl(search / "search.jsonl") if r.get("final")][-1]
    result = {
        "environment": env,
        "search_seconds": search_seconds,
        "final_train_seconds": final_seconds,
        "reward_per_epoch": rewards.tolist(),
        "reward_first_epochs": float(rewards[:w].mean()),
        "reward_last_epochs": float(rewards[-w:].mean()),
        "reward_noise_last_epochs": float(rewards[-w:].std()),  # epoch-to-epoch spread of the mean reward
        "final_arc": final_record["final_arc"],
        "final_arc_heldout_accuracy_shared_weights": final_record["final_accuracy"],
        "final_pick": {k: final_record[k] for k in ("samples", "uniform") if k in final_record},
        "final_test_top1": final_top1(root / "final"),
        "random_arcs": random_top1,
        "random_median_test_top1": float(np.median([r["test_top1"] for r in random_top1])),
    }
    rise = result["reward_last_epochs"] - result["reward_first_epochs"]
    body = [
        f"- search: {search_seconds:.0f} s wall; mean reward {result['reward_first_epochs']:.3f} (first {w} epochs) "
        f"-> {result['reward_last_epochs']:.3f} (last {w}), rise {rise:.3f} vs epoch-to-epoch noise "
        f"{result['reward_noise_last_epochs']:.3f} (std over the last {w})",
        f"- final arc `{result['final_arc']}`: held-out accuracy through the shared weights "
        f"{result['final_arc_heldout_accuracy_shared_weights']:.4f}",
        "",
        *results.table(["trained from scratch (final_config.py)", "test top-1"], [
            ["the searched arc", f"{result['final_test_top1']:.4f}"],
            *[[f"random arc {i}", f"{r['test_top1']:.4f}"] for i, r in enumerate(random_top1)],
            [f"median of the {len(random_top1)} random arcs", f"{result['random_median_test_top1']:.4f}"],
        ]),
    ]
    print(results.write(results.default_path(recipe_path.stem), result, f"ENAS search: {recipe_path.name}", body))


if __name__ == "__main__":
    main()
