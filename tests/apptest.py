"""Opening one dashboard page in Streamlit's AppTest, with session state set before the first run."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_page(page: str, *, timeout: float = 120, run: bool = True, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page)
    return at.run() if run else at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]
