"""Raw event logs in: strict readers and dataset recipes producing :class:`EventLog`."""

from lifelong.data.readers import BadRowsSkippedWarning, read_events
from lifelong.data.recipes import RECIPES, load_recipe
from lifelong.data.schema import BadRowError, EventLog

__all__ = ["RECIPES", "BadRowError", "BadRowsSkippedWarning", "EventLog", "load_recipe", "read_events"]
