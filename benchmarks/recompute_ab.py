"""A model's train step with its blocks' inner activations recomputed in the backward (`layers.conv_batch_norm`'s
`recompute_output`, as MobileNetV2's and ResNe(X)t's blocks ask: their expanded tensors, the bottlenecks), against
the same step keeping them (`layers.separate_batch_norm`), one program beside the other.

    python benchmarks/recompute_ab.py [--models a,b] [--rounds 11] [--json PATH]

Both programs are cpu.py's train step (SGD with momentum, state donated), compiled in this one process from the same
variables and called alternately round by round (harness.rounds.alternate), each from its own copy of the state.
Reported: median ms per step of each, the median of the per-round ratios (kept / recomputed: > 1 means recomputing
is faster), the scratch XLA allocates for each step (`memory_analysis().temp_size_in_bytes`: the activations kept
for the backward, the gradients) and the largest difference of the two losses. Sizes as cpu.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import jax
import optax
from harness import environment, results
from harness.batches import LEARNING_RATE, MOMENTUM, random_batch
from harness.rounds import alternate
from harness.runners import host_variables, sgd_train_step

from jaxnets.models import create_model, layers, model_entry

MODELS = ("mobilenet_v2", "cifar_mobilenet_v2", "resnext50_32x4d")
SIZES = {224: (64, 32), 32: (32, 64)}  # (image size, batch) by the reference image size, as cpu.py


def measure(name: str, rounds: int) -> dict:
    size, batch = SIZES[model_entry(name).reference.image_size]
    images, labels = random_batch(batch, size, 10)
    x, y = jax.device_put(images.transpose(0, 2, 3, 1)), jax.device_put(labels.astype("int32"))
    key = jax.random.key(1)
    model = create_model(name, num_classes=10)
    variables = host_variables(model, x)
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

    def state():
        params = jax.device_put(variables["params"])
        return {"params": params, "batch_stats": jax.device_put(variables["batch_stats"]),
                "opt": jax.jit(tx.init)(params)}

    def compiled(kept: bool):
        separately = layers.separate_batch_norm() if kept else contextlib.nullcontext()
        with layers.conv_lowering("auto", "cpu"), separately:
            return jax.jit(sgd_train_step(model, tx), donate_argnums=0).lower(state(), x, y, key).compile()

    programs = {"recomputed": compiled(False), "kept": compiled(True)}
    states = {kind: state() for kind in programs}
    losses = {}

    def call(kind):
        def step():
            states[kind], losses[kind] = programs[kind](states[kind], x, y, key)
            jax.block_until_ready(losses[kind])
        return step

    first = {kind: float(programs[kind](state(), x, y, key)[1]) for kind in programs}
    seconds = alternate({kind: call(kind) for kind in programs}, rounds)
    ratios = [k / r for k, r in zip(seconds["kept"], seconds["recomputed"], strict=True)]
    scratch = {kind: program.memory_analysis().temp_size_in_bytes / 2**20 for kind, program in programs.items()}
    return {"model": name, "size": size, "batch": batch, "seconds": seconds, "ratio": statistics.median(ratios),
            "recomputed_ms": 1e3 * statistics.median(seconds["recomputed"]),
            "kept_ms": 1e3 * statistics.median(seconds["kept"]), "scratch_mib": scratch,
            "first_losses": first, "loss_difference": abs(first["recomputed"] - first["kept"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", default=results.default_path("recompute_ab"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args.rounds))
        r = rows[-1]
        print(f"{name}: recomputed {r['recomputed_ms']:.1f} ms, kept {r['kept_ms']:.1f} ms, {r['ratio']:.3f}x; "
              f"scratch {r['scratch_mib']['recomputed']:.1f} / {r['scratch_mib']['kept']:.1f} MiB", flush=True)
    report = {"environment": environment.capture(), "rounds": args.rounds, "models": rows}
    body = [
        f"Train step, float32, median of {args.rounds} alternating rounds in one process (`python "
        "benchmarks/recompute_ab.py`): the blocks' inner activations (MobileNetV2's expanded tensors, ResNeXt's "
        "bottleneck) recomputed in the backward (as the models do) against kept (`layers.separate_batch_norm`); "
        "ratio = median per-round kept / recomputed (> 1: recomputing is faster); scratch = XLA's temp allocation per "
        "step; losses: |recomputed - kept| of the first step.",
        "",
        *results.table(["model", "size", "batch", "recomputed ms", "kept ms", "ratio", "scratch MiB recomputed",
                        "kept", "losses differ by"],
                       [[r["model"], r["size"], r["batch"], results.num(r["recomputed_ms"]), results.num(r["kept_ms"]),
                         results.num(r["ratio"], ".3f", "x"), results.num(r["scratch_mib"]["recomputed"]),
                         results.num(r["scratch_mib"]["kept"]), f"{r['loss_difference']:.1e}"] for r in rows]),
    ]
    print(results.write(args.json, report, "Train step: the blocks' inner activations recomputed against kept", body))


if __name__ == "__main__":
    main()
