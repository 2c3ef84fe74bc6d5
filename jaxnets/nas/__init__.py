"""ENAS search: the controller, REINFORCE and the search task of the training loop (`config.task = "search"`)."""

from jaxnets.nas.controller import MacroController
from jaxnets.nas.final import load_final_model
from jaxnets.nas.search import SearchState, SearchTask

__all__ = ["MacroController", "SearchState", "SearchTask", "load_final_model"]
