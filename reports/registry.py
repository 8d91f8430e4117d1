"""Which result class, figures and title belong to each diagnostic name."""

from __future__ import annotations

from typing import Callable

import plotly.graph_objects as go

from charts import alignment as alignment_charts
from charts import compare as compare_charts
from charts import directions as directions_charts
from charts import optimizer_traces as optimizer_traces_charts
from charts import overview as overview_charts
from charts import spectra as spectra_charts
from charts import steering as steering_charts
from diagnostics.alignment import AlignmentResult
from diagnostics.compare import CompareResult
from diagnostics.directions import DirectionsResult
from diagnostics.optimizer_traces import OptimizerTracesResult
from diagnostics.overview import OverviewResult
from diagnostics.result import Result
from diagnostics.spectra import SpectraResult
from diagnostics.steering import SteeringResult

# diagnostic name -> (result class, figure builder)
DIAGNOSTICS: dict[str, tuple[type[Result], Callable[[Result], list[go.Figure]]]] = {
    OverviewResult.diagnostic: (OverviewResult, overview_charts.figures),
    SpectraResult.diagnostic: (SpectraResult, spectra_charts.figures),
    AlignmentResult.diagnostic: (AlignmentResult, alignment_charts.figures),
    DirectionsResult.diagnostic: (DirectionsResult, directions_charts.figures),
    SteeringResult.diagnostic: (SteeringResult, steering_charts.figures),
    OptimizerTracesResult.diagnostic: (OptimizerTracesResult, optimizer_traces_charts.figures),
    CompareResult.diagnostic: (CompareResult, compare_charts.figures),
}

# diagnostic name -> title. Reports and the basket name results as the pages in app.py do: the
# internal names (optimizer_traces) mean nothing to a reader.
TITLES: dict[str, str] = {
    OverviewResult.diagnostic: "Model overview",
    SpectraResult.diagnostic: "Layer spectra",
    AlignmentResult.diagnostic: "Embedding alignment",
    DirectionsResult.diagnostic: "Latent directions",
    SteeringResult.diagnostic: "Cylindrical steering",
    OptimizerTracesResult.diagnostic: "Optimizer traces",
    CompareResult.diagnostic: "Compare models",
}


def figures_for(result: Result) -> list[go.Figure]:
    return DIAGNOSTICS[result.diagnostic][1](result)
