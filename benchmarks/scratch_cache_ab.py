"""train.py's scratch cache, A/B: jaxnets' training step and eval forward with XLA's scratch kept between calls
(jaxnets/scratch_cache.py, the library train.py preloads) and without it, both otherwise in train.py's environment.

    python benchmarks/scratch_cache_ab.py [--models a,b] [--rounds 5] [--json PATH] [--tiny]

Per model, two worker processes (`cpu.py --model-worker`: warmed up, each timed call after an untimed one of the
same kind) run the train step, then the forward, interleaved round by round; reported per contender and call: the
median wall seconds, the minor page faults and kernel CPU seconds of its process during the call (medians), and
the peak RSS of a child running only that contender's training steps (cpu.py's memory probe). Writes --json
(default benchmarks/results/scratch_cache_ab.json) and the markdown next to it. `--tiny` runs every code path in
about a minute; it is not in the test suite, which keeps its budget for the library's own tests
(tests/test_scratch_cache.py checks the library itself).
"""

from __future__ import annotations

import statistics
import sys

import cpu
from harness import environment, model_ab_arguments, results, train_py_environment
from harness.memory import share_compilations
from harness.rounds import interleave
from harness.workers import workers

DEFAULT_MODELS = ("enas_macro", "resnext29_8x64d", "cifar_resnext50", "resnext50_32x4d", "mobilenet_v2")
KEPT, FRESH = "scratch kept", "scratch fresh"
CALLS = ("train", "forward")


def measure(name: str, rounds: int, tiny: bool, environments: dict[str, dict]) -> dict:
    spec = cpu.model_spec(name, tiny)
    memory = {c: cpu.probe_memory(spec, "jaxnets", env) for c, env in environments.items()}
    tiny_flag = ["--tiny"] if tiny else []
    row = {"model": name, "memory": memory}
    with workers({c: [cpu.__file__, "--model-worker", name, "jaxnets", *tiny_flag] for c in environments},
                 environments) as started:
        for call in CALLS:
            answers = {c: [] for c in environments}  # each timed call's: seconds, minor_faults, system_seconds
            times = interleave({c: started[c].timed(call, untimed_before=cpu.SETTLING, answers=answers[c])
                                for c in environments}, rounds)
            row[call] = {"speedup": times.speedup(KEPT, FRESH), "contenders": {c: {
                "seconds": times.median(c), "seconds_all": times.values[c],
                "minor_faults": statistics.median(a["minor_faults"] for a in answers[c]),
                "system_seconds": statistics.median(a["system_seconds"] for a in answers[c])}
                for c in environments}}
    return row


def markdown_body(report: dict) -> list[str]:
    rows = []
    for r in report["models"]:
        for call in CALLS:
            for contender, c in r[call]["contenders"].items():
                peak = r["memory"][contender].get("peak_mib") if call == "train" else None
                rows.append([r["model"], call, contender, results.num(c["seconds"] * 1000, ".0f"),
                             f"{c['minor_faults']:.0f}", results.num(c["system_seconds"] * 1000, ".0f"),
                             results.num(peak, ".0f") if peak else "-"])
            rows.append([r["model"], call, "kept / fresh, speed", f"**{r[call]['speedup']:.3f}x**", "", "", ""])
    return [f"jaxnets' float32 train steps and eval forwards (cpu.py's), median of {report['rounds']} interleaved "
            f"rounds, two worker processes per model, both in train.py's environment (GLIBC_TUNABLES="
            f"{report['glibc_tunables']}); {KEPT}: with LD_PRELOAD={report['library']}, as train.py restarts "
            f"itself; {FRESH}: without. Faults and kernel time: the worker's, during the timed call (getrusage). "
            "Peak: cpu.py's memory probe (training steps) in that environment. Speed > 1: the kept scratch is "
            "faster.", "",
            *results.table(["model", "call", "contender", "ms", "minor faults", "kernel ms", "peak MiB"], rows)]


def main() -> None:
    args = model_ab_arguments(__doc__, DEFAULT_MODELS, "scratch_cache_ab")
    kept = train_py_environment()
    if kept is None or "LD_PRELOAD" not in kept:
        sys.exit("scratch_cache_ab.py: train.py preloads no scratch cache here (not built, or LD_PRELOAD is set "
                 "already): nothing to compare")
    fresh = {k: v for k, v in kept.items() if k != "LD_PRELOAD"}
    models, rounds = args.models, args.rounds
    env = environment.capture()
    env["compilation_cache"] = share_compilations()
    report = {"environment": env, "tiny": args.tiny, "rounds": rounds, "library": kept["LD_PRELOAD"],
              "glibc_tunables": kept.get("GLIBC_TUNABLES"), "models": []}
    for name in models:
        report["models"].append(r := measure(name, rounds, args.tiny, {KEPT: kept, FRESH: fresh}))
        print(f"{name}: kept / fresh scratch, train {r['train']['speedup']:.3f}x, "
              f"forward {r['forward']['speedup']:.3f}x", flush=True)
    title = f"train.py's scratch cache{' (--tiny)' if args.tiny else ''}: kept or fresh"
    print(results.write(args.json or results.default_path("scratch_cache_ab", args.tiny), report, title,
                        markdown_body(report)))


if __name__ == "__main__":
    main()
