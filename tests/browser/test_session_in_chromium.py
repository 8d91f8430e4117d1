"""In chromium: the chosen model follows the user across pages and reloads, and so do the report basket and
a page's settings (in the URL)."""

import re

from playwright.sync_api import Page, expect

SMOL = "SmolLM2-135M-Instruct"
SKIPPED = "Show only skipped tensors"  # Model overview's toggle, key overview_only_skipped


def _pick_builtin(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebar").get_by_label("Built-in model").click()
    page.get_by_role("option", name=title).click()


def _picked(page: Page) -> str:
    box = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Built-in model")
    return box.input_value() if box.evaluate("e => e.tagName") == "INPUT" else box.inner_text()


def _nav(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()


def test_the_model_picked_on_the_overview_is_the_model_of_every_page(page: Page, app_url):
    page.goto(app_url)
    expect(page.get_by_text("Parameters per block").first).to_be_visible(timeout=180_000)
    _pick_builtin(page, SMOL)
    main = page.get_by_test_id("stMain")
    expect(main.get_by_text(f"Loaded {SMOL}")).to_be_visible(timeout=240_000)
    assert re.search(r"model=builtin(%3A|:)smollm2", page.url), page.url
    # Layer spectra and Latent directions start computing at once: their progress names the model.
    computing = re.compile(rf"^Computing .* {SMOL}")
    for title, marker in (("Layer spectra", computing), ("Latent directions", computing),
                          ("Optimizer traces", "Press Run to train"), ("Cylindrical steering", "Press Compute"),
                          ("Model overview", "Parameters per block")):
        _nav(page, title)
        expect(main.get_by_text(marker).first).to_be_visible(timeout=240_000)
        if marker is computing:  # seen computing on SmolLM2: cancelled, to keep the cores for the pages after
            main.get_by_role("button", name=re.compile("Cancel")).click()
            expect(main.get_by_role("button", name=re.compile("Run again"))).to_be_visible(timeout=60_000)
        assert SMOL in _picked(page)
        # A page that loads the model says which: never the default MiniLM behind the user's back.
        assert main.get_by_text("Loaded all-MiniLM-L6-v2").count() == 0
    expect(main.get_by_text(f"Loaded {SMOL}")).to_be_visible(timeout=120_000)
    assert page.get_by_test_id("stException").count() == 0


def test_a_reload_keeps_the_model_both_report_items_and_a_page_setting(page: Page, app_url):
    page.goto(app_url)
    main = page.get_by_test_id("stMain")
    expect(main.get_by_text("Parameters per block").first).to_be_visible(timeout=180_000)
    page.get_by_role("button", name=re.compile("Add to report")).click()
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Model overview: all-MiniLM-L6-v2")).to_be_visible(timeout=60_000)
    _pick_builtin(page, SMOL)
    expect(main.get_by_text(f"Loaded {SMOL}")).to_be_visible(timeout=240_000)
    expect(main.get_by_text("Parameters per block").first).to_be_visible(timeout=120_000)
    page.get_by_role("button", name=re.compile("Add to report")).click()
    expect(sidebar.get_by_text(f"Model overview: {SMOL}")).to_be_visible(timeout=60_000)
    assert "session=" in page.url
    skipped = main.get_by_label(SKIPPED)
    expect(skipped).not_to_be_checked()
    main.get_by_text(SKIPPED).click()  # a page setting, mirrored into the URL
    expect(skipped).to_be_checked()
    expect(page).to_have_url(re.compile(r"overview_only_skipped=true"), timeout=30_000)

    page.reload()
    expect(main.get_by_text(f"Loaded {SMOL}")).to_be_visible(timeout=240_000)
    # The link's setting is checked against the toggle once the page has drawn it, then applied.
    expect(main.get_by_label(SKIPPED)).to_be_checked(timeout=60_000)
    assert re.search(r"overview_only_skipped=true", page.url), page.url
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Model overview: all-MiniLM-L6-v2")).to_be_visible(timeout=60_000)
    expect(sidebar.get_by_text(f"Model overview: {SMOL}")).to_be_visible()
    items = [t.strip() for t in sidebar.get_by_role("listitem").all_inner_texts()]
    basket = [t for t in items if t.startswith("Model overview")]
    assert len(basket) == 2 and basket[0] == "Model overview: all-MiniLM-L6-v2"
    assert basket[1].startswith(f"Model overview: {SMOL}")
    assert page.get_by_test_id("stException").count() == 0
