"""`python -m jaxnets.report WORKDIR`: a run's pictures as PNGs in its workdir.

    curves.png            loss, accuracy and learning rate from metrics.jsonl
    confusion_matrix.png  the newest checkpoint on the test split (a classification run)
    predictions.png       test images (spectrograms, for sound) with predicted and true classes, mistakes first
    architecture.png      the ENAS macro network: of an `enas_macro` run, or the arc a finished search found

Options: --split (default: the run's eval split), --limit N (examples scored; default all); a search scores
no split (its shared network has no single architecture to score).
"""

from __future__ import annotations

import argparse
import inspect
import sys

from etils import epath

from jaxnets import plots
from jaxnets.checkpoints import load_checkpoint, read_meta, resolve_step_dir
from jaxnets.errors import UserError
from jaxnets.prediction import predict
from jaxnets.tasks.enas_search import FINAL_ARC_FILE, load_final_model


def write_report(workdir, *, split: str | None = None, limit: int | None = None) -> list[epath.Path]:
    """Writes the PNGs that apply to the run in `workdir`; returns their paths."""
    workdir = epath.Path(workdir)
    meta = read_meta(resolve_step_dir(workdir))
    figures = {"curves.png": plots.training_curves(workdir, title=f"training curves of {workdir.name}")}
    model, variables, config = load_checkpoint(workdir)
    if not _is_search_space(model):
        figures.update(_classification_figures(model, variables, config, split, limit, tuple(meta["class_names"])))
    if config.model == "enas_macro":
        figures["architecture.png"] = plots.enas_architecture(model, image_shape=meta["image_shape"])
    elif (workdir / FINAL_ARC_FILE).exists():
        found, image_shape = load_final_model(workdir)
        figures["architecture.png"] = plots.enas_architecture(found, image_shape=image_shape,
                                                              title="the arc the search found")
    written = []
    for name, figure in figures.items():
        with (workdir / name).open("wb") as f:  # (epath: a gs:// workdir too)
            figure.savefig(f, format="png", dpi=110)
        written.append(workdir / name)
    return written


def _is_search_space(model) -> bool:
    """A search space takes the architecture as an input of each call (`arc`): it has no single network to score."""
    return "arc" in inspect.signature(model.__call__).parameters


def _classification_figures(model, variables, config, split, limit, class_names) -> dict:
    predictions = predict(model, variables, config, split=split, limit=limit)
    return {
        "confusion_matrix.png": plots.confusion_matrix(predictions.labels, predictions.predicted, class_names,
                                                       title=split or config.eval_split or "eval split"),
        "predictions.png": (plots.spectrogram_grid if predictions.kind == "spectrogram" else plots.prediction_grid)(
            predictions.images, predictions.labels, predictions.predicted, class_names, mistakes_first=True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxnets.report", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the --workdir of a jaxnets run")
    parser.add_argument("--split", default=None, help="the split to score (default: the run's eval split)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many examples")
    args = parser.parse_args(argv)
    try:
        for path in write_report(args.workdir, split=args.split, limit=args.limit):
            print(f"wrote {path}")
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
