"""Pure functions from a diagnostic's result to Plotly figures, shared by pages and reports."""
