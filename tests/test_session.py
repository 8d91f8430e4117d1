"""What navigation and a reload keep (ui/session.py): the model, page options, the basket, the URL."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from diagnostics import optimizer_traces
from ui import session

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 180
OPT = "pages/optimizer_traces.py"  # draws its options without computing anything
VIEWER = "pages/report_viewer.py"


def started(page: str = VIEWER, **query) -> AppTest:
    """A fresh session opened on ``page`` with ``query`` in the URL (the viewer is cheap: no model is
    loaded until a page asks for one)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page)
    return at.run()


def test_the_chosen_model_and_a_page_option_survive_navigation():
    at = started()
    assert at.session_state["picked_model"][0] == "builtin:minilm"
    at.sidebar.selectbox(key="builtin_key").set_value("smollm2").run()
    at.switch_page(OPT).run()
    at.number_input(key="opt_seeds").set_value(3).run()
    for page in (VIEWER, OPT):
        at.switch_page(page).run()
        assert not at.exception
        assert at.session_state["picked_model"][0] == "builtin:smollm2"
        assert at.sidebar.selectbox(key="builtin_key").value == "smollm2"
    assert at.number_input(key="opt_seeds").value == 3


def test_the_url_names_the_model_and_a_link_opens_it():
    at = started(model="builtin:smollm2")
    assert at.session_state["picked_model"][0] == "builtin:smollm2"
    assert at.query_params["model"] == "builtin:smollm2"
    at.sidebar.selectbox(key="builtin_key").set_value("minilm").run()
    assert at.query_params["model"] == "builtin:minilm"
    token = at.query_params["session"]
    assert len(token) == 16 and token.isalnum()


def test_the_basket_survives_a_reload_under_the_session_token():
    first = started()
    token = first.query_params["session"]
    first.session_state["report_results"].extend(["first item", "second item"])  # any objects: the store keeps them
    reloaded = started(session=token)
    assert reloaded.session_state["report_results"] == ["first item", "second item"]
    assert reloaded.query_params["session"] == token
    stranger = started(session="0123456789abcdef")
    assert stranger.session_state["report_results"] == []
    forged = started(session="../../etc")
    assert forged.query_params["session"] != "../../etc"


def test_an_upload_is_linked_by_its_content_hash_and_a_link_reopens_it():
    import torch
    from safetensors.torch import save

    from ui import uploads

    data = save({"layers.0.weight": torch.ones(16, 16)})
    path = uploads.save_files([("tiny.safetensors", data)], keep_folders=False) / "tiny.safetensors"
    link = "upload:" + path.relative_to(uploads.current_root()).as_posix()
    at = started(model=link)
    assert at.session_state["picked_model"][0] == str(path)
    assert at.sidebar.radio(key="model_source").value == "Upload"
    assert at.query_params["model"] == link
    for forged in ("upload:../../etc/passwd", "upload:/etc/passwd", "upload:" + "a" * 5000, "upload:missing/x.pt"):
        at = started(model=forged)
        assert not at.exception
        assert at.session_state["picked_model"][0] == "builtin:minilm", forged


# --- A page's settings in the URL ------------------------------------------------------------------

SPECTRA = "pages/spectra.py"  # computes MiniLM's spectra (a few seconds; cached after the first run)
SPECTRA_DEFAULTS = {"spectra_randomize": False, "spectra_min_evals": 8, "spectra_fix_fingers": "off",
                    "spectra_seed": 0, "spectra_n_boot": 200, "spectra_small_n_rule": "min-d"}


def page_params(at: AppTest) -> dict:
    return {k: v for k, v in at.query_params.items() if k.startswith(session.PAGE_PREFIXES)}


def spectra_options(at: AppTest) -> dict:
    return {key: at.session_state[key] for key in SPECTRA_DEFAULTS}


def opened_by_link(page: str, **query) -> tuple[AppTest, list[str]]:
    """A fresh session on a link, and its toasts; the second run is the one a browser gets from the
    timer fragment (ui/session.py) once the page has drawn its widgets."""
    at = started(page, **query)
    assert not at.exception
    toasts = [t.value for t in at.toast]
    at.run()
    return at, toasts + [t.value for t in at.toast]


def test_a_ticked_option_goes_into_the_url_and_follows_its_page():
    at = started(SPECTRA)
    assert not at.exception and page_params(at) == {}
    at.checkbox(key="spectra_randomize").check()
    at.number_input(key="spectra_min_evals").set_value(12)
    at.run()
    assert not at.exception
    assert page_params(at) == {"spectra_randomize": "true", "spectra_min_evals": "12"}
    at.switch_page(VIEWER).run()
    assert page_params(at) == {}  # another page: its settings leave the URL
    assert at.query_params["model"] == "builtin:minilm" and "session" in at.query_params
    at.switch_page(SPECTRA).run()
    assert page_params(at) == {"spectra_randomize": "true", "spectra_min_evals": "12"}


def test_a_setting_back_at_its_default_leaves_the_url():
    at = started(OPT)
    seeds = at.number_input(key="opt_seeds")
    default = seeds.value
    seeds.set_value(default + 1).run()
    decay = at.selectbox(key="opt_decay")
    decay.set_value(decay.options[-1]).run()
    assert page_params(at) == {"opt_seeds": str(default + 1), "opt_decay": decay.options[-1]}
    at.number_input(key="opt_seeds").set_value(default).run()
    assert page_params(at) == {"opt_decay": decay.options[-1]}


def test_a_link_opens_the_page_with_its_settings():
    at, toasts = opened_by_link(SPECTRA, spectra_randomize="true", spectra_min_evals="12")
    assert not at.exception and not at.error and not toasts
    assert at.checkbox(key="spectra_randomize").value is True
    assert at.number_input(key="spectra_min_evals").value == 12
    assert spectra_options(at) == {**SPECTRA_DEFAULTS, "spectra_randomize": True, "spectra_min_evals": 12}
    assert page_params(at) == {"spectra_randomize": "true", "spectra_min_evals": "12"}
    assert "_url_pending" not in at.session_state


def test_a_link_does_not_override_a_choice_made_in_the_session():
    at = started(OPT, opt_seeds="5", opt_decay="cosine")
    at.number_input(key="opt_seeds").set_value(4).run()  # the user moves it before the link is applied
    assert at.number_input(key="opt_seeds").value == 4
    assert at.selectbox(key="opt_decay").value == "cosine"
    at.run()
    assert at.number_input(key="opt_seeds").value == 4
    assert page_params(at)["opt_seeds"] == "4"


HOSTILE = {
    "not a number": {"spectra_min_evals": "x"},
    "below the minimum": {"spectra_min_evals": "-5"},
    "not an integer": {"spectra_min_evals": "12.5"},
    "overflow": {"spectra_seed": "1e400"},
    "not a number at all": {"spectra_n_boot": "nan"},
    "not an option": {"spectra_fix_fingers": "evil"},
    "not a bool": {"spectra_randomize": "yes"},
    "100 KB": {"spectra_small_n_rule": "j" * 100_000},
    "another page's key": {"overview_only_skipped": "true"},
    "unknown keys": {"spectra_nonexistent": "1", "spectra_": "1", "SPECTRA_RANDOMIZE": "true"},
}


@pytest.mark.parametrize("query", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_link_leaves_the_page_working_at_its_defaults(query):
    at, toasts = opened_by_link(SPECTRA, **query)
    assert not at.exception
    assert not at.error
    assert spectra_options(at) == SPECTRA_DEFAULTS
    assert at.checkbox(key="spectra_randomize").value is False
    assert at.number_input(key="spectra_min_evals").value == 8
    params = page_params(at)
    for key in query:
        if key.startswith(session.PAGE_PREFIXES) and key != "spectra_nonexistent":
            assert key not in params  # taken out of the URL (an unknown key waits a while for its widget)
    invalid = [k for k in query if k in SPECTRA_DEFAULTS]
    if invalid:
        assert any(all(k in t for k in invalid) for t in toasts), toasts  # named as ignored


def test_a_link_cannot_set_state_that_is_not_a_widget_nor_press_a_button():
    at, toasts = opened_by_link(OPT, opt_request="evil", opt_run="true", opt_seeds="3", opt_steps="-5")
    assert not at.exception and not at.error
    assert "opt_request" not in at.session_state  # set by the Run button's callback only
    assert at.button(key="opt_run").value is False
    assert at.number_input(key="opt_seeds").value == 3  # the valid parameter of a partly hostile link applies
    assert at.number_input(key="opt_steps").value == optimizer_traces.DEFAULTS["steps"]
    assert any("opt_run" in t and "opt_steps" in t for t in toasts), toasts
    assert page_params(at) == {"opt_seeds": "3", "opt_request": "evil"}  # opt_request waits for a widget


def test_a_link_sets_a_widget_that_appears_with_another_setting():
    # The learning-rate inputs are drawn for the chosen optimizers only: one more run finds SGD's.
    at, toasts = opened_by_link(OPT, opt_optimizers=["AdamW", "SGD-Nesterov"], opt_lr_sgd="0.0123", opt_scopes="")
    at.run()
    assert not at.exception and not toasts
    assert at.multiselect(key="opt_optimizers").value == ["adamw", "sgd"]
    assert at.multiselect(key="opt_scopes").value == []
    assert at.number_input(key="opt_lr_sgd").value == 0.0123
    assert "_url_pending" not in at.session_state
