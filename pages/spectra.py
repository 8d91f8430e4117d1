"""Layer spectra: ESD and power-law alpha per weight matrix, with every HTSR / SETOL metric."""

import streamlit as st

import ui
from charts import spectra as charts
from charts.common import block_order
from diagnostics import spectra, tasks
from models import OrthoscopeError
from ui import background, cache, guard, model_picker, report_basket
from ui.tables import show_table

ui.sidebar()
st.title("Layer spectra")
st.caption(
    "Eigenvalues of W^T W for every weight matrix (WeightWatcher's convention), the heavy-tailed "
    "power-law exponent alpha fitted by Clauset's method, and the other HTSR / SETOL metrics. "
    "Every layer gets a phase (Martin & Mahoney 2021): random-like (an MP bulk), bulk+spikes (an MP "
    "bulk plus a few outliers), heavy-tailed or very-heavy-tailed. Only a heavy-tailed phase's "
    "power law is trusted; headline numbers use trusted fits only, and untrusted points are drawn hollow."
)

with st.expander("Options", expanded=False):
    c = st.columns(4)
    randomize = c[0].checkbox("Randomised baseline", key="spectra_randomize",
                              help="ESD of each matrix with its elements shuffled: rand_distance, ww_softrank")
    mp_fit = c[1].checkbox("Marchenko-Pastur fit", key="spectra_mp_fit", help="sigma_mp, bulk edges, num_spikes, mp_softrank")
    detx = c[2].checkbox("SETOL detX / ERG", key="spectra_detx", help="detX_num, detX_val, ERG_gap")
    normalize = c[3].checkbox("Divide eigenvalues by N", key="spectra_normalize")
    c = st.columns(4)
    # "off", not None: a None option is not kept across reruns (the box shows "Choose an option").
    fix_fingers = c[0].selectbox("fix_fingers", ["off", "clip_xmax"], key="spectra_fix_fingers")
    conv2d_fft = c[1].checkbox("Exact conv operator spectrum (FFT)", key="spectra_conv2d_fft")
    min_evals = c[2].number_input("min_evals", min_value=2, value=8, step=1, key="spectra_min_evals")
    seed = c[3].number_input("seed", min_value=0, value=0, step=1, key="spectra_seed")
    c = st.columns(4)
    gof = c[0].checkbox("Goodness of fit", key="spectra_gof",
                        help="Clauset's bootstrap p-value (pl_pvalue) and a bootstrap interval on alpha, xmin re-chosen "
                             "in every resample; the trust rule then also needs p >= 0.1. Off: the interval is the "
                             "asymptotic one with xmin fixed.")
    n_boot = c[1].number_input("Bootstrap resamples", min_value=10, value=200, step=50, key="spectra_n_boot")
    small_n_rule = c[2].selectbox(
        "xmin rule below 20 points", list(spectra.SMALL_N_RULES), key="spectra_small_n_rule",
        format_func=lambda v: {"min-d": "smallest D (WeightWatcher 0.7.7)", "j": "J criterion"}[v],
    )

try:
    params = spectra.SpectraParams(
        normalize=normalize, randomize=randomize, mp_fit=mp_fit, detx=detx, fix_fingers=None if fix_fingers == "off" else fix_fingers,
        conv2d_fft=conv2d_fft, min_evals=int(min_evals), seed=int(seed), gof=gof, n_boot=int(n_boot),
        small_n_rule=small_n_rule,
    )
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()

with st.expander("How the phase and trust are decided"):
    rows = "\n".join(f"| {phase} | {paper} | {rule} |" for phase, paper, rule in spectra.PHASE_RULES)
    st.markdown(
        "| phase | Martin & Mahoney (JMLR 2021) | rule (first match wins) |\n|---|---|---|\n" + rows
        + f"\n\nTrust rule with the options above: {spectra.trust_rule(params)}. The MP law here is fitted to the "
        "bulk alone (robust to spikes); WeightWatcher's own MP fit is the *Marchenko-Pastur fit* option."
    )

handle = model_picker.current_model()
if handle is not None:
    with guard.drawing("the layer spectra"):
        result = background.result(cache.result_key("spectra", handle.fingerprint, params.to_dict()),
                                   tasks.Task("spectra", params, model_picker.current_ref()),
                                   f"layer spectra of {guard.literal(handle.name)}", slot="spectra")

        frame = result.to_frame()
        if frame.empty:
            st.warning("No weight matrix of this model could be analysed; see the skipped list below.")
        else:
            s = result.summary
            trusted = f"{s['num_pl_trusted']} of {s['num_layers']}"
            mean_alpha = s["mean"].get("alpha")
            m = st.columns(4)
            m[0].metric("Trusted power laws", trusted)
            ci = s.get("alpha_mean_ci")
            m[1].metric("Mean alpha (trusted)", "none trusted" if mean_alpha is None else f"{mean_alpha:.3f}",
                        help=None if ci is None else f"95% t-interval of the mean over the trusted layers: "
                                                     f"[{ci[0]:.3f}, {ci[1]:.3f}]")
            m[2].metric("Over-trained (alpha < 2, trusted)", s["num_over_trained"])
            m[3].metric("Under-trained (alpha > 6, trusted)", s["num_under_trained"])
            all_alpha = s["mean_all"].get("alpha")
            st.caption(
                "Phases: " + ", ".join(f"{n} {p}" for p, n in s["phases"].items())
                + ("" if ci is None else f". Mean alpha of trusted fits {mean_alpha:.3f}, 95% interval over layers "
                   f"[{ci[0]:.3f}, {ci[1]:.3f}]")
                + f". Trust rule: {s['trust_rule']}. Mean alpha over every row, trusted or not: "
                + ("none" if all_alpha is None else f"{all_alpha:.3f}") + "."
            )

            f = st.columns(2)
            blocks = f[0].multiselect("Blocks", block_order(frame["block"].unique()), key="spectra_blocks")
            kinds = f[1].multiselect("Kinds", sorted(frame["kind"].unique()), key="spectra_kinds")
            mask = frame["block"].isin(blocks or frame["block"]) & frame["kind"].isin(kinds or frame["kind"])
            shown = frame[mask]
            names = list(shown["name"])

            guard.chart(st, charts.alpha_per_layer(result, names), key="spectra_alpha")
            left, right = st.columns(2)
            guard.chart(left, charts.alpha_vs_spectral_norm(result, names), key="spectra_alpha_norm")
            guard.chart(right, charts.mean_alpha_per_block(result), key="spectra_blocks_chart")

            chosen = st.selectbox("Layer", names, key="spectra_layer") if names else None
            if chosen:
                row = shown.set_index("name").loc[chosen]
                if not row["pl_trust"]:
                    st.warning(f"{guard.literal(chosen)}: {guard.literal(row['pl_verdict'])}. Do not read its alpha as a "
                               "training signal.")
                guard.chart(st, charts.layer_esd(result, chosen), key="spectra_esd")

            show_table(shown, "spectra", "layers", key="spectra_table")
        if result.skipped:
            with st.expander(f"{len(result.skipped)} tensors not analysed, with the reason"):
                show_table(result.tables()["skipped"], "spectra", "skipped")
        report_basket.add_button(result, key="spectra_add")
