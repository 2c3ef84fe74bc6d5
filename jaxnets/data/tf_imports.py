"""TensorFlow and TFDS as the input pipeline imports them: without Keras.

    from jaxnets.data.tf_imports import tf, tfds

TensorFlow's own import loads Keras' optimizers eagerly (`keras.src.optimizers`, to register them for SavedModels),
hence all of Keras 3: 1.4-3.0 s of the 3.7-6.7 s that train.py's imports took on a 2-core Xeon (benchmarks/README.md),
for a library the input pipeline never calls. With TF_USE_LEGACY_KERAS set, TensorFlow looks for tf_keras instead
and, where it is not installed, skips that import. The variable is set for these two imports only: `tf.keras` picks
its Keras on first use, from the environment as it is then, so code of one's own that uses it still gets Keras 3
(imported at that moment). Where the user set the variable, or tf_keras is installed (TensorFlow would load its
optimizers instead), or TensorFlow is already imported, the import is TensorFlow's usual one.
"""

import importlib.util
import os
import sys

_SKIP_KERAS = ("TF_USE_LEGACY_KERAS" not in os.environ and "tensorflow" not in sys.modules
               and importlib.util.find_spec("tf_keras") is None)
if _SKIP_KERAS:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
finally:
    if _SKIP_KERAS:
        del os.environ["TF_USE_LEGACY_KERAS"]

__all__ = ["tf", "tfds"]
