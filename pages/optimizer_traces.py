"""Optimizer traces: orthogonalised optimizers against AdamW and SGD, with the geometry of every update."""

import hashlib

import streamlit as st

import ui
from charts import optimizer_traces as charts
from diagnostics import optimizer_traces, optimizers, tasks, trace_recorder
from models import OrthoscopeError
from ui import background, cache, guard, inputs, report_basket
from ui.tables import show_table

ui.sidebar()
st.title("Optimizer traces")
st.caption(
    "Train a built-in benchmark with several optimizers, seeds and learning rates, and see what each "
    "does to the geometry of its updates: every few steps the recorder measures the applied update "
    "dW of each matrix (RMS, spectral norm, singular-value spread, effective and stable rank, neuron-norm "
    "variation) and, less often, the power-law alpha of the weights' spectra. Each optimizer is compared "
    "at the learning rate it does best with on a validation split carved from the training data; the "
    "test split is only reported. Traces recorded in your own training loop "
    "(diagnostics.trace_recorder.TraceRecorder) load here too."
)
D = optimizer_traces.DEFAULTS


def _show(result: optimizer_traces.OptimizerTracesResult, key: str) -> None:
    runs = result.runs()
    compare = result.compare()
    if not compare.empty:
        st.subheader("Comparison at the rates chosen on validation")
        st.caption(guard.literal(optimizer_traces.protocol_text(result)))
        show_table(compare, "optimizer_traces", "compare", key=f"{key}_compare")
        edge = compare[compare["lr_at_grid_edge"].astype(bool)]
        if not edge.empty:
            st.warning("Chosen at the edge of the learning-rate grid, so the best rate may lie beyond it: "
                       + ", ".join(f"{guard.literal(n)} (lr={lr:.3g})" for n, lr in zip(edge["name"], edge["lr"]))
                       + ". Widen the sweep (or set those optimizers' rates) before trusting these rows.")
        guard.chart(st, charts.comparison(result), key=f"{key}_comparison")
        guard.chart(st, charts.lr_sweep(result), key=f"{key}_sweep")
    else:
        st.caption(guard.literal(optimizer_traces.protocol_text(result)))
    st.subheader("Runs")
    show_table(runs, "optimizer_traces", "runs", key=f"{key}_runs")
    if "diverged" in runs and runs["diverged"].fillna(False).astype(bool).any():
        st.warning("Some runs diverged (the loss became NaN or infinite): "
                   + ", ".join(guard.literal(r) for r in runs.loc[runs["diverged"].fillna(False).astype(bool), "run_id"])
                   + ".")
    updates = result.table("update")
    if "momentum_warning" in updates and updates["momentum_warning"].fillna(False).astype(bool).any():
        hits = updates[updates["momentum_warning"].fillna(False).astype(bool)]
        st.warning(f"{len(hits)} update record(s) had a momentum norm below "
                   f"{trace_recorder.MOMENTUM_WARNING_FACTOR:g} x the Newton-Schulz epsilon "
                   f"({optimizers.NS_EPS:g}); there the orthogonalised direction is mostly rounding noise. "
                   f"First: {guard.literal(hits.iloc[0]['matrix'])} at step {guard.literal(hits.iloc[0]['step'])} "
                   f"({guard.literal(hits.iloc[0]['run_id'])}).")
    c = st.columns(3)
    log_y = c[0].toggle("Log loss axis", value=True, key=f"{key}_loss_log")
    per_seed = c[1].toggle("A line per seed", key=f"{key}_loss_per_seed",
                           help="each seed's run under the mean, instead of the band from the lowest to the highest seed")
    smoothing = c[2].slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key=f"{key}_loss_smoothing",
                            help="weight w of TensorBoard's debiased exponential moving average, applied to each run: "
                                 "s_t = w s_(t-1) + (1 - w) x_t, divided by 1 - w^t; 0 shows the logged losses")
    curves = dict(log_y=log_y, smoothing=smoothing, per_seed=per_seed)
    left, right = st.columns(2)
    guard.chart(left, charts.loss_curves(result, "step", **curves), key=f"{key}_loss_step")
    guard.chart(right, charts.loss_curves(result, "train_s", **curves), key=f"{key}_loss_time")
    guard.chart(st, charts.held_out(result), key=f"{key}_held_out")
    guard.chart(st, charts.update_geometry(result), key=f"{key}_geometry")
    guard.chart(st, charts.per_layer(result), key=f"{key}_per_layer")
    left, right = st.columns(2)
    guard.chart(left, charts.weight_alpha(result), key=f"{key}_alpha")
    guard.chart(right, charts.time_breakdown(result), key=f"{key}_times")
    routes = result.routes()
    if not routes.empty:
        st.subheader("Routing: which parameters each optimizer takes")
        show_table(routes.astype({"shape": str}), "optimizer_traces", "routes", key=f"{key}_routes")
    used = list(dict.fromkeys(runs["optimizer"]))
    with st.expander("Papers, and where each paper and its public code disagree"):
        for name in used:
            info = result.notes.get(name)
            if not info:
                continue
            st.markdown(f"**{guard.literal(info['label'])}**: {guard.literal(info['paper'])}")
            for note in info["notes"]:
                st.markdown(f"- {guard.literal(note)}")
    c = st.columns([1, 1, 4])
    c[0].download_button("traces.jsonl", data=lambda: "".join(trace_recorder.dumps(r) + "\n" for r in result.records),
                         file_name="traces.jsonl", mime="application/jsonl", key=f"{key}_download",
                         icon=":material/download:")
    with c[1]:
        report_basket.add_button(result, key=f"{key}_add")


source = st.segmented_control("Source", ["Run a benchmark", "Load a trace"], key="opt_source",
                              default="Run a benchmark")

if source == "Load a trace":
    upload = st.file_uploader("traces.jsonl (one JSON record a line, see reports/SCHEMA.md)",
                              type=["jsonl", "json", "txt"], key="opt_upload")
    if upload is None:
        st.info("Upload a trace written by this page, the CLI (`python cli.py optimizers`), or a TraceRecorder in your own loop.")
        st.stop()
    data = upload.getvalue()
    try:
        # Parsed once per file content, not on every rerun of the page.
        result = cache.cached(f"trace|{hashlib.sha256(data).hexdigest()}|{upload.name}",
                              lambda: optimizer_traces.from_trace(trace_recorder.parse_trace_bytes(data, upload.name),
                                                                  upload.name))
    except OrthoscopeError as exc:
        guard.error(exc)
        st.stop()
    with guard.drawing("a loaded trace"):
        st.success(f"{len(result.records):,} records, {len(result.headers())} run(s) from {guard.literal(upload.name)}.")
        _show(result, "opt_loaded")
    st.stop()

names = optimizers.optimizer_names()
cols = st.columns([1, 3])
bench = cols[0].selectbox("Benchmark", list(optimizer_traces.BENCHMARKS), key="opt_bench",
                          format_func={"digits": "digits MLP (64-256-256-10)", "chars": "character transformer"}.get)
chosen = cols[1].multiselect("Optimizers", names, default=D["optimizers"], key="opt_optimizers",
                             format_func=optimizers.label_of)
cols = st.columns([1, 1, 2, 1])
seeds = int(cols[0].number_input("Seeds", 1, 20, D["seeds"], key="opt_seeds"))
steps = int(cols[1].number_input("Steps", 10, optimizer_traces.MAX_STEPS, D["steps"], step=50, key="opt_steps"))
scopes = cols[2].multiselect(
    "Matrix-optimizer scope", optimizers.SCOPES, default=D["scopes"], key="opt_scopes",
    format_func=optimizers.SCOPE_LABELS.get,
    help="Hidden layers only (the default, as the Muon authors advise): the first layer, fed raw inputs, and "
         "the output layer stay on AdamW. Choose both to run the two scopes side by side.")
decay = cols[3].selectbox("Learning-rate decay", optimizer_traces.DECAYS, key="opt_decay")
with st.expander("Learning rates, splits and recorder"):
    scales_text = st.text_input("Learning-rate sweep: multiples of each optimizer's rate",
                                ", ".join(f"{x:g}" for x in D["lr_scales"]), key="opt_scales",
                                help="Every optimizer runs at each multiple of its rate; it is reported at the "
                                     "one of lowest mean validation loss. 1 alone runs one rate.")
    lr_cols = st.columns(4)
    lrs = {n: float(lr_cols[i % 4].number_input(f"{optimizers.label_of(n)} lr", min_value=0.0,
                                                 value=optimizers.default_lr(n), format="%.5g", key=f"opt_lr_{n}"))
           for i, n in enumerate(chosen)}
    r = st.columns(5)
    adamw_lr = float(r[0].number_input("AdamW lr for routed-out parameters", min_value=0.0, value=D["adamw_lr"],
                                       format="%.5g", key="opt_adamw_lr"))
    weight_decay = float(r[1].number_input("Weight decay", min_value=0.0, value=D["weight_decay"], format="%.4g",
                                           key="opt_wd"))
    every = int(r[2].number_input("Record updates every k steps", 1, 1000, D["every"], key="opt_every"))
    alpha_every = int(r[3].number_input("Weight alpha every K steps", 1, 10000, D["alpha_every"], key="opt_alpha_every"))
    eval_every = int(r[4].number_input("Evaluate every", 1, 10000, D["eval_every"], key="opt_eval_every"))
    r = st.columns(5)
    val_fraction = float(r[0].number_input("Validation share of the training data", 0.05, 0.5, D["val_fraction"],
                                           step=0.05, format="%.2f", key="opt_val_fraction"))
    split_seed = int(r[1].number_input("Validation split seed", 0, 2**31 - 1, D["split_seed"], key="opt_split_seed"))

try:
    params = optimizer_traces.check_params({
        "bench": bench, "optimizers": chosen, "lr_scales": inputs.numbers(scales_text, "learning-rate sweep", "0.5, 1, 2"),
        "lrs": lrs, "seeds": seeds, "steps": steps, "scopes": scopes, "decay": decay, "every": every,
        "alpha_every": alpha_every, "eval_every": eval_every, "val_fraction": val_fraction, "split_seed": split_seed,
        "adamw_lr": adamw_lr, "weight_decay": weight_decay,
    })
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()
runs = len(optimizer_traces.plan(params))
st.caption(f"{runs} run(s) of {steps} steps each.")
def _run(request: dict) -> None:
    # A click asks for a fresh try: a failed job with these settings is forgotten, a finished one kept.
    job = background.get(_key(request))
    if job is not None and job.error:
        background.forget(_key(request))
    st.session_state["opt_request"] = request


def _key(request: dict) -> str:
    return cache.result_key("optimizer_traces", request["bench"], request)


st.button("Run", type="primary", key="opt_run", icon=":material/play_arrow:", on_click=_run, args=(params,))
request = inputs.last_request(
    "opt_request", params, "Press Run to train. The runs go on in the background; the page stays usable meanwhile.",
    "The settings above have changed: press Run to train with them. The results below are for the last run.")

with guard.drawing("the optimizer traces"):
    result = background.result(_key(request), tasks.Task("optimizer_traces", request),
                               f"optimizer traces on the {request['bench']} benchmark", slot="optimizer_traces")
    st.caption(f"{guard.literal(result.model_name)} · {len(optimizer_traces.plan(request))} run(s) trained in "
               f"{result.timings['total_s']:.1f} s")
    _show(result, "opt")
