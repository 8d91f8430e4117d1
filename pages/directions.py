"""Latent directions: SeFa and Householder factorisations of a weight matrix, readout and traversal."""

import pandas as pd
import streamlit as st

import ui
from charts import directions as charts
from charts.common import block_order
from diagnostics import directions, tasks
from models import OrthoscopeError
from ui import background, cache, guard, inputs, model_picker, report_basket
from ui.tables import show_table

ui.sidebar()
st.title("Latent directions")
st.caption(
    "SeFa (Shen & Zhou, CVPR 2021) takes the top eigenvectors of A^T A as the input directions that "
    "move a projection's output most: the paper's closed form, shown first. The genforce code normalises "
    "A's rows first; that variant is shown beside it. The Householder Projector (Song et al., ICCV 2023) "
    "replaces A by an orthogonal low-rank matrix with equal singular values, built from Householder "
    "reflections. Pick a weight matrix, see how far it is from such a projector, what its directions read "
    "out as, and what adding alpha times a direction at the layer's input does to the model."
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
            "Read out the genforce variant", value=defaults["normalize"], key="directions_normalize",
            help="read out and traverse the eigenvectors of diag(1/||a_r||) A (every output unit scaled to unit "
                 "length, as the genforce code does) instead of A^T A's (the paper's closed form). Both variants "
                 "are computed and tabled either way.",
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
        guard.error(exc)
        st.stop()
    # The request is set in the click's callback: callbacks run before the script, so the click
    # survives a rerun that ui.sidebar() may start, which a button's return value would not.
    st.button("Compute", type="primary", key="directions_compute", icon=":material/play_arrow:",
              on_click=st.session_state.__setitem__, args=("directions_request", params))
    st.session_state.setdefault("directions_request", params)
    request = st.session_state["directions_request"]
    if request != params:
        st.info("The settings above have changed: press Compute to update the results below.")

    with guard.drawing("the latent directions"):
        result = background.result(cache.result_key("directions", handle.fingerprint, request),
                                   tasks.Task("directions", request, model_picker.current_ref()),
                                   f"latent directions of {guard.literal(request['matrices'][0])} in {guard.literal(handle.name)}", slot="directions")

        m = st.columns(4)
        m[0].metric("Shape (out x in)", f"{result.shape[0]} x {result.shape[1]}")
        m[1].metric("Rank", result.rank)
        m[2].metric("Effective rank", f"{result.effective_rank:.1f}")
        m[3].metric("Stable rank", f"{result.stable_rank:.1f}")
        st.caption(
            "Matrices: " + ", ".join(f"{guard.literal(x['name'])} ({guard.literal(x['kind'])})" for x in result.matrices)
            + f" · computed in {result.timings['total_s']:.1f} s"
        )

        st.subheader("SeFa: the closed form (A^T A) and the genforce variant")
        deg = result.degeneracy
        worst = min(row["cos_rownorm_raw"] for row in result.directions)
        h = st.columns(3)
        overlap = ("Subspace overlap, rownorm vs raw", f"{result.subspace_overlap:.4f}",
                   f"||N_rownorm^T V_k||_F^2 / k over the top {result.k} directions: 1 when both span the same subspace")
        per_direction = ("Smallest per-direction |cos|, rownorm vs raw", f"{worst:.4f}",
                         "min over i of |cos| between direction i of the two variants")
        first, second = (overlap, per_direction) if deg["headline"] == "subspace_overlap" else (per_direction, overlap)
        h[0].metric(first[0], first[1], help=first[2])
        h[1].metric(second[0], second[1], help=second[2])
        h[2].metric("Eigengap threshold sqrt(2/n)", f"{deg['threshold']:.3g}",
                    help=f"n = {deg['samples']} rows of A; relative eigengaps at or below it count as degenerate")
        if deg["near_degenerate"]:
            st.warning(directions.headline(result) + ". Per-direction matches compare arbitrary bases of a cluster of "
                       "equal eigenvalues, so read the subspace overlap.")
        else:
            st.caption(directions.headline(result) + ".")
        left, right = st.columns(2)
        guard.chart(left, charts.spectrum(result), key="directions_spectrum")
        guard.chart(right, charts.eigengaps(result), key="directions_eigengaps")
        pair = {"subspace": charts.subspace, "pairs": charts.rownorm_vs_raw}
        order = ("subspace", "pairs") if deg["headline"] == "subspace_overlap" else ("pairs", "subspace")
        for column, name in zip(st.columns(2), order):
            guard.chart(column, pair[name](result), key=f"directions_{name}")
        with st.expander("How this is computed"):
            st.markdown(
                "- **raw** (the paper's closed form): the directions are the top eigenvectors of A^T A, which are the "
                "right singular vectors of A; the eigenvalues are the squared singular values (`eig_AtA_raw = sv_raw^2`).\n"
                "- **rownorm** (the genforce code): every row of A (one output unit's weights; the code's columns, as it "
                "stores the weight transposed) is scaled to unit length, R = diag(1/||a_r||) A, and the directions are "
                "the top eigenvectors of R^T R. Its eigenvalues are on another scale; `explained_*` divides each "
                "variant by its own trace.\n"
                "- **Eigengap**: `(l_i - l_(i+1)) / l_i`, counting the eigenvalue after the last as 0. Reading the n rows of A as "
                "n samples, an eigenvalue's sampling error is about l_i sqrt(2/n) (North, Bell, Cahalan & Moeng 1982), "
                "and neighbours whose gap is within it mix. A direction is *resolved* when both of its gaps exceed "
                "sqrt(2/n).\n"
                "- **Headline**: when every top-k direction of both variants is resolved, directions are compared one "
                "by one (|cos| of direction i in each). Otherwise the headline is the **subspace overlap**: the "
                "cosines of the principal angles between the two top-k subspaces and their mean square, which does "
                "not depend on how a cluster of equal eigenvalues happens to be split into vectors. It needs the gap "
                "after direction k resolved; if it is not, the nearest k that has one is named.\n"
                f"- Readout, traversal, orthogonality and cross-talk below use the **{result.chosen}** directions "
                "(the option *Read out the genforce variant* switches them)."
            )

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
        guard.chart(left, charts.projector_error(result), key="directions_projector")
        guard.chart(right, charts.fit_progress(result), key="directions_fit")

        st.subheader(f"Orthogonality and cross-talk ({guard.literal(result.chosen)} directions)")
        left, right = st.columns(2)
        guard.chart(left, charts.orthogonality(result), key="directions_orthogonality")
        guard.chart(right, charts.crosstalk(result), key="directions_crosstalk")

        st.subheader(f"Directions and readout ({guard.literal(result.chosen)} directions read out)")
        frame = result.to_frame()
        if result.readout["available"]:
            st.caption(f"{guard.literal(result.readout['method'])} of the {guard.literal(result.chosen)} directions: "
                           f"{guard.literal(result.readout['vector'])}.")
            hide = ["top_sentences"] if result.kind == "causal-lm" else ["top_tokens", "bottom_tokens"]
            show_table(frame.drop(columns=hide), "directions", "directions", key="directions_table")
        else:
            st.info(f"No readout: {guard.literal(result.readout['reason'])}")
            show_table(frame.drop(columns=["top_tokens", "bottom_tokens", "top_sentences"]), "directions", "directions",
                       key="directions_table")

        st.subheader("Traversal")
        walk = result.traversal
        if walk["available"] and walk.get("rows"):
            st.caption(f"{walk['site'][0].upper()}{walk['site'][1:]} alpha = 1 is {walk['scale']:.4g}, the mean norm of "
                       "what flows there on the prompts.")
            guard.chart(st, charts.traversal(result), key="directions_traversal")
            shown = st.selectbox("Samples for direction", sorted({r["direction"] for r in walk["rows"]}),
                                 key="directions_sample_direction")
            show_table(pd.DataFrame([r for r in walk["rows"] if r["direction"] == shown]), "directions",
                       "directions_traversal", key="directions_samples")
        elif walk["available"]:
            st.info("No direction chosen to traverse.")
        else:
            st.info(f"No traversal: {guard.literal(walk['reason'])}")

        report_basket.add_button(result, key="directions_add")
