"""The ENAS controller and what trains it (REINFORCE) or stands in for it (uniform arcs). The search task that
uses them is `jaxnets.tasks.enas_search`."""

from jaxnets.nas.controller import MacroController

__all__ = ["MacroController"]
