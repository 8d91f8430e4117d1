"""Cylindrical steering: the axis and normal plane of a concept's difference vectors, and whether steering
along them puts the concept into what the model writes, beside random directions of the same norm."""

import pandas as pd
import streamlit as st

import ui
from charts import steering as charts
from diagnostics import steering, steering_data, tasks
from models import OrthoscopeError
from ui import background, cache, guard, inputs, model_picker, report_basket
from ui.tables import show_table

ui.sidebar()
st.title("Cylindrical steering")
st.caption(
    "The Cylindrical Representation Hypothesis (Gao, Zhang, Liu et al., ICML 2026, arXiv:2605.01844; reference code "
    "mbzuai-nlp/CRH): the difference vectors d = h(prompt + response with the concept) - h(prompt + response without "
    "it) of a concept share a central axis, which drives the concept, while their parts in the surrounding normal "
    "plane decide how easily a sample is steered. Pick a concept and a block; the cylinder is fitted on most triples, "
    "and on the held-out prompts each sample is steered with its own vector (the reference's penalty experiment), and "
    "the axis, first principal component, a probe and an unrelated concept's axis are steered beside random "
    "directions of the same norm. What counts is what the model then writes, and whether it stays coherent."
)
D = steering.DEFAULTS
REF = steering.REFERENCE
BUILTIN, UPLOAD = "Built-in concept", "Upload triples"
AUTO = "auto"
# The options where this run may follow the reference code or not: option -> (label, choices, widget key).
PROTOCOL = {
    "position": ("Token position", steering.POSITIONS, "steer_position"),
    "unit": ("Strength unit", steering.UNITS, "steer_unit"),
    "steer_tokens": ("Steered tokens", steering.STEER_TOKENS, "steer_steered_tokens"),
    "hook": ("Layer convention", steering.HOOKS, "steer_hook"),
}


def _request(params: dict, triples: list[dict] | None) -> None:
    # Runs in the click's callback, before the script: the click survives the sidebar's reruns.
    st.session_state["steer_request"] = params
    st.session_state["steer_request_triples"] = triples


def _use_reference() -> None:
    st.session_state.update({PROTOCOL[option][2]: value for option, value in REF.items()})


def _protocol_select(column, option: str) -> str:
    label, choices, key = PROTOCOL[option]
    return column.selectbox(f"{label} (reference: {REF[option]})", choices, key=key,
                            format_func=lambda v: f"{v} (reference)" if v == REF[option] else v,
                            help=steering.OPTION_HELP[option])


def _evidence(row: dict | None, setting: str, protocol: str, head: dict) -> None:
    """Four metrics for one steered setting: its gain beside the null, its rate beside null and unsteered, coherence."""
    limit = head["ppl_limit"]
    if row is None:
        st.markdown(f"**{setting}** ({protocol}): no strength keeps the neutral-text perplexity within {limit:g}x, so "
                    "there is no gain to report.")
        return
    st.markdown(f"**{setting}** ({protocol}, {row['n']} held-out prompts)")
    m = st.columns(4)
    off = dict(delta_color="off", delta_arrow="off")
    m[0].metric("Concept gain (nats)", f"{row['concept_gain']:+.3g}",
                delta=f"95% CI {row['concept_gain_lo']:+.3g} to {row['concept_gain_hi']:+.3g}", **off,
                help="change of the log expected number of concept words in the teacher-forced window, mean over "
                     "the held-out prompts, bootstrap interval")
    m[1].metric("Random, same norm (nats)", f"{row['null_gain']:+.3g}",
                delta=f"95th percentile {row['null_q95']:+.3g}", **off,
                help="the null: mean gain of random directions with exactly the steered vectors' norms; a setting "
                     f"reaches only when its mean gain is above the 95th percentile (here: {'yes' if row['reaching'] else 'no'})")
    m[2].metric("Rate: steered/random/unsteered",
                f"{row['concept_rate']:.0%} / {row['null_rate']:.0%} / {head['unsteered']['value']:.0%}",
                delta=f"steered 95% CI {row['concept_rate_lo']:.0%} to {row['concept_rate_hi']:.0%}", **off,
                help=f"share of continuations naming a concept word; one-sided Fisher p = {row['text_pvalue']:.3g} "
                     "against the random and unsteered continuations together")
    m[3].metric("Perplexity ratio (neutral text)", f"{row['ppl_ratio']:.3g}x",
                delta=f"random {row['null_ppl_ratio']:.3g}x · limit {limit:g}x", **off,
                help=f"steered over unsteered perplexity of neutral sentences; repetition of the continuations "
                     f"{row['repetition']:.0%} (random {row['null_repetition']:.0%})")


handle = model_picker.current_model()
if handle is None:
    st.stop()
if handle.kind != "causal-lm":
    kind = "a text encoder" if handle.kind == "encoder" else f"a {handle.kind} model"
    st.error(
        f"{guard.literal(handle.name)} is {kind}, not a causal language model. Cylindrical steering reads the hidden states of a "
        "model that writes text and scores what it writes, so it needs a causal language model: pick one in the "
        "sidebar, e.g. Source 'Built-in' → 'SmolLM2-135M-Instruct' (builtin:smollm2), or a local or uploaded causal LM."
    )
    st.button("Use SmolLM2-135M-Instruct", key="steer_use_smollm2", icon=":material/swap_horiz:",
              on_click=st.session_state.update, args=({"model_source": "Built-in", "builtin_key": "smollm2"},))
    st.stop()

try:
    with st.spinner(f"Building {guard.literal(handle.name)} as a torch module (the first time takes a while: SmolLM2 about 30 s) ..."):
        n_layers = len(steering.decoder_blocks(steering.check_causal_lm(handle)))
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()

if st.session_state.get("steer_model") != handle.fingerprint:
    st.session_state.update({"steer_model": handle.fingerprint, "steer_layer": steering.default_layer(n_layers)})
    for key in ("steer_request", "steer_request_triples"):
        st.session_state.pop(key, None)
elif not 0 <= st.session_state.get("steer_layer", 0) < n_layers:
    st.session_state["steer_layer"] = steering.default_layer(n_layers)
# Seeded here rather than through the widgets' defaults: 'Use the reference settings' writes these keys.
for option, (_, _, key) in PROTOCOL.items():
    st.session_state.setdefault(key, D[option])

source = st.radio("Concept source", (BUILTIN, UPLOAD), horizontal=True, key="steer_source")
triples, digest = None, None
concepts = steering_data.concepts()
names = steering_data.concept_names()
words_help = ("words whose appearance signals the concept; each is scored with and without a leading space, lower "
              "case and capitalised, and matched as a whole word in the generated text")
try:
    if source == BUILTIN:
        cols = st.columns([1, 2])
        concept = cols[0].selectbox("Concept", names, index=names.index(D["concept"]) if D["concept"] in names else 0,
                                    key="steer_concept")
        info = concepts[concept]
        words_text = cols[1].text_input("Concept words (comma-separated)", key="steer_words",
                                        placeholder=", ".join(info["tokens"]),
                                        help=words_help + "; empty: the built-in concept's words")
        st.caption(f"{info['description']}  \nWords scored: " + ", ".join(f"`{t}`" for t in info["tokens"])
                   + f" · triples: `data/steering/{info['file']}`")
        tokens = steering_data.split_tokens(words_text) or None
    else:
        upload = st.file_uploader(
            "Triples: CSV or JSONL with the fields prompt, positive (response with the concept), negative (without)",
            type=["csv", "jsonl", "json"], key="steer_upload",
            help=f"at least {steering_data.MIN_TRIPLES} triples, at most {steering_data.MAX_TRIPLES_BYTES // 2**20} MB",
        )
        cols = st.columns([1, 2])
        concept = cols[0].text_input("Concept name", key="steer_concept_name", placeholder="e.g. dogs").strip()
        words_text = cols[1].text_input("Concept words (comma-separated)", key="steer_words",
                                        placeholder="dog, dogs, puppy", help=words_help + "; required for uploads")
        if upload is None:
            st.info("Upload a triple file (prompt, positive, negative), name the concept and give its words.")
            st.stop()
        triples = steering_data.parse_triples(upload.getvalue(), upload.name)
        digest = steering_data.digest(triples)
        concept = concept or upload.name.rsplit(".", 1)[0]
        tokens = steering_data.split_tokens(words_text)
        if not tokens:
            raise OrthoscopeError(f"Give the concept words for {concept!r}, comma-separated (e.g. 'dog, dogs'): uploaded "
                                  "triples carry no word list, and without one nothing can tell whether the steered "
                                  "text names the concept.")
        st.caption(f"{len(triples)} triples from {guard.literal(upload.name)} (sha256 {digest}).")

    cols = st.columns([1, 1, 1])
    layer = int(cols[0].number_input(f"Block (0 to {n_layers - 1})", min_value=0, max_value=n_layers - 1, step=1,
                                     key="steer_layer", help="the decoder block that is read and steered"))
    position = _protocol_select(cols[1], "position")
    template = cols[2].selectbox("Prompt template", steering.TEMPLATES, index=steering.TEMPLATES.index(D["template"]),
                                 key="steer_template", help="chat: the tokenizer's chat template; plain: prompt + newline")

    with st.expander("Protocol options"):
        st.caption("Where this run may follow the CRH reference code or not; '(reference)' marks the reference's "
                   "choice. The token position above is the fourth such option.")
        o = st.columns(3)
        unit = _protocol_select(o[0], "unit")
        steer_tokens = _protocol_select(o[1], "steer_tokens")
        hook = _protocol_select(o[2], "hook")
        st.button("Use the reference settings", key="steer_use_reference", icon=":material/restart_alt:",
                  on_click=_use_reference,
                  help="token position, strength unit, steered tokens and layer convention as in the reference code")

    with st.expander("Grid, null and generation"):
        o = st.columns(4)
        strengths_text = o[0].text_input("Strengths s (multiples of the unit)", ", ".join(f"{s:g}" for s in D["strengths"]),
                                         key="steer_strengths")
        penalties_text = o[1].text_input("Penalties p (0: own direction, 1: axis only)",
                                         ", ".join(f"{p:g}" for p in D["penalties"]), key="steer_penalties")
        null_draws = int(o[2].number_input("Null draws", 1, 16, D["null_draws"], key="steer_null_draws",
                                           help="random directions of the same norm per steered vector and prompt"))
        sectors = int(o[3].number_input("Sectors K", 2, 36, D["sectors"], key="steer_sectors"))
        o = st.columns(4)
        heldout = float(o[0].number_input("Held-out fraction", min_value=0.05, max_value=0.9,
                                          value=float(D["heldout_fraction"]), step=0.05, key="steer_heldout"))
        max_heldout = int(o[1].number_input("Max held-out samples steered", 1, 256, D["max_heldout"],
                                            key="steer_max_heldout"))
        seed = int(o[2].number_input("Seed", min_value=0, value=D["seed"], step=1, key="steer_seed",
                                     help="the split, the random directions, sampling and the bootstrap"))
        control = o[3].selectbox("Control concept", [AUTO, *names], key="steer_control",
                                 help="an unrelated built-in concept whose axis is steered as a baseline; auto: the "
                                      "next built-in concept sharing no word with this one")
        o = st.columns(4)
        window = int(o[0].number_input("Window tokens", 1, steering.MAX_WINDOW, D["window"], key="steer_window",
                                       help="teacher-forced tokens of the held-out response in which concept words are scored"))
        gen_tokens = int(o[1].number_input("Generated tokens", 1, steering.MAX_GEN_TOKENS, D["gen_tokens"],
                                           key="steer_gen_tokens"))
        temperature = float(o[2].number_input("Temperature (0 = greedy)", min_value=0.0, max_value=5.0,
                                              value=float(D["temperature"]), step=0.1, key="steer_temperature"))
        neutral = int(o[3].number_input("Neutral sentences", 1, len(steering_data.neutral_sentences()),
                                        D["neutral_sentences"], key="steer_neutral",
                                        help="text without any concept whose perplexity guards coherence"))
        o = st.columns(4)
        boot = int(o[0].number_input("Bootstrap draws", 20, 10000, D["boot"], step=20, key="steer_boot"))
        sweep = o[1].checkbox("Layer sweep", value=D["sweep"], key="steer_sweep",
                              help="axis norm, mean cos(theta) and normal spread at every block (no extra forward passes)")

    params = steering.check_params({
        "concept": concept, "tokens": tokens, "control": None if control == AUTO else control, "layer": layer,
        "position": position, "unit": unit, "steer_tokens": steer_tokens, "hook": hook, "template": template,
        "sectors": sectors, "strengths": inputs.numbers(strengths_text, "strengths", "2, 4, 8"),
        "penalties": inputs.numbers(penalties_text, "penalties", "0, 1"), "null_draws": null_draws,
        "heldout_fraction": heldout, "max_heldout": max_heldout, "seed": seed, "window": window,
        "gen_tokens": gen_tokens, "temperature": temperature, "neutral_sentences": neutral, "boot": boot,
        "sweep": sweep, "triples_sha256": digest,  # None for a built-in set
    }, n_layers)
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()

st.button("Compute", type="primary", key="steer_compute", icon=":material/play_arrow:",
          on_click=_request, args=(params, triples))
request = inputs.last_request(
    "steer_request", params,
    "Press Compute to read the activations, fit the cylinder and steer the held-out prompts.",
    "The settings above have changed: press Compute to update the results below.")

with guard.drawing("the steering results"):
    result = background.result(
        cache.result_key("steering", handle.fingerprint, request),
        tasks.Task("steering", request, model_picker.current_ref(),
                   inputs={"triples": st.session_state.get("steer_request_triples")},
                   carried=background.lent(f"steering-activations|{handle.fingerprint}|")),
        f"cylindrical steering of {guard.literal(handle.name)}", slot="steering",
    )

    head = charts.summary(result)
    unit_name = head["unit"]
    limit = head["ppl_limit"]
    (st.success if head["concept_in_text"] else st.warning)(guard.literal(head["verdict"]))
    axis, cell = head["best_axis"], head["best_self"]
    _evidence(axis, f"Axis at s = {axis['s']:g} {unit_name}" if axis else "Axis", "directions protocol", head)
    _evidence(cell, f"Self-steering at s = {cell['s']:g}, p = {cell['p']:g}" if cell else "Self-steering", "CRH protocol",
              head)
    m = st.columns(4)
    split_half, held_cos, fit_cos = head["split_half_cos"], head["mean_cos_heldout"], head["mean_cos_fit_loo"]
    m[0].metric("Split-half axis agreement (cos)", f"{split_half['value']:.3f}",
                delta=f"95% interval {split_half['lo']:.3f} to {split_half['hi']:.3f}", delta_color="off", delta_arrow="off",
                help=f"cosine between the axes of two random halves of the {result.n_fit} fit triples, median over "
                     f"{result.uncertainty.get('boot')} cuts")
    m[1].metric("Held-out mean cos(theta)", f"{held_cos['value']:.3f}",
                delta=f"95% CI {held_cos['lo']:.3f} to {held_cos['hi']:.3f}", delta_color="off", delta_arrow="off",
                help=f"the {result.n_heldout} held-out triples against the fit axis; fit triples, leave-one-out: "
                     f"{fit_cos['value']:.3f} ({fit_cos['lo']:.3f} to {fit_cos['hi']:.3f})")
    m[2].metric("Held-out accuracy, probe / axis",
                f"{result.baselines['probe_heldout_accuracy']:.0%} / {result.baselines['axis_heldout_accuracy']:.0%}",
                help="logistic probe on the activations; the axis thresholded halfway between the fit classes")
    m[3].metric("Time", f"{head['total_s']:.1f} s", delta=f"{head['passes_per_s']:.1f} forward passes / s",
                delta_color="off", delta_arrow="off",
                help=f"{head['passes']} forward passes"
                     + ("; the activations were cached from an earlier run" if result.work.get("activations_cached") else ""))
    params = result.params
    st.caption(
        f"{guard.literal(result.model_name)} · concept '{guard.literal(result.concept['name'])}' "
        f"({guard.literal(params['source'])}; words " + ", ".join(guard.literal(w) for w in result.concept["words"])
        + f") · {result.n_fit} fit + {result.n_heldout} held-out triples, "
        f"{result.n_steered} held-out prompts steered · block {result.layer} of {result.n_layers} ({params['hook']}) · "
        f"{params['position']} token · {params['template']} prompts · unit {unit_name} = {result.unit_value:.4g} · "
        f"control concept '{guard.literal(result.concept['control']['name'])}'"
    )
    for note in result.notes:
        st.info(guard.literal(note))

    with st.expander("How this is computed"):
        st.markdown(
            "- **Geometry** (fit triples): d_i is the difference of the activations with and without the concept; the "
            "axis a is their mean, cos(theta_i) each d_i's alignment with it, and the normal plane the top two principal "
            "directions of the parts of the d_i orthogonal to a. Held-out triples are placed on the fit cylinder.\n"
            "- **Self-steering** (the CRH reference's penalty experiment): each held-out sample i is steered on its own "
            "prompt with its own vector v_i(s, p) = s u (cos(theta_i) a_hat + (1 - p) sin(theta_i) o_hat_i), where u is "
            "the strength unit (|a| or the mean |d|); p = 0 keeps the sample's own direction, p = 1 only its axis part.\n"
            "- **Directions**: one direction (the axis, the first principal component of the d_i, the logistic probe, an "
            "unrelated control concept's axis) at norm s x u on every held-out prompt.\n"
            "- **The null**: random directions of exactly the same norm as each steered vector. A setting is *reaching* "
            "when its mean gain is above the null's 95th percentile; a sample's steerability is 1 / the smallest s at "
            "which its own gain is.\n"
            "- **Scores**: the *concept gain* is the change of the log expected number of concept words starting in a "
            "teacher-forced window of the held-out response without the concept (every word in four forms; words the "
            "tokenizer splits are scored as whole token sequences). The *concept rate* is the share of continuations "
            "that name a concept word (word-boundary match). *ppl_ratio* is the perplexity of neutral sentences with the "
            "vector added, over the unsteered model's; *repetition* the share of repeated word 3-grams in a continuation. "
            f"\n- **Verdict**: only settings with ppl_ratio <= {limit:g} count. The concept is in the text when one of "
            "them names it more often than the random directions and the unsteered model together (one-sided Fisher "
            "test, Bonferroni over those settings); the metrics above show the setting of each protocol with the largest "
            "gain over its null."
        )
        differ = [PROTOCOL[o][0].lower() for o in REF if params[o] != REF[o]]
        show_table(pd.DataFrame([{"option": PROTOCOL[o][0], "this run": params[o], "reference": REF[o],
                                  "": "same" if params[o] == REF[o] else "differs"} for o in REF]), "steering",
                   key="steer_protocol_table")
        st.caption("This run differs from the reference in: " + ", ".join(differ) + "." if differ
                   else "This run follows the reference in all four options.")

    st.subheader("Steering on the held-out prompts")
    unit_caption = f"s in multiples of the unit ({unit_name} = {result.unit_value:.4g})"
    CHARTS = (
        ("steer_self_gain_chart", charts.self_steering_gains,
         f"CRH protocol: each held-out sample with its own vector, against random directions of the same norms; "
         f"{unit_caption}."),
        ("steer_direction_gain_chart", charts.direction_gains,
         "Directions protocol: each direction at norm s x unit on every held-out prompt, against random directions."),
        ("steer_rate_chart", charts.concept_rates,
         "Generation rate under both protocols, with Wilson intervals, beside random directions and the unsteered model."),
        ("steer_coherence_chart", charts.coherence,
         f"Coherence guard under both protocols: neutral-text perplexity ratio; the headline stays under {limit:g}x."),
        ("steer_hist_chart", charts.histograms, "Geometry: the axis fitted on the fit triples, held-out triples beside them."),
        ("steer_plane_chart", charts.normal_plane,
         "CRH protocol: held-out samples on the fit plane, coloured by steerability; hollow where none beats the null."),
        ("steer_sectors_chart", charts.sector_polar,
         f"CRH protocol by sector of the fit plane: only {result.n_steered} held-out samples, so each sector holds few."),
        ("steer_baselines_chart", charts.baseline_cosines,
         "Directions fitted on the fit triples; accuracies on the held-out triples."),
    )
    for start in range(0, len(CHARTS), 2):
        for column, (key, build, caption) in zip(st.columns(2), CHARTS[start:start + 2]):
            guard.chart(column, build(result), key=key)
            column.caption(caption)
    sweep_fig = charts.layer_sweep(result)
    if sweep_fig is not None:
        guard.chart(st, sweep_fig, key="steer_sweep_chart")
        st.caption("Geometry only, on the fit triples at every block; no steering.")

    st.subheader("Tables")
    frames = result.tables()
    st.markdown("**Self-steering grid** (CRH protocol; one row per (s, p), means over the held-out prompts)")
    show_table(frames["grid"], "steering", "grid", key="steer_grid")
    st.markdown("**Directions** (directions protocol; the `random` row is the null)")
    show_table(frames["directions"], "steering", "directions", key="steer_directions")
    st.markdown(f"**Held-out samples** (CRH protocol at p = {head['self_penalty']:g}; "
                f"{head['self_reaching']} of {head['n_steered']} beat the null at some strength)")
    show_table(frames["self_steering"], "steering", "self_steering", key="steer_self")
    st.markdown("**Example generations** (the headline's self-steering cell; unsteered, steered and along a random "
                "direction of the same norm)")
    show_table(pd.DataFrame(result.examples, columns=["prompt", "s", "p", "unsteered", "steered", "random"]), "steering",
               "examples", key="steer_examples")
    with st.expander(f"All steered continuations ({len(result.steered)})"):
        show_table(frames["steered"], "steering", "steered", key="steer_steered")
    report_basket.add_button(result, key="steer_add")
