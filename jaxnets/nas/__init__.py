"""ENAS search: the controller (more of the search, REINFORCE and the search task, is to come)."""

from jaxnets.nas.controller import MacroController

__all__ = ["MacroController"]
