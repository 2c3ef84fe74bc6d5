"""Input pipelines (TFDS + tf.data) and the bundled offline digits dataset.

    info = dataset_info(config)
    batches = train_iterator(config, local_batch_size, start_step=step, process_index=i, process_count=n)
    heldout = heldout_iterator(config, local_batch_size, start_step=k, ...)  # the eval split, endless, unaugmented
    for batch in eval_iterator(config, local_batch_size, process_index=i, process_count=n): ...
    evals = eval_batches(config, local_batch_size, ...)  # the same, iterable once per evaluation

The dataset table, DatasetInfo, check_data_config and available_data import without TensorFlow; the pipeline
functions import it on first use, so the rest of jaxnets (and a GPU box without TF) never needs it, and a dataset
that is not there is refused before it is imported (dataset_info checks available_data first).
"""

from importlib import resources
from typing import Any

from jaxnets.data.availability import available_data
from jaxnets.data.datasets import (
    DATA_STREAM_VERSION,
    DATASETS,
    DataConfig,
    DatasetInfo,
    DatasetSpec,
    check_data_config,
    dataset_spec,
)
from jaxnets.errors import DatasetNotPreparedError

_PIPELINE = ("train_iterator", "heldout_iterator", "eval_iterator", "eval_batches", "EvalBatches")

__all__ = [
    "DATA_STREAM_VERSION", "DATASETS", "DataConfig", "DatasetInfo", "DatasetNotPreparedError", "DatasetSpec",
    "available_data",
    "check_data_config", "dataset_info", "dataset_spec", "imagenet_class_names", *_PIPELINE
]


def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in torchvision's and TFDS's label order ("tench", "goldfish", ...)."""
    lines = resources.files("jaxnets.data.imagenet").joinpath("classes.tsv").read_text().splitlines()
    return tuple(line.split("\t")[1].split(",")[0] for line in lines)


def dataset_info(config: Any) -> DatasetInfo:
    """Classes, batch image shape and split sizes; reads metadata only (prepares the bundled digits). A dataset
    that is certainly not there is refused before TensorFlow is imported (available_data)."""
    available_data(config)
    from jaxnets.data import pipeline  # imports TensorFlow: only where the input pipeline is used

    return pipeline.dataset_info(config)


def __getattr__(name: str):
    if name in _PIPELINE:
        from jaxnets.data import pipeline  # imports TensorFlow: only where the input pipeline is used

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
