"""What navigation and a reload keep (ui/session.py): the model, page options, the basket, the URL."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 180
OPT = "pages/optimizer_traces.py"  # draws its options without computing anything
VIEWER = "pages/report_viewer.py"


def started(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(VIEWER)  # cheap: no model is loaded until a page asks for one
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
