"""The built-in tasks, registered with the engine on import: `classification` and the ENAS `search`.

A task of your own registers the same way (`jaxnets.train.register_task`), from any module."""

from jaxnets.tasks import classification, enas_search  # noqa: F401  (registration side effect)
