"""Hostile names in a real browser: report.html and the dashboard's "Open a report" page, built from results
whose tensor, model, label and run names carry a link, a script, an image with an onerror handler, a span and
a markdown image, draw no link, run no script, fetch nothing, and show the names as text."""

from __future__ import annotations

import dataclasses
import json
import re

import plotly.graph_objects as go
import pytest
from playwright.sync_api import Page, expect

import reports
from tests import result_fixtures as results
from tests.test_markup import hostile

# Beyond tests.test_markup.HOSTILE (which every name carries): an image that would be fetched if drawn,
# a javascript: link, and a markdown link.
MODEL_EXTRA = ('<img src="https://evil.example/i.png" onerror="alert(2)">'
               '<a href="javascript:alert(3)">j</a>[l](https://evil.example/l)')
EVIL = "evil.example"

# Every <a> of the page, HTML or SVG (plotly draws its links as SVG <a xlink:href>), with its target.
LINKS_JS = """() => [...document.querySelectorAll('a')].map(a =>
    (a.getAttribute('href') || '') + ' ' + (a.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || ''))"""
IMAGES_JS = "() => [...document.querySelectorAll('img, image')].map(i => i.getAttribute('src') || i.getAttribute('href') || '')"
# Show every trace's first hover label, so hover text is drawn too, not only ticks, legends and titles.
HOVER_JS = """() => { let n = 0;
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    (gd.data || []).forEach((t, i) => { try { Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: 0}]); n++; } catch (e) {} });
  }
  return n; }"""


def _hostile_results() -> list:
    out = []
    for build in (results.overview, results.spectra, results.alignment, results.steering, results.optimizer_traces):
        r = hostile(build())
        out.append(dataclasses.replace(r, model_name=r.model_name + MODEL_EXTRA))
    return out


@pytest.fixture(scope="module")
def hostile_results() -> list:
    return _hostile_results()


class Watch:
    """Dialogs (alert/confirm/prompt) and requests to the attacker's host, from a page's start."""

    def __init__(self, page: Page):
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r.url) if EVIL in r.url else None)
        # Nothing may leave the machine: a request to the attacker's host is recorded, then refused.
        page.route(re.compile(re.escape(EVIL)), lambda route: route.abort())

    def assert_clean(self, page: Page) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.requests == [], self.requests
        assert page.locator(f"a[href*='{EVIL}']").count() == 0
        assert page.locator("a[href*='evil']").count() == 0
        assert [h for h in page.evaluate(LINKS_JS) if "evil" in h or "javascript:" in h] == []
        assert [s for s in page.evaluate(IMAGES_JS) if EVIL in s] == []


def _open_file(page: Page, path) -> None:
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    # Every figure drawn: plotly marks a div it has drawn with js-plotly-plot.
    expect(page.locator(".plotly-graph-div:not(.js-plotly-plot)")).to_have_count(0, timeout=60_000)


def test_the_detector_sees_a_link_that_plotly_draws_from_unstripped_markup(page: Page, tmp_path):
    """The checks below are not vacuous: a figure not stripped does draw a live link in chromium."""
    fig = go.Figure(go.Bar(x=['<a href="https://evil.example/x">tensor</a>'], y=[1]))
    fig.update_layout(title='<a href="https://evil.example/t">title</a>')
    path = tmp_path / "unstripped.html"
    path.write_text(fig.to_html(full_html=True, include_plotlyjs=True), encoding="utf-8")
    Watch(page)
    _open_file(page, path)
    assert [h for h in page.evaluate(LINKS_JS) if EVIL in h]


def test_report_html_from_hostile_names_draws_no_link_and_runs_no_script(page: Page, tmp_path, hostile_results):
    path = tmp_path / "report.html"
    path.write_text(reports.to_html(hostile_results), encoding="utf-8")
    watch = Watch(page)
    _open_file(page, path)
    hovered = page.evaluate(HOVER_JS)
    assert hovered > 10
    page.wait_for_timeout(500)
    watch.assert_clean(page)
    # The names are there as text: headings and table cells show them literally (HTML-escaped) ...
    headings = page.locator("h2").all_inner_texts()
    assert len(headings) == len(hostile_results)
    assert all('<a href="https://evil.example/model">x</a>' in h and "<script>alert(1)</script>" in h
               and "![m](https://evil.example/m.png)" in h for h in headings), headings
    cells = page.locator("td").all_inner_texts()
    assert any(c.startswith('layers.0.mlp.up_proj.weight<a href="https://evil.example/') for c in cells)
    # ... and the charts show what is left of them once the markup is gone.
    svg_text = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot svg text')]"
                             ".map(t => t.textContent).join(' ')")
    assert "alert(1)" in svg_text and "layers.0.mlp.up_proj.weight" in svg_text


def test_the_report_viewer_shows_a_hostile_report_as_text(page: Page, app_url, tmp_path, hostile_results):
    path = tmp_path / "report.json"
    path.write_text(reports.to_json(hostile_results[:2]), encoding="utf-8")  # overview and spectra
    watch = Watch(page)
    page.goto(f"{app_url}/report_viewer")
    main = page.get_by_test_id("stMain")
    uploader = main.get_by_test_id("stFileUploader").filter(has_text="report.json")
    expect(uploader).to_be_visible(timeout=180_000)
    uploader.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    expect(main.get_by_text("2 result(s) loaded.")).to_be_visible(timeout=120_000)
    expect(main.locator(".js-plotly-plot").first).to_be_visible(timeout=120_000)
    expect(main.locator(".js-plotly-plot")).to_have_count(
        sum(len(reports.registry.figures_for(r)) for r in hostile_results[:2]), timeout=120_000)
    page.evaluate(HOVER_JS)
    page.wait_for_timeout(1_000)
    watch.assert_clean(page)
    assert page.get_by_test_id("stException").count() == 0
    assert main.get_by_test_id("stAlertContentError").count() == 0
    # The subheaders show each model name as the characters it is made of.
    headings = [h.replace("\u2060", "") for h in main.locator("h3").all_inner_texts()]
    name = json.loads(path.read_text())["results"][0]["model_name"]
    shown = re.sub("[\x00-\x1f]", "", name)  # control characters are dropped
    assert any(shown in h for h in headings), (shown, headings)
