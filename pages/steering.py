"""Cylindrical steering: the axis and normal plane of a concept's difference vectors, and steering along them."""

import streamlit as st

import ui
from charts import steering as charts
from diagnostics import steering, steering_data
from models import OrthoscopeError
from ui import cache, inputs, model_picker, report_basket

ui.sidebar()
st.title("Cylindrical steering")
st.caption(
    "The Cylindrical Representation Hypothesis (Gao, Zhang, Liu et al., ICML 2026, arXiv:2605.01844): the "
    "difference vectors d = h(prompt + response with the concept) - h(prompt + response without it) of a concept "
    "share a central axis, which drives the concept, while their parts in the surrounding normal plane decide how "
    "easily steering works. Pick a concept and a block; see the cylinder, how adding s x mean|d| along a triple's "
    "own direction (p = 0) or only along the axis (p = 1) raises the concept's next-token probability on held-out "
    "prompts, what it costs on neutral text, and which sectors of the normal plane steer best."
)
D = steering.DEFAULTS
BUILTIN, UPLOAD = "Built-in concept", "Upload triples"


def _request(params: dict, triples: list[dict] | None) -> None:
    # Runs in the click's callback, before the script: the click survives the sidebar's reruns.
    st.session_state["steer_request"] = params
    st.session_state["steer_request_triples"] = triples


handle = model_picker.current_model()
if handle is None:
    st.stop()
if handle.kind != "causal-lm":
    kind = "a text encoder" if handle.kind == "encoder" else f"a {handle.kind} model"
    st.error(
        f"{handle.name} is {kind}, not a causal language model. Cylindrical steering reads the hidden states of a "
        "model that writes text and scores its next-token probabilities, so it needs a causal language model: pick "
        "one in the sidebar, e.g. Source 'Built-in' → 'SmolLM2-135M-Instruct' (builtin:smollm2), or a local or "
        "uploaded causal LM."
    )
    st.button("Use SmolLM2-135M-Instruct", key="steer_use_smollm2", icon=":material/swap_horiz:",
              on_click=st.session_state.update, args=({"model_source": "Built-in", "builtin_key": "smollm2"},))
    st.stop()

try:
    with st.spinner(f"Building {handle.name} as a torch module (the first time takes a while: SmolLM2 about 30 s) ..."):
        n_layers = len(steering.decoder_blocks(steering.check_causal_lm(handle)))
except OrthoscopeError as exc:
    st.error(str(exc))
    st.stop()

if st.session_state.get("steer_model") != handle.fingerprint:
    st.session_state.update({"steer_model": handle.fingerprint, "steer_layer": steering.default_layer(n_layers)})
    for key in ("steer_request", "steer_request_triples"):
        st.session_state.pop(key, None)
elif not 0 <= st.session_state.get("steer_layer", 0) < n_layers:
    st.session_state["steer_layer"] = steering.default_layer(n_layers)

source = st.radio("Concept source", (BUILTIN, UPLOAD), horizontal=True, key="steer_source")
triples, digest = None, None
concepts = steering_data.concepts()
try:
    if source == BUILTIN:
        cols = st.columns([1, 3])
        names = steering_data.concept_names()
        concept = cols[0].selectbox("Concept", names, index=names.index(D["concept"]) if D["concept"] in names else 0,
                                    key="steer_concept")
        info = concepts[concept]
        cols[1].caption(f"{info['description']}  \nTokens scored: "
                        + ", ".join(f"`{t!r}`" for t in info["tokens"]) + f" · triples: `data/steering/{info['file']}`")
        tokens = None
    else:
        upload = st.file_uploader(
            "Triples: CSV or JSONL with the fields prompt, positive (response with the concept), negative (without)",
            type=["csv", "jsonl", "json"], key="steer_upload",
            help=f"at least {steering_data.MIN_TRIPLES} triples, at most {steering_data.MAX_UPLOAD_BYTES // 2**20} MB",
        )
        cols = st.columns([1, 2])
        concept = cols[0].text_input("Concept name", key="steer_concept_name", placeholder="e.g. dogs").strip()
        tokens_text = cols[1].text_input(
            "Concept tokens (comma-separated)", key="steer_tokens", placeholder=" dog, dogs",
            help="words whose next-token probability measures the concept; a leading space belongs to the token "
                 "(' dog' is the word after a space, 'dog' the start of a text)",
        )
        if upload is None:
            st.info("Upload a triple file (prompt, positive, negative), name the concept and give its tokens.")
            st.stop()
        triples = steering_data.parse_triples(upload.getvalue(), upload.name)
        digest = steering_data.digest(triples)
        concept = concept or upload.name.rsplit(".", 1)[0]
        tokens = steering_data.split_tokens(tokens_text)
        if not tokens:
            raise OrthoscopeError(f"give the tokens that signal the concept {concept!r}, comma-separated (e.g. ' dog, dogs').")
        st.caption(f"{len(triples)} triples from {upload.name} (sha256 {digest}).")

    cols = st.columns([1, 1, 1])
    layer = int(cols[0].number_input(f"Block (0 to {n_layers - 1})", min_value=0, max_value=n_layers - 1, step=1,
                                     key="steer_layer", help="the decoder block whose output is read and steered"))
    position = cols[1].selectbox("Token position", steering.POSITIONS, index=steering.POSITIONS.index(D["position"]),
                                 key="steer_position", help="read each response at its last token or as the mean over its tokens")
    template = cols[2].selectbox("Prompt template", steering.TEMPLATES, index=steering.TEMPLATES.index(D["template"]),
                                 key="steer_template", help="chat: the tokenizer's chat template; plain: prompt + newline")

    with st.expander("Sectors, steering grid, scoring and generation"):
        o = st.columns(4)
        sectors = int(o[0].number_input("Sectors K", 2, 36, D["sectors"], key="steer_sectors"))
        strengths_text = o[1].text_input("Strengths s (x mean |d|)", ", ".join(f"{s:g}" for s in D["strengths"]),
                                         key="steer_strengths")
        penalties_text = o[2].text_input("Penalties p (0 to 1)", ", ".join(f"{p:g}" for p in D["penalties"]),
                                         key="steer_penalties")
        threshold = float(o[3].number_input("Threshold (nats of concept gain)", min_value=0.001,
                                            value=float(D["threshold"]), format="%.3g", key="steer_threshold"))
        o = st.columns(4)
        heldout = float(o[0].number_input("Held-out fraction", min_value=0.05, max_value=0.9,
                                          value=float(D["heldout_fraction"]), step=0.05, key="steer_heldout"))
        seed = int(o[1].number_input("Seed (split)", min_value=0, value=D["seed"], step=1, key="steer_seed"))
        grid_samples = int(o[2].number_input("Grid samples", 1, 64, D["grid_samples"], key="steer_grid_samples",
                                             help="triples spread around the normal plane, scored on the whole (s, p) grid"))
        heldout_prompts = int(o[3].number_input("Held-out prompts", 1, 64, D["heldout_prompts"], key="steer_heldout_prompts"))
        o = st.columns(4)
        neutral = int(o[0].number_input("Neutral sentences", 1, 64, D["neutral_sentences"], key="steer_neutral"))
        gen_strength = float(o[1].number_input("Generation strength s", min_value=0.0, value=float(D["gen_strength"]),
                                               key="steer_gen_strength"))
        gen_penalty = float(o[2].number_input("Generation penalty p", min_value=0.0, max_value=1.0,
                                              value=float(D["gen_penalty"]), step=0.1, key="steer_gen_penalty"))
        gen_tokens = int(o[3].number_input("Generated tokens", 0, steering.MAX_GEN_TOKENS, D["gen_tokens"],
                                           key="steer_gen_tokens"))
        o = st.columns(4)
        gen_prompts = int(o[0].number_input("Generation prompts", 0, 16, D["gen_prompts"], key="steer_gen_prompts"))
        sweep = o[1].checkbox("Layer sweep", value=D["sweep"], key="steer_sweep",
                              help="axis norm, mean cos(theta) and normal spread at every block (no extra forward passes)")

    params = steering.check_params({
        "concept": concept, "tokens": tokens, "layer": layer, "position": position, "template": template,
        "sectors": sectors, "strengths": inputs.numbers(strengths_text, "strengths", "1, 2, 4"),
        "penalties": inputs.numbers(penalties_text, "penalties", "0, 0.5, 1"), "threshold": threshold, "heldout_fraction": heldout,
        "seed": seed, "grid_samples": grid_samples, "heldout_prompts": heldout_prompts, "neutral_sentences": neutral,
        "gen_strength": gen_strength, "gen_penalty": gen_penalty, "gen_tokens": gen_tokens, "gen_prompts": gen_prompts,
        "sweep": sweep,
    }, n_layers)
    params["triples_sha256"] = digest  # None for a built-in set; run() ignores the key
except OrthoscopeError as exc:
    st.error(str(exc))
    st.stop()

st.button("Compute", type="primary", key="steer_compute", icon=":material/play_arrow:",
          on_click=_request, args=(params, triples))
request = inputs.last_request(
    "steer_request", params, "Press Compute to read the activations, fit the cylinder and score the steering grid.",
    "The settings above have changed: press Compute to update the results below.")

request_triples = st.session_state.get("steer_request_triples")
bar = st.progress(0.0, text="Computing ...")
try:
    result = cache.cached(
        cache.result_key("steering", handle.fingerprint, request),
        lambda: steering.run(handle, {k: v for k, v in request.items() if k != "triples_sha256"}, request_triples,
                             progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m),
                             activation_cache=cache.cached),
    )
except OrthoscopeError as exc:
    bar.empty()
    st.error(str(exc))
    st.stop()
bar.empty()

head = charts.summary(result)
base = result.baselines
m = st.columns(4)
m[0].metric("Block", str(result.layer), help=f"of {result.n_layers} decoder blocks, numbered 0 to {result.n_layers - 1}")
m[1].metric("Axis norm |a|", f"{result.axis_norm:.4g}", help="|mean d| over the fit triples, in hidden-state units")
m[2].metric("Mean |d|", f"{result.mean_norm:.4g}", help="the unit of the strength s")
m[3].metric("Mean cos(theta), fit / held-out", f"{head['mean_cos_fit']:.3f} / {head['mean_cos_heldout']:.3f}",
            help="alignment of the difference vectors with the axis (fitted on the fit triples only)")
m = st.columns(4)
m[0].metric("Normal plane explained", f"{head['plane_explained']:.1%}",
            help="share of the normal components' variance in the 2-D plane drawn below")
m[1].metric("Held-out accuracy, probe / axis",
            f"{base['probe_heldout_accuracy']:.0%} / {base['axis_heldout_accuracy']:.0%}",
            help="logistic probe on the activations; the axis thresholded halfway between the classes")
m[2].metric("Time", f"{head['total_s']:.1f} s",
            help="activations were cached from an earlier run" if result.work.get("activations_cached") else None)
m[3].metric("Forward passes / s", f"{head['passes_per_s']:.1f}", help=f"{head['passes']} forward passes")
st.caption(
    f"{result.model_name} · concept '{result.concept['name']}' ({result.params['source']}, {result.n_fit} fit + "
    f"{result.n_heldout} held-out triples) · {result.params['position']} token · {result.params['template']} prompts · "
    f"{head['reached']} of {head['n_fit']} fit triples reach {result.params['threshold']:g} nats of concept gain"
)
for note in result.notes:
    st.info(note)

figs = charts.figures(result)
st.plotly_chart(figs[0], key="steer_hist_chart")
left, right = st.columns(2)
left.plotly_chart(figs[1], key="steer_plane_chart")
right.plotly_chart(figs[2], key="steer_sectors_chart")
left, right = st.columns(2)
left.plotly_chart(figs[3], key="steer_gain_chart")
right.plotly_chart(figs[4], key="steer_corruption_chart")
left, right = st.columns(2)
left.plotly_chart(figs[5], key="steer_baselines_chart")
if len(figs) > 6:
    right.plotly_chart(figs[6], key="steer_sweep_chart")

st.subheader("Greedy generations")
if result.generations:
    g = result.generation_settings
    st.caption(f"Steered: v(s = {g['s']:g}, p = {g['p']:g}) of fit triple {g['sample']} (|v| = {g['vector_norm']:.4g}), "
               f"the most steerable one (or the one with the largest gain at the top strength when none reaches the "
               f"threshold), added at block {result.layer} from the last prompt token on; {g['tokens']} new tokens, "
               "held-out prompts.")
    st.dataframe(result.tables()["generations"], hide_index=True, key="steer_generations")
else:
    st.info("No generations: set generated tokens and generation prompts above 0.")

st.subheader("Triples")
st.dataframe(result.to_frame(), hide_index=True, key="steer_samples", column_config={
    c: st.column_config.NumberColumn(format="%.4g")
    for c in ("cos_theta", "norm", "x", "y", "phi_deg", "min_strength", "steerability", "gain_at_max")
})
report_basket.add_button(result, key="steer_add")
