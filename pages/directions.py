"""Latent directions: SeFa and Householder factorisations of a weight matrix, readout and traversal."""

import streamlit as st

import ui
from charts import directions as charts
from charts.common import block_order
from diagnostics import directions
from models import OrthoscopeError
from ui import cache, inputs, model_picker, report_basket

ui.sidebar()
st.title("Latent directions")
st.caption(
    "SeFa (Shen & Zhou, CVPR 2021) takes the top eigenvectors of A^T A as the input directions that "
    "move a projection's output most; the Householder Projector (Song et al., ICCV 2023) replaces A by "
    "an orthogonal low-rank matrix with equal singular values, built from Householder reflections. "
    "Pick a weight matrix, see how far it is from such a projector, what its directions read out as, "
    "and what adding alpha times a direction at the layer's input does to the model."
)


def _keep(key: str, allowed: list) -> None:
    """Drop remembered widget values that the current options no longer offer."""
    if key in st.session_state:
        value = st.session_state[key]
        if isinstance(value, list) and any(v not in allowed for v in value):
            st.session_state[key] = [v for v in value if v in allowed]
        elif not isinstance(value, list) and value not in allowed:
            st.session_state[key] = allowed[0]


handle = model_picker.current_model()
if handle is not None:
    catalog = directions.matrix_catalog(handle)
    if not catalog:
        st.warning("This model has no analysable weight matrix (see the model overview for why).")
        st.stop()
    by_name = {c["name"]: c for c in catalog}
    if st.session_state.get("directions_model") != handle.fingerprint:
        default = by_name[directions.default_matrix(catalog)]
        st.session_state.update({
            "directions_model": handle.fingerprint, "directions_block": default["block"],
            "directions_kind": default["kind"], "directions_matrix": default["name"],
            "directions_traverse": list(directions.DEFAULTS["traverse"]),
            "directions_prompts": "\n".join(
                directions.LM_PROMPTS if handle.kind == "causal-lm" else directions.ENCODER_PROBES
            ),
        })
        for key in ("directions_stack", "directions_request"):
            st.session_state.pop(key, None)

    cols = st.columns([1, 1, 3, 1])
    block = cols[0].selectbox("Block", block_order(c["block"] for c in catalog), key="directions_block")
    kinds = sorted({c["kind"] for c in catalog if c["block"] == block})
    _keep("directions_kind", kinds)
    kind = cols[1].selectbox("Kind", kinds, key="directions_kind")
    names = [c["name"] for c in catalog if c["block"] == block and c["kind"] == kind]
    _keep("directions_matrix", names)
    matrix = cols[2].selectbox(
        "Matrix", names, key="directions_matrix",
        format_func=lambda n: f"{n}  ({by_name[n]['shape'][0]} x {by_name[n]['shape'][1]})",
    )
    k = int(cols[3].number_input("k", min_value=1, max_value=64, value=directions.DEFAULTS["k"], step=1,
                                 key="directions_k"))
    width = by_name[matrix]["shape"][1]
    partners = [c["name"] for c in catalog if c["shape"][1] == width and c["name"] != matrix]
    _keep("directions_stack", partners)
    stack = st.multiselect(
        f"Stack with (SeFa's concatenation; matrices with the same input width, {width})", partners,
        key="directions_stack",
    )

    with st.expander("SeFa, fit, readout and traversal options"):
        o = st.columns(4)
        defaults = directions.DEFAULTS
        normalize = o[0].checkbox(
            "SeFa normalisation", value=defaults["normalize"], key="directions_normalize",
            help="scale every output unit's weight vector to unit length first, as SeFa's code does",
        )
        seed = int(o[1].number_input("seed (projector fit)", min_value=0, value=defaults["seed"], step=1,
                                     key="directions_seed"))
        fit_iters = int(o[2].number_input("fit iterations (L-BFGS)", min_value=0, max_value=1000,
                                          value=defaults["fit_iters"], step=10, key="directions_fit_iters"))
        gen_tokens = int(o[3].number_input("generated tokens", min_value=0, max_value=directions.MAX_GEN_TOKENS,
                                           value=defaults["gen_tokens"], step=1, key="directions_gen_tokens",
                                           disabled=handle.kind != "causal-lm"))
        t = st.columns([2, 2, 3])
        alphas_text = t[0].text_input("alphas (x mean norm at the layer)", key="directions_alphas",
                                      value=", ".join(f"{a:g}" for a in defaults["alphas"]))
        _keep("directions_traverse", list(range(1, k + 1)))
        traverse = t[1].multiselect("directions to traverse", list(range(1, k + 1)), key="directions_traverse")
        prompts = t[2].text_area(
            "prompts (one per line)" if handle.kind == "causal-lm" else "probe sentences (one per line)",
            key="directions_prompts", height=100,
        )

    try:
        params = {
            "matrices": [matrix, *stack], "k": k, "normalize": normalize, "seed": seed, "fit_iters": fit_iters,
            "alphas": inputs.numbers(alphas_text, "alphas", "-0.5, 0, 0.5", allow_empty=True),
            "traverse": traverse, "gen_tokens": gen_tokens,
            "prompts": [line for line in prompts.splitlines() if line.strip()],
        }
    except OrthoscopeError as exc:
        st.error(str(exc))
        st.stop()
    # The request is set in the click's callback: callbacks run before the script, so the click
    # survives a rerun that ui.sidebar() may start, which a button's return value would not.
    st.button("Compute", type="primary", key="directions_compute", icon=":material/play_arrow:",
              on_click=st.session_state.__setitem__, args=("directions_request", params))
    st.session_state.setdefault("directions_request", params)
    request = st.session_state["directions_request"]
    if request != params:
        st.info("The settings above have changed: press Compute to update the results below.")

    bar = st.progress(0.0, text="Computing ...")
    try:
        result = cache.cached(
            cache.result_key("directions", handle.fingerprint, request),
            lambda: directions.run(handle, request, progress=lambda f, m: bar.progress(min(f, 1.0), text=m)),
        )
    except OrthoscopeError as exc:
        bar.empty()
        st.error(str(exc))
        st.stop()
    bar.empty()

    m = st.columns(5)
    m[0].metric("Shape (out x in)", f"{result.shape[0]} x {result.shape[1]}")
    m[1].metric("Rank", result.rank)
    m[2].metric("Effective rank", f"{result.effective_rank:.1f}")
    m[3].metric("Stable rank", f"{result.stable_rank:.1f}")
    m[4].metric("SeFa / SVD subspace overlap", f"{result.subspace_overlap:.4f}")
    other = "plain" if result.params["normalize"] else "normalized"
    st.caption(
        "Matrices: " + ", ".join(f"`{x['name']}` ({x['kind']})" for x in result.matrices)
        + f" · {other} SeFa's subspace overlap with the SVD: {result.variants[other]['subspace_overlap']:.4f}"
        + f" · computed in {result.timings['total_s']:.1f} s"
    )

    left, right = st.columns(2)
    left.plotly_chart(charts.spectrum(result), key="directions_spectrum")
    right.plotly_chart(charts.sefa_vs_svd(result), key="directions_sefa")

    st.subheader("Householder projector")
    h, f = result.householder, result.fit
    hm = st.columns(4)
    hm[0].metric(f"Rebuild error, rank {result.k}", f"{h['rebuild_error_k']:.1e}",
                 help="||U_k S_k V_k^T - H(U_k) S_k H(V_k)^T||_F / ||U_k S_k V_k^T||_F, reflections from torch.geqrf")
    hm[1].metric("Rebuild error, full rank", f"{h['rebuild_error_full']:.1e}",
                 help=f"A rebuilt from {h['reflectors_full']} Householder reflections, relative Frobenius error")
    hm[2].metric(f"Closed-form distance, k = {result.k}", f"{f['bound']:.4g}",
                 help="min over c and rank-k partial isometries P of ||A - c P||_F")
    hm[3].metric("Fitted projector", f"{f['error']:.4g}", delta=f"{f['relative_gap']:+.1e} relative to the bound", delta_color="off",
                 help=f"torch's orthogonal parametrisation (householder map), {f['evaluations']} L-BFGS evaluations, seed {f['seed']}")
    left, right = st.columns(2)
    left.plotly_chart(charts.projector_error(result), key="directions_projector")
    right.plotly_chart(charts.fit_progress(result), key="directions_fit")

    st.subheader("Orthogonality and cross-talk")
    left, right = st.columns(2)
    left.plotly_chart(charts.orthogonality(result), key="directions_orthogonality")
    right.plotly_chart(charts.crosstalk(result), key="directions_crosstalk")

    st.subheader("Readout")
    frame = result.to_frame()
    if result.readout["available"]:
        st.caption(f"{result.readout['method']}: {result.readout['vector']}.")
        hide = ["top_sentences"] if result.kind == "causal-lm" else ["top_tokens", "bottom_tokens"]
        st.dataframe(frame.drop(columns=hide), hide_index=True, key="directions_table", column_config={
            c: st.column_config.NumberColumn(format="%.4g")
            for c in ("eigenvalue", "explained", "singular_value", "cos_to_svd", "svd_match_cos")
        })
    else:
        st.info(f"No readout: {result.readout['reason']}")
        st.dataframe(frame.drop(columns=["top_tokens", "bottom_tokens", "top_sentences"]), hide_index=True,
                     key="directions_table")

    st.subheader("Traversal")
    walk = result.traversal
    if walk["available"] and walk.get("rows"):
        st.caption(f"{walk['site'][0].upper()}{walk['site'][1:]} alpha = 1 is {walk['scale']:.4g}, the mean norm of "
                   "what flows there on the prompts.")
        st.plotly_chart(charts.traversal(result), key="directions_traversal")
        shown = st.selectbox("Samples for direction", sorted({r["direction"] for r in walk["rows"]}),
                             key="directions_sample_direction")
        st.dataframe([r for r in walk["rows"] if r["direction"] == shown], hide_index=True, key="directions_samples")
    elif walk["available"]:
        st.info("No direction chosen to traverse.")
    else:
        st.info(f"No traversal: {walk['reason']}")

    report_basket.add_button(result, key="directions_add")
