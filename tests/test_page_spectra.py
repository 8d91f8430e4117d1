"""AppTest for the Layer spectra page."""

from pathlib import Path

import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 300


def spectra_page(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.switch_page("pages/spectra.py")


def test_spectra_page_on_the_default_builtin():
    at = spectra_page().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    table = at.dataframe[0].value
    assert len(table) == 39
    for column in ("alpha", "xmin", "D", "sigma", "num_pl_spikes", "alpha_weighted", "stable_rank", "entropy",
                   "phase", "pl_trust", "alpha_ci_low", "alpha_ci_high", "mp_edge", "lr_lognormal_R"):
        assert column in table.columns
    trusted = table[table["pl_trust"]]
    assert 0 < len(trusted) < 39  # MiniLM has random-like and bulk+spikes layers too (the pooler, ...)
    assert metrics["Trusted power laws"] == f"{len(trusted)} of 39"
    # The headline mean is over trusted fits only, and says so; the mean over every row is beside it.
    assert float(metrics["Mean alpha (trusted)"]) == round(trusted["alpha"].mean(), 3)
    caption = " ".join(c.value for c in at.caption)
    assert f"{table['alpha'].mean():.3f}" in caption and "Trust rule:" in caption
    from scipy import stats
    half = stats.t.ppf(0.975, len(trusted) - 1) * trusted["alpha"].std(ddof=1) / len(trusted) ** 0.5
    mean = trusted["alpha"].mean()
    assert f"95% interval over layers [{mean - half:.3f}, {mean + half:.3f}]" in caption
    assert len(at.get("plotly_chart")) == 4  # alpha per layer, alpha vs norm, per block, ESD
    rules = " ".join(m.value for m in at.markdown)
    for phase in ("random-like", "bulk+spikes", "heavy-tailed", "very-heavy-tailed", "too-small"):
        assert f"| {phase} |" in rules


def test_filters_and_layer_choice_drive_the_table_and_esd():
    at = spectra_page(spectra_kinds=["attention-q"]).run()
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"attention-q"} and len(table) == 6
    assert at.selectbox(key="spectra_layer").options == list(table["name"])


def test_options_add_their_columns():
    at = spectra_page(spectra_randomize=True, spectra_detx=True, spectra_mp_fit=True).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    for column in ("rand_distance", "ww_softrank", "detX_num", "ERG_gap", "sigma_mp", "mp_softrank"):
        assert column in table.columns


def test_random_layer_is_flagged_as_untrustworthy(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "random.safetensors"
    save_file({"layers.0.fc1.weight": torch.randn(400, 200)}, path)
    at = spectra_page(model_source="Upload").run()
    at.sidebar.file_uploader(key="upload_ckpt").set_value(("random.safetensors", path.read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert any("random-like" in w.value for w in at.warning), [w.value for w in at.warning]


def test_goodness_of_fit_option_adds_the_p_value():
    at = spectra_page(spectra_gof=True, spectra_n_boot=20, spectra_kinds=["attention-q"]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["pl_pvalue"].between(0, 1).all()
    assert set(table["alpha_ci_method"]) == {"bootstrap"}
    assert "p-value >= 0.1" in " ".join(c.value for c in at.caption)


def test_adding_spectra_to_the_report():
    at = spectra_page().run()
    at.button(key="spectra_add").click().run()
    (result,) = at.session_state["report_results"]
    assert result.diagnostic == "spectra" and len(result.layers) == 39
