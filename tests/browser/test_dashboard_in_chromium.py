"""Open the running dashboard in chromium, use the overview page, download report.html."""

import re

from playwright.sync_api import Page, expect


def test_deep_link_to_a_page_on_a_fresh_server_keeps_the_app_navigation(page: Page, app_url):
    # Runs first, while the server has served nothing yet: Streamlit would otherwise run the
    # page straight from the pages/ folder, without app.py's navigation and titles.
    page.goto(f"{app_url}/spectra")
    expect(page.get_by_text("Power-law alpha per layer").first).to_be_visible(timeout=240_000)
    nav = page.get_by_test_id("stSidebarNav")
    expect(nav.get_by_text("Model overview")).to_be_visible()
    expect(nav.get_by_text("Layer spectra")).to_be_visible()


def test_overview_chart_and_report_download(page: Page, app_url, tmp_path):
    page.goto(app_url)
    # The default built-in model is picked in the sidebar and the overview draws its charts.
    expect(page.get_by_text("all-MiniLM-L6-v2").first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Parameters per block")).to_be_visible(timeout=120_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("22,713,728", exact=True)).to_be_visible()

    page.get_by_role("button", name=re.compile("Add to report")).click()
    download_button = page.get_by_role("button", name="report.html")
    expect(download_button).to_be_visible(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        download_button.click()
    saved = tmp_path / "report.html"
    info.value.save_as(saved)
    html = saved.read_text(encoding="utf-8")
    assert "plotly-graph-div" in html
    assert "Parameters per block" in html and "Model overview: all-MiniLM-L6-v2" in html
    assert "encoder.layer.0.attention.self.query.weight" in html


def test_optimizer_traces_train_in_the_background_and_download_the_trace(page: Page, app_url, tmp_path):
    page.goto(f"{app_url}/optimizer_traces")
    expect(page.get_by_text("Press Run to train")).to_be_visible(timeout=120_000)
    for label, value in (("Seeds", "1"), ("Steps", "20")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Enter")
    # 6 optimizers x the default 4-rate sweep, each optimizer then shown at its best validation rate.
    expect(page.get_by_text("24 run(s) of 20 steps each.")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name=re.compile("^Run$|play_arrow")).first.click()
    # The page polls the background job by itself and shows the results when it ends.
    expect(page.get_by_text("Routing: which parameters each optimizer takes")).to_be_visible(timeout=180_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    assert page.get_by_test_id("stException").count() == 0
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="traces.jsonl").click()
    saved = tmp_path / "traces.jsonl"
    info.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert sum('"type":"header"' in line for line in lines) == 24
    assert sum('"type":"summary"' in line for line in lines) == 24
