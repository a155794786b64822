"""The monitor's widgets: they render snapshots and never touch the database."""

from dhgq.tui.widgets.detail import DetailView
from dhgq.tui.widgets.header import StatusHeader
from dhgq.tui.widgets.sources import SourceFilter, SourcesTable
from dhgq.tui.widgets.stages import StagePanel

__all__ = ["DetailView", "SourceFilter", "SourcesTable", "StagePanel", "StatusHeader"]
