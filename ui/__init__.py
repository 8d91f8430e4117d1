"""Streamlit helpers shared by app.py and the pages: model picker, caches, report basket."""


def sidebar() -> None:
    """The sidebar every page shows: model picker, then the report basket.

    Each page calls this first rather than app.py drawing it once: the page script is what
    Streamlit (and AppTest) reruns on every interaction.
    """
    from ui import model_picker, report_basket

    model_picker.draw_picker()
    report_basket.sidebar()
