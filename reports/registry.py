"""Which result class and which figures belong to each diagnostic name."""

from __future__ import annotations

from typing import Callable

import plotly.graph_objects as go

from charts import overview as overview_charts
from diagnostics.overview import OverviewResult
from diagnostics.result import Result

# diagnostic name -> (result class, figure builder)
DIAGNOSTICS: dict[str, tuple[type[Result], Callable[[Result], list[go.Figure]]]] = {
    OverviewResult.diagnostic: (OverviewResult, overview_charts.figures),
}


def figures_for(result: Result) -> list[go.Figure]:
    return DIAGNOSTICS[result.diagnostic][1](result)
