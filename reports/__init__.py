"""Report export (HTML, JSON, CSV) and re-import of report.json."""

from reports.report import TOOL_VERSION, csv_tables, csv_zip, from_json, to_html, to_json, write

__all__ = ["TOOL_VERSION", "csv_tables", "csv_zip", "from_json", "to_html", "to_json", "write"]
