"""train.py's malloc setting, A/B: each framework's training step with glibc's malloc asking for transparent
huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which train.py restarts itself with where the kernel gives
huge pages on request only) and without.

    python benchmarks/malloc_huge_pages.py [--models a,b] [--rounds 5] [--json PATH] [--tiny]

Per model, four worker processes (jaxnets and PyTorch, each with and without the tunable) run cpu.py's train
step (`cpu.py --model-worker`: warmed up, each timed call after an untimed one), interleaved round by round;
reported per contender: the median wall seconds of a step, the minor page faults and kernel CPU seconds of its
process during that step (median), and the peak RSS of a child running only that contender's steps (cpu.py's
memory probe). Writes --json (default benchmarks/results/malloc_huge_pages.json) and the markdown next to it.
"""

from __future__ import annotations

import statistics
import sys

import cpu
from harness import environment, model_ab_arguments, results, train_py_huge_pages_environment
from harness.memory import share_compilations
from harness.rounds import interleave
from harness.workers import workers

DEFAULT_MODELS = ("resnext50_32x4d", "mobilenet_v2", "cifar_resnext50")


def measure(name: str, rounds: int, tiny: bool, huge_pages: dict[str, str]) -> dict:
    tiny_flag = ["--tiny"] if tiny else []
    contenders = {f"{fw}, {label}": (fw, env) for fw in cpu.FRAMEWORKS
                  for label, env in (("huge pages", huge_pages), ("plain", None))}
    spec = cpu.model_spec(name, tiny)
    memory = {c: cpu.probe_memory(spec, fw, env) for c, (fw, env) in contenders.items()}
    answers = {c: [] for c in contenders}  # each timed call's answer: seconds, minor_faults, system_seconds
    with workers({c: [cpu.__file__, "--model-worker", name, fw, *tiny_flag] for c, (fw, _) in contenders.items()},
                 {c: env for c, (_, env) in contenders.items()}) as started:
        times = interleave({c: started[c].timed("train", untimed_before=cpu.SETTLING, answers=answers[c])
                            for c in contenders}, rounds)
    return {"model": name, "contenders": {c: {
        "step_seconds": times.median(c), "step_seconds_all": times.values[c],
        "minor_faults_per_step": statistics.median(a["minor_faults"] for a in answers[c]),
        "system_seconds_per_step": statistics.median(a["system_seconds"] for a in answers[c]),
        "memory": memory[c]} for c in contenders},
        "speedup_jaxnets": times.speedup("jaxnets, huge pages", "jaxnets, plain"),
        "speedup_pytorch": times.speedup("pytorch, huge pages", "pytorch, plain")}


def markdown_body(report: dict) -> list[str]:
    rows = []
    for r in report["models"]:
        for contender, c in r["contenders"].items():
            peak = c["memory"].get("peak_mib")
            rows.append([r["model"], contender, results.num(c["step_seconds"] * 1000, ".0f"),
                         f"{c['minor_faults_per_step']:.0f}", results.num(c["system_seconds_per_step"] * 1000, ".0f"),
                         results.num(peak, ".0f") if peak else c["memory"].get("error", "-")[-200:]])
        rows.append([r["model"], "huge pages / plain, step time", f"jaxnets {1 / r['speedup_jaxnets']:.2f}x",
                     f"PyTorch {1 / r['speedup_pytorch']:.2f}x", "", ""])
    return [f"Float32 train steps (cpu.py's), median of {report['rounds']} interleaved rounds, four worker "
            f"processes per model; huge pages: GLIBC_TUNABLES={report['huge_pages_tunables']}, as train.py sets it. "
            "Faults and kernel time: the worker process's, during the timed step (getrusage). Peak: cpu.py's "
            "memory probe in that environment.", "",
            *results.table(["model", "contender", "step ms", "minor faults", "kernel ms", "peak MiB"], rows)]


def main() -> None:
    args = model_ab_arguments(__doc__, DEFAULT_MODELS, "malloc_huge_pages")
    huge_pages = train_py_huge_pages_environment()
    if huge_pages is None:
        sys.exit("malloc_huge_pages.py: train.py keeps its caller's malloc here (the kernel gives huge pages "
                 "always or never, glibc is older than 2.35, or GLIBC_TUNABLES names glibc.malloc.hugetlb): "
                 "nothing to compare")
    models, rounds = args.models, args.rounds
    env = environment.capture()
    env["compilation_cache"] = share_compilations()
    report = {"environment": env, "tiny": args.tiny, "rounds": rounds,
              "huge_pages_tunables": huge_pages["GLIBC_TUNABLES"], "models": []}
    for name in models:
        report["models"].append(r := measure(name, rounds, args.tiny, huge_pages))
        print(f"{name}: huge pages / plain step time, jaxnets {1 / r['speedup_jaxnets']:.2f}x, "
              f"PyTorch {1 / r['speedup_pytorch']:.2f}x", flush=True)
    title = f"train.py's malloc setting{' (--tiny)' if args.tiny else ''}: huge pages or not"
    print(results.write(args.json or results.default_path("malloc_huge_pages", args.tiny), report, title,
                        markdown_body(report)))


if __name__ == "__main__":
    main()
