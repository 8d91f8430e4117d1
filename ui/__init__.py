"""Streamlit helpers shared by app.py and the pages: model picker, caches, report basket."""


def sidebar() -> None:
    """The sidebar every page shows: model picker, then the report basket.

    Each page calls this first rather than app.py drawing it once: the page script is what
    Streamlit (and AppTest) reruns on every interaction.
    """
    import streamlit as st
    from streamlit.runtime.pages_manager import PagesManager

    from ui import background, model_picker, report_basket, session

    if PagesManager.uses_pages_directory:
        # A deep link reached a fresh server before app.py ever ran, so Streamlit ran this page
        # through its legacy pages/-folder navigation. Rerun through app.py's st.navigation.
        PagesManager.uses_pages_directory = False
        st.rerun()
    session.restore()
    session.mirror_token()
    session.keep_picker()
    session.keep_options()
    model_picker.draw_picker()
    picked = st.session_state.get("picked_model")
    session.mirror_model(picked[0] if isinstance(picked, tuple) else None,
                         from_upload=st.session_state.get("model_source") == "Upload")
    report_basket.sidebar()
    background.sidebar()
