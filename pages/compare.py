"""Compare: the checkpoints of a training run, or several models, side by side; what a fine-tune changed
in its base; whether two fine-tunes of one base interfere."""

import hashlib
import os
from pathlib import Path

import streamlit as st

import ui
from charts import compare as charts
from diagnostics import compare, tasks
from models import BUILTINS, OrthoscopeError
from models.checkpoints import STEP_PATTERN, Checkpoint, discover, from_specs
from models.safety import ALLOWED_ROOTS_ENV, allowed_roots, check_under_roots
from ui import background, cache, guard, inputs, model_picker, report_basket, uploads
from ui.tables import show_table

ui.sidebar()
st.title("Compare models")
st.caption(
    "The layer spectra (alpha, its trust and phase) of every checkpoint of a training run, or of several "
    "models, side by side. With a base: what each model changed in it, layer by layer (the update dW = "
    "W - W_base, its size, rank, and the principal angles between its top singular directions and the "
    "base's), and whether the updates of several models derived from the base overlap (task vectors, as "
    "in task arithmetic and orthogonal model merging). The sweep runs in the background on every core and "
    "keeps what it computed in a DuckDB file, so running it again, or after the run has saved more "
    "checkpoints, computes only what is new. The CLI (`python cli.py compare`) runs the same sweep, also on Ray."
)
NO_BASE = "none"
FIRST_SHOWN = 8  # members named in the caption before "..."

Members = tuple[list[Checkpoint], dict[str, tuple[str, ...]], str]  # members, spec -> roots, the sweep's source


def _roots_or_info() -> list[Path] | None:
    roots = allowed_roots()
    if not roots:
        st.info(f"Reading local paths is off. Set {ALLOWED_ROOTS_ENV} to the folders the dashboard may read.")
        return None
    st.caption("Allowed: " + guard.literal(os.pathsep.join(str(r) for r in roots)))
    return roots


def _uploaded_folder() -> tuple[Path, tuple[str, ...]] | None:
    """An uploaded checkpoint folder, saved as untrusted files under this server's upload directory."""
    files = st.file_uploader("Checkpoint folder (checkpoint-N/ folders, or weight files named with their step)",
                             accept_multiple_files="directory", key="compare_upload_dir")
    if not files:
        return None
    uploads.check_total_size([f.size for f in files], model_picker.upload_limit_mb())
    folder = uploads.save_files([(f.name, f.getvalue()) for f in files], keep_folders=True)
    entries = list(folder.iterdir())
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else folder
    return top, (str(uploads.current_root()),)


def _series() -> Members | None:
    """A checkpoint folder: where it is, and the pattern its names carry the step in."""
    where = st.radio("Folder", ("Local path", "Upload"), horizontal=True, key="compare_folder_source")
    if where == "Local path":
        roots = _roots_or_info()
        if roots is None:
            return None
        text = st.text_input("Folder holding the checkpoints", key="compare_folder").strip()
        if not text:
            return None
        # Resolved and checked first: nothing outside the allowed folders is even listed.
        folder, kept = check_under_roots(Path(text), roots), tuple(str(r) for r in roots)
    else:
        picked = _uploaded_folder()
        if picked is None:
            return None
        folder, kept = picked
    pattern = st.text_input("Step pattern (a regular expression with one group around the step)", key="compare_pattern",
                            placeholder=STEP_PATTERN, help="Empty: the default above, which reads checkpoint-500/, "
                            "step_500.safetensors, model-00100.pt, epoch_3.bin, ...").strip()
    members = discover(folder, pattern or None)
    return members, {m.spec: kept for m in members}, f"folder|{folder}"


def _models() -> Members | None:
    """A list of models from any source; each is a member, named by its spec (an upload by its file name)."""
    c = st.columns(2)
    builtins = c[0].multiselect("Built-in models", list(BUILTINS), format_func=lambda k: BUILTINS[k].title,
                                key="compare_builtins")
    files = c[1].file_uploader("Checkpoint files", type=[s.lstrip(".") for s in uploads.CHECKPOINT_SUFFIXES],
                               accept_multiple_files=True, key="compare_upload_files")
    c = st.columns(2)
    hub = c[1].text_area("Hub ids, one a line (needs internet)", key="compare_hub", placeholder="ORG/NAME")
    with c[0]:
        roots = allowed_roots()
        paths = st.text_area("Local paths, one a line (folders or checkpoint files)", key="compare_paths",
                             disabled=not roots,
                             help=None if roots else f"Set {ALLOWED_ROOTS_ENV} to allow local paths.")
    paths = [p.strip() for p in paths.splitlines() if p.strip()] if roots else []
    specs = [f"builtin:{k}" for k in builtins] + paths + [
        f"hf:{line.strip().removeprefix('hf:')}" for line in hub.splitlines() if line.strip()]
    saved = []
    if files:
        uploads.check_total_size([f.size for f in files], model_picker.upload_limit_mb())
        for f in files:
            folder = uploads.save_files([(f.name, f.getvalue())], keep_folders=False)
            saved.append(Checkpoint(str(folder / uploads.safe_name(f.name)), f.name, None))
    if not specs and not saved:
        return None
    members = (from_specs(specs) if specs else []) + saved
    names = [m.name for m in members]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OrthoscopeError(f"two models are both named {twice[0]!r}; rename one of the uploaded files.")
    kept = {p: tuple(str(r) for r in roots) for p in paths}
    kept |= {m.spec: (str(uploads.current_root()),) for m in saved}
    return members, kept, "models|" + "\n".join(sorted(m.spec for m in members))


def _stamp(members: list[Checkpoint]) -> str:
    """Changes when any member's files do (sizes and times), so a rewritten checkpoint is swept again."""
    return hashlib.sha256("\n".join(model_picker.stamp(m.spec) for m in members).encode()).hexdigest()


def _show(result: compare.CompareResult) -> None:
    s = result.summary
    m = st.columns(4)
    m[0].metric("Analysed", f"{s['ok']} of {s['checkpoints']}")
    m[1].metric("Failed", s["failed"])
    m[2].metric("Tasks computed / from the database", f"{s['computed']} / {s['reused']}")
    # The count as the value (a quarter-width metric cuts "local, 2 workers"), the executor in the label.
    m[3].metric(f"Worker processes ({s['executor']})", s["workers"])
    st.caption(f"{guard.literal(result.model_name)} · {result.timings.get('total_s', 0):.1f} s · database "
               f"{guard.literal(s.get('db', ''))}")
    failed = charts.failed_members(result)
    if failed:
        st.warning(f"{len(failed)} of {s['checkpoints']} could not be analysed; the sweep went on without them:\n\n"
                   + "\n".join(f"- {guard.literal(r['checkpoint'])}: {guard.literal(r.get('reason', ''))}"
                               for r in failed[:10])
                   + ("\n- ... (all of them in the table below)" if len(failed) > 10 else ""))
    for problem in s.get("task_failures", []):
        st.warning(f"{guard.literal(problem['task'])} failed: {guard.literal(problem['reason'])}")
    for note in s.get("notes", []):
        st.info(guard.literal(note))
    members = charts.ok_members(result)
    if not members:
        st.error("No checkpoint could be analysed; the reasons are above.")
        show_table(result.to_frame(), "compare", "checkpoints", key="compare_checkpoints")
        return
    guard.chart(st, charts.alpha_heatmap(result), key="compare_heatmap")
    guard.chart(st, charts.mean_alpha_over_steps(result), key="compare_steps")
    if len(members) >= 2:
        left, right = st.columns(2)
        a = right.selectbox("Model A (x axis)", members, index=0, key="compare_a")
        b = right.selectbox("Model B (y axis)", members, index=len(members) - 1, key="compare_b")
        right.caption("Each point is a layer fitted in both. On the line y = x its alpha did not change; below it, "
                      "B's alpha is smaller: a heavier tail, which HTSR reads as more correlation learned. Hollow: "
                      "a fit not trusted in A or B.")
        guard.chart(left, charts.alpha_a_vs_b(result, a, b), key="compare_a_vs_b")
    derived = charts.derived_members(result)
    if derived:
        st.subheader("What each model changed in the base")
        chosen = st.selectbox("Derived model", derived, key="compare_derived")
        guard.chart(st, charts.delta_geometry(result, chosen), key="compare_delta")
    if result.overlaps:
        st.subheader("Do the models derived from the base interfere?")
        layer = st.selectbox("Layer", ["mean over layers", *dict.fromkeys(r["name"] for r in result.overlaps)],
                             key="compare_overlap_layer")
        guard.chart(st, charts.overlap_matrix(result, None if layer == "mean over layers" else layer),
                    key="compare_overlap")
    tables = result.tables()
    st.subheader("Checkpoints")
    show_table(tables["checkpoints"], "compare", "checkpoints", key="compare_checkpoints")
    for name, label in (("layers", "Layers: alpha, trust and phase per checkpoint"),
                        ("deltas", "Deltas: the update of each layer from the base"),
                        ("overlaps", "Overlaps: task vectors per pair and layer")):
        if name in tables:
            with st.expander(f"{label} ({len(tables[name]):,} rows)"):
                show_table(tables[name], "compare", name, key=f"compare_table_{name}")
    report_basket.add_button(result, key="compare_add")


source = st.segmented_control("Compare", ["Checkpoint folder", "Models"], key="compare_source",
                              default="Checkpoint folder")
try:
    picked = _models() if source == "Models" else _series()
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()
if picked is None:
    st.info("Give a folder of checkpoints (Hugging Face Trainer checkpoint-N/ folders, or weight files whose names "
            "carry the step), or choose two or more models.")
    st.stop()
members, roots, where = picked
shown = ", ".join(guard.literal(m.name) for m in members[:FIRST_SHOWN]) + (" ..." if len(members) > FIRST_SHOWN else "")
st.caption(f"{len(members)} member{'s' * (len(members) != 1)}: {shown}")

c = st.columns([2, 1, 1, 1, 1])
base = c[0].selectbox("Base (deltas and task-vector overlaps of the others from it)",
                      [NO_BASE] + [m.name for m in members], key="compare_base")
k = c[1].number_input("k (top singular directions)", min_value=1, value=8, step=1, key="compare_k")
min_evals = c[2].number_input("min_evals", min_value=2, value=8, step=1, key="compare_min_evals")
seed = c[3].number_input("seed", min_value=0, value=0, step=1, key="compare_seed")
workers = c[4].number_input("Worker processes", min_value=1, value=os.cpu_count() or 1, step=1, key="compare_workers",
                            help="A process pool of this many workers, one checkpoint each at a time; 1 runs in "
                                 "the job's own process")
try:
    params = compare.CompareParams(k=int(k), min_evals=int(min_evals), seed=int(seed))
except OrthoscopeError as exc:
    guard.error(exc)
    st.stop()

wanted = {"members": [[m.spec, m.name, m.step] for m in members], "base": None if base == NO_BASE else base,
          "roots": {spec: list(r) for spec, r in roots.items()}, "source": where, "params": params.to_dict(),
          "workers": int(workers), "stamp": _stamp(members)}


def _key(request: dict) -> str:
    return cache.result_key("compare", request["stamp"], request)


def _run(request: dict) -> None:
    # A click asks for a fresh try: a failed job with these settings is forgotten, a finished one kept.
    job = background.get(_key(request))
    if job is not None and job.error:
        background.forget(_key(request))
    st.session_state["compare_request"] = request


st.button("Run", type="primary", key="compare_run", icon=":material/play_arrow:", on_click=_run, args=(wanted,))
request = inputs.last_request(
    "compare_request", wanted, "Press Run to sweep. It goes on in the background; the page stays usable meanwhile.",
    "The choices above have changed (or a checkpoint's files did): press Run to sweep them. The results below are "
    "for the last run.")

with guard.drawing("the comparison"):
    checkpoints = [Checkpoint(*m) for m in request["members"]]
    task = tasks.Task("compare", compare.CompareParams.from_dict(request["params"]), inputs={
        "checkpoints": checkpoints, "base": next((m for m in checkpoints if m.name == request["base"]), None),
        "roots": {spec: tuple(r) for spec, r in request["roots"].items()}, "source": request["source"],
        "workers": request["workers"]})
    result = background.result(_key(request), task, f"a comparison of {len(checkpoints)} members", slot="compare")
    _show(result)
