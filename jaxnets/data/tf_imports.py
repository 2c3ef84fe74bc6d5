"""TensorFlow and TFDS as the input pipeline imports them: without Keras.

    from jaxnets.data.tf_imports import tf, tfds

TensorFlow's own import loads Keras' optimizers eagerly (`keras.src.optimizers`, inside a `try` that ignores an
ImportError, for what registers itself at load time, such as optimizers for SavedModels), and with them all of
Keras 3: 1.4-3.0 s of the 6.3-6.7 s that train.py's imports took on a 2-core Xeon (benchmarks/README.md), for a
library the input pipeline never calls. While TensorFlow imports, that one module is marked as not importable
(`sys.modules[name] = None`, Python's way to stop an import), and the mark is removed right after: `tf.keras` and
`import keras` work as ever afterwards, loading Keras when first used. TensorFlow's environment and module paths are
its usual ones. Where TensorFlow or that module is already imported (another import of TensorFlow came first, such
as etils' for gs:// paths), this is TensorFlow's usual import.
"""

import sys

_KERAS_OPTIMIZERS = "keras.src.optimizers"
_SKIP_KERAS = "tensorflow" not in sys.modules and _KERAS_OPTIMIZERS not in sys.modules
if _SKIP_KERAS:
    sys.modules[_KERAS_OPTIMIZERS] = None
try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
finally:
    if _SKIP_KERAS and sys.modules.get(_KERAS_OPTIMIZERS) is None:  # (our mark, unless something imported it since)
        sys.modules.pop(_KERAS_OPTIMIZERS, None)

__all__ = ["tf", "tfds"]
