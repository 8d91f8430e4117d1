"""In chromium: a long diagnostic goes on while the user is on another page, and Cancel stops it;
an uploaded checkpoint stays the model of every page."""

import re

import torch
from playwright.sync_api import Page, expect
from safetensors.torch import save_file

SMOL = "SmolLM2-135M-Instruct"


def _nav(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()


def _percent(page: Page) -> int:
    text = page.get_by_test_id("stMain").get_by_text(re.compile(r"^Computing layer spectra")).first.inner_text()
    return int(re.search(r"· (\d+)% ·", text).group(1))


def _set_seed(page: Page, value: str) -> None:
    main = page.get_by_test_id("stMain")
    seed = main.get_by_label("seed", exact=True)
    if not seed.is_visible():
        main.get_by_text("Options", exact=True).click()
    seed.fill(value)
    seed.press("Enter")


def test_spectra_go_on_while_another_page_is_shown_and_cancel_stops_them(page: Page, app_url):
    page.goto(f"{app_url}/spectra?model=builtin:smollm2")
    main = page.get_by_test_id("stMain")
    expect(main.get_by_text(f"Loaded {SMOL}")).to_be_visible(timeout=240_000)
    # A seed of its own, so that no other test's result for the default settings is reused.
    _set_seed(page, "7")
    running = main.get_by_text(re.compile(rf"^Computing layer spectra of {SMOL}.*: .* (\d+)% ·"))
    expect(running).to_be_visible(timeout=120_000)
    # No chart of an earlier run stays on screen while this one computes.
    assert page.locator(".js-plotly-plot").count() == 0
    expect(main.get_by_text(re.compile(r"· [1-9]\d*% ·"))).to_be_visible(timeout=120_000)
    before = _percent(page)

    _nav(page, "Model overview")
    expect(main.get_by_text("Parameters per block").first).to_be_visible(timeout=120_000)
    # The sidebar says the job goes on; the run with the default seed, started when the page
    # opened, was replaced by the one the user asked for, not left to compete with it.
    jobs = page.get_by_test_id("stSidebar").get_by_text(re.compile(rf"layer spectra of {SMOL}.*: \d+%"))
    expect(jobs).to_have_count(1)
    page.wait_for_timeout(5_000)

    _nav(page, "Layer spectra")
    chart = page.get_by_text("Power-law alpha per layer").first
    expect(running.or_(chart)).to_be_visible(timeout=60_000)
    if running.is_visible():
        assert _percent(page) > before, "the job did not progress while another page was shown"
        expect(chart).to_be_visible(timeout=300_000)  # and the page shows its result by itself

    _set_seed(page, "8")
    expect(running).to_be_visible(timeout=60_000)
    main.get_by_role("button", name=re.compile("Cancel")).click()
    expect(main.get_by_text(re.compile(rf"layer spectra of {SMOL}.*: Cancelled\."))).to_be_visible(timeout=30_000)
    expect(main.get_by_role("button", name=re.compile("Run again"))).to_be_visible()
    assert page.locator(".js-plotly-plot").count() == 0
    assert page.get_by_test_id("stException").count() == 0


def test_an_uploaded_checkpoint_is_the_model_of_every_page(page: Page, app_url, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny-mlp.safetensors"
    save_file({f"layers.{i}.weight": torch.randn(48, 48) for i in range(3)}, str(path))
    page.goto(app_url)
    main, sidebar = page.get_by_test_id("stMain"), page.get_by_test_id("stSidebar")
    expect(main.get_by_text("Parameters per block").first).to_be_visible(timeout=180_000)
    sidebar.get_by_text("Upload", exact=True).click()
    sidebar.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(path))
    expect(main.get_by_text("Loaded tiny-mlp.safetensors")).to_be_visible(timeout=60_000)
    for title, marker in (("Layer spectra", "Power-law alpha per layer"), ("Latent directions", "Loaded"),
                          ("Model overview", "Parameters per block")):
        _nav(page, title)
        expect(main.get_by_text(marker).first).to_be_visible(timeout=120_000)
        expect(main.get_by_text("Loaded tiny-mlp.safetensors")).to_be_visible(timeout=60_000)
        assert main.get_by_text("Loaded all-MiniLM-L6-v2").count() == 0
    assert page.get_by_test_id("stException").count() == 0
