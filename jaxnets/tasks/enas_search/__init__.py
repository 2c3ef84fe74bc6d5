"""The ENAS macro search as a task (`config.task = "search"`, its fields in `config.search`): the shared network
trained on arcs the controller samples, the controller trained between epochs on held-out rewards, and at the
end the found arc and a recipe that trains it (`final.py`)."""

from jaxnets.tasks.enas_search.config import (
    SEARCH_TRAIN_PERCENT,
    check_search_config,
    prepare_search,
    search_config,
)
from jaxnets.tasks.enas_search.final import FINAL_ARC_FILE, FINAL_CONFIG_FILE, load_final_model
from jaxnets.tasks.enas_search.task import SearchState, SearchTask, build
from jaxnets.train import register_task

register_task("search", build, config_section=search_config, prepare=prepare_search, check=check_search_config)

__all__ = ["FINAL_ARC_FILE", "FINAL_CONFIG_FILE", "SEARCH_TRAIN_PERCENT", "SearchState", "SearchTask",
           "load_final_model", "search_config"]
