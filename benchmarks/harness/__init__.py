"""The benchmarks' one harness: what every script in benchmarks/ shares.

- `environment`: what a figure was measured on (CPU model and ISA, the variables and threads that move speed,
  package versions, git commit, date);
- `rounds`: interleaved rounds of timed calls, medians and ratios;
- `memory`: peak memory (host RSS in a child process that runs nothing else, device peaks);
- `results`: the JSON and the markdown under benchmarks/results/, headed by the environment;
- `runners`, `torch_runners`: one model's train step and eval forward in jaxnets, and in its PyTorch twin; neither
  imports the other's framework (`batches`: the inputs and optimizer settings they share).

The scripts run as `python benchmarks/NAME.py`: benchmarks/ is first on sys.path, so `import harness` finds
this package. Nothing here imports TensorFlow: cpu.py and gpu.py run where it is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"

# The PyTorch twins (tests/torch_twins) are shared by the parity tests and the benchmarks, and live outside
# the jaxnets package so that the wheel ships no PyTorch code: benchmarks reach them through tests/. Appended,
# not prepended, so no test module shadows an installed package.
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


def load_recipe(path):
    """`get_config()` of a recipe file (configs/*.py, or a search's final_config.py)."""
    if str(REPO) not in sys.path:  # recipes import each other (`from configs import resnext50`), as under train.py
        sys.path.insert(0, str(REPO))
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _train_py():
    """train.py as a module, once per process (its absl flags are defined on import); not as __main__: it starts
    nothing."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import train

    return train


def train_py_environment() -> dict[str, str] | None:
    """The environment train.py runs its steps in (it restarts itself with glibc's malloc asking for huge pages and
    XLA's scratch kept between steps, where that changes something: train.py's `restart_environment`), for the
    worker processes that stand in for its steps; None where train.py keeps its caller's."""
    return _train_py().restart_environment()


def train_py_huge_pages_environment() -> dict[str, str] | None:
    """This process's environment with train.py's malloc tunable alone (its `malloc_huge_pages_environment`); None
    where train.py would not set it."""
    return _train_py().malloc_huge_pages_environment()


def requested_models(parser: argparse.ArgumentParser, value: str | None, default) -> list[str]:
    """--models' comma-separated names (`default` where it is not given), each a registered model; otherwise one
    line from `parser` naming the unknown ones and the choices."""
    from jaxnets.models import list_models

    models = value.split(",") if value else list(default)
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_models())}")
    return models


def tiny_enas_child() -> dict:
    """The ENAS child's overrides in --tiny runs: 3 layers of 8 filters on a fixed random arc, not the released
    24 x 96 child (a minute to compile)."""
    from jaxnets.models.enas import random_arc

    return {"num_layers": 3, "num_filters": 8, "arc": " ".join(map(str, random_arc(0, 3, 4)))}


def model_ab_arguments(doc: str, default_models: tuple[str, ...], result_name: str) -> argparse.Namespace:
    """The command line the model A/B scripts share (`--models`, `--rounds`, `--json`, `--tiny`), parsed: `models`
    as a list (default `default_models`; --tiny: the ENAS child) and `rounds` resolved (default 5; --tiny: 1)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--models", default=None, help=f"default {','.join(default_models)} (--tiny: enas_macro)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --tiny 1)")
    parser.add_argument("--json", default=None, help=f"default benchmarks/results/{result_name}.json")
    parser.add_argument("--tiny", action="store_true", help="every code path on tiny shapes (about a minute)")
    args = parser.parse_args()
    args.models = args.models.split(",") if args.models else ["enas_macro"] if args.tiny else list(default_models)
    args.rounds = args.rounds or (1 if args.tiny else 5)
    return args
