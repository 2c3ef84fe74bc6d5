"""How long train.py takes to answer: a bad config, an unprepared dataset, and the quickstart's first steps with
its programs compiled afresh and found in the compilation cache.

    python benchmarks/startup.py [--rounds 3] [--json PATH]

Every figure is a fresh process started as a user types the command, timed from its start (wall clock, which is
what a user waits for); the rounds are interleaved (this VM's speed drifts over minutes) and medians reported.
- bad config: the quickstart with `--config.learning_rate=-1`, until it exits.
- unprepared dataset: the quickstart on CIFAR-10 with an empty `--config.data_dir`, until it exits.
- quickstart, cold / warm: until its first progress line (`--config.log_every_steps=10`: the first call of the
  recipe's 10 steps per call), in a new workdir each time, reading the bundled digits from a data_dir prepared
  before the first round; cold with an empty `--compilation_cache`, warm with the one the cold run just filled
  (as a repeated or resumed run finds it).
- imports: a process that imports what train.py imports before its first step (train.py's modules and the input
  pipeline, hence TensorFlow), until it says so; "after its imports" is a quickstart figure less this one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from harness import REPO, environment, results

QUICKSTART = [sys.executable, "train.py", "--config", "configs/quickstart.py"]
# train.py's imports, with the cycle collector tuned first as train.py tunes it; timed until the line printed after
# them, as the quickstart is timed until its line (a process's exit frees its objects for another 1-2 s, which
# train.py's steps do not wait for).
IMPORTS = ("import jaxnets.collector; jaxnets.collector.tune(); import sys; sys.argv = ['train.py'];"
           " sys.path.insert(0, '.'); import train, jaxnets.data.pipeline; print('imported', flush=True)")


def seconds_until_exit(command: list[str], expect_in_stderr: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode == 0 or expect_in_stderr not in result.stderr:
        raise RuntimeError(f"{command}: expected a refusal naming {expect_in_stderr!r}:\n{result.stderr[-2000:]}")
    return elapsed


def seconds_until_first_steps(workdir: str, data_dir: str, cache: str) -> float:
    """The quickstart from its start to its first progress line; then it is killed (nothing of it is kept)."""
    command = [*QUICKSTART, "--workdir", workdir, f"--config.data_dir={data_dir}", f"--compilation_cache={cache}",
               "--config.log_every_steps=10"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in process.stderr:
            if "step 10/" in line:
                return time.perf_counter() - start
        raise RuntimeError(f"the quickstart exited {process.wait()} before its first progress line")
    finally:
        process.kill()
        process.wait()


def seconds_to_import() -> float:
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", IMPORTS], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "imported":
            raise RuntimeError(f"train.py's imports failed (exit {process.wait()})")
        return time.perf_counter() - start
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=results.default_path("startup"))
    args = parser.parse_args()

    # The quickstart as a user runs it: no XLA_FLAGS of a test session, nothing else in the environment.
    for variable in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        os.environ.pop(variable, None)
    figures: dict[str, list[float]] = {name: [] for name in
                                       ("bad config", "unprepared dataset", "imports", "quickstart cold",
                                        "quickstart warm")}
    with tempfile.TemporaryDirectory() as root:
        data_dir, empty = os.path.join(root, "tfds"), os.path.join(root, "empty")
        os.makedirs(empty)
        subprocess.run([sys.executable, "-m", "jaxnets.data.prepare", "digits", "--data_dir", data_dir], cwd=REPO,
                       check=True, capture_output=True, timeout=600)
        for r in range(args.rounds):
            run = os.path.join(root, f"round{r}")
            figures["bad config"].append(seconds_until_exit(
                [*QUICKSTART, "--workdir", f"{run}-bad", "--config.learning_rate=-1"], "config.learning_rate"))
            figures["unprepared dataset"].append(seconds_until_exit(
                [*QUICKSTART, "--workdir", f"{run}-unprepared", "--config.dataset=cifar10",
                 f"--config.data_dir={empty}"], "is not prepared"))
            figures["imports"].append(seconds_to_import())
            cache = os.path.join(root, f"cache{r}")
            figures["quickstart cold"].append(seconds_until_first_steps(f"{run}-cold", data_dir, cache))
            figures["quickstart warm"].append(seconds_until_first_steps(f"{run}-warm", data_dir, cache))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()),
                  flush=True)

    medians = {name: statistics.median(values) for name, values in figures.items()}
    rows = [[name, results.num(medians[name], ".2f"), " / ".join(f"{v:.2f}" for v in figures[name])]
            for name in figures]
    for name in ("quickstart cold", "quickstart warm"):  # each round's run less its own imports (the VM drifts)
        after = [run - imports for run, imports in zip(figures[name], figures["imports"], strict=True)]
        medians[f"{name}, after its imports"] = statistics.median(after)
        rows.append([f"{name}, after its imports", results.num(medians[f"{name}, after its imports"], ".2f"),
                     " / ".join(f"{v:.2f}" for v in after)])
    report = {"environment": environment.capture(), "rounds": args.rounds, "seconds": figures, "medians": medians}
    body = [
        "Seconds from the command's start (wall clock, a fresh process each; `python benchmarks/startup.py "
        f"--rounds {args.rounds}`, rounds interleaved): until a bad config or an unprepared dataset is refused, "
        "until the quickstart's first progress line (its first call of 10 steps) with an empty compilation cache "
        "(cold) and with the one the cold run filled (warm), and for train.py's imports alone (TensorFlow's "
        "included), until they are done. After its imports: each round's quickstart less that round's imports.",
        "",
        *results.table(["what", "median s", "each round"], rows),
    ]
    print(results.write(args.json, report, "Time to the first answer", body))


if __name__ == "__main__":
    main()
