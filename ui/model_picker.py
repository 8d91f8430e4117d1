"""The sidebar model picker shared by every page, and the cached model handle behind it."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from diagnostics.tasks import ModelRef
from models import BUILTINS, DEFAULT_BUILTIN, ModelHandle, OrthoscopeError
from models.safety import ALLOWED_ROOTS_ENV, allowed_roots
from ui import guard, uploads

SOURCES = ("Built-in", "Upload", "Local path", "Hugging Face")


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_load(spec: str, stamp: str, config_path: str | None, max_mb: float | None, display: str | None) -> ModelHandle:
    # ``stamp`` changes whenever the files behind ``spec`` do (content hash for uploads,
    # size + mtime for paths), so the cache key is explicit and no tensor is ever hashed.
    return ref_of(spec, config_path, max_mb, display).open()


def ref_of(spec: str, config_path: str | None, max_mb: float | None, display: str | None) -> ModelRef:
    """How a worker process opens this model. Every local path is checked against roots when opened
    (resolved, links included): an upload against this server's private upload directory, a path a
    user typed against the allowed roots."""
    if not spec or spec.startswith(("builtin:", "hf:")):
        return ModelRef(spec, config_path, max_mb, display, None)
    roots = (str(uploads.current_root()),) if _is_upload(spec) else tuple(str(r) for r in allowed_roots())
    return ModelRef(spec, config_path, max_mb, display, roots)


def _is_upload(spec: str) -> bool:
    """The resolved path lies inside this server's own upload directory (not merely under a path of that name)."""
    return uploads.is_upload(spec)


def stamp(spec: str) -> str:
    """Changes when the files behind ``spec`` do (paths, sizes, modification times): part of a cache key,
    so a rewritten checkpoint is loaded (or swept) again."""
    path = Path(spec)
    if spec.startswith(("builtin:", "hf:")) or not path.exists():
        return spec
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(files))


def upload_limit_mb() -> float:
    return float(st.get_option("server.maxUploadSize"))


def _upload_spec() -> tuple[str, str | None, str | None] | None:
    """The upload in the widgets, else the last one of this session: a file uploader is emptied
    when another page is shown, while the saved files stay on the server under their content hash."""
    picked = _uploaded()
    if picked is not None:
        st.session_state["last_upload"] = picked
        return picked
    last = st.session_state.get("last_upload")
    if last is not None and Path(last[0]).exists():
        st.sidebar.caption(f"Using the earlier upload {guard.literal(last[2])}; upload another file to replace it.")
        return last
    return None


def _uploaded() -> tuple[str, str | None, str | None] | None:
    limit = upload_limit_mb()
    mode = st.sidebar.radio("Upload", ("Checkpoint file", "Model folder"), horizontal=True, key="upload_mode")
    if mode == "Checkpoint file":
        ckpt = st.sidebar.file_uploader(
            "Checkpoint (.safetensors, .pt, .bin, .gguf)", type=[s.lstrip(".") for s in uploads.CHECKPOINT_SUFFIXES],
            key="upload_ckpt",
        )
        cfg = st.sidebar.file_uploader("Optional config.json", type=["json"], key="upload_cfg")
        if ckpt is None:
            return None
        uploads.check_total_size([ckpt.size] + ([cfg.size] if cfg else []), limit)
        folder = uploads.save_files([(ckpt.name, ckpt.getvalue())], keep_folders=False)
        cfg_path = None
        if cfg is not None:
            cfg_folder = uploads.save_files([("config.json", cfg.getvalue())], keep_folders=False)
            cfg_path = str(cfg_folder / "config.json")
        return str(folder / uploads.safe_name(ckpt.name)), cfg_path, ckpt.name
    files = st.sidebar.file_uploader(
        "Model folder (config.json + weights + tokenizer)", accept_multiple_files="directory", key="upload_dir",
    )
    if not files:
        return None
    uploads.check_total_size([f.size for f in files], limit)
    folder = uploads.save_files([(f.name, f.getvalue()) for f in files], keep_folders=True)
    entries = [p for p in folder.iterdir()]
    model_dir = entries[0] if len(entries) == 1 and entries[0].is_dir() else folder
    return str(model_dir), None, model_dir.name


def picked_spec() -> tuple[str, str | None, float | None, str | None] | None:
    """Draw the picker; return (spec, config path, size limit, display name) or None."""
    st.sidebar.header("Model")
    source = st.sidebar.radio("Source", SOURCES, key="model_source")
    if source == "Built-in":
        keys = list(BUILTINS)
        key = st.sidebar.selectbox(
            "Built-in model", keys, index=keys.index(DEFAULT_BUILTIN), format_func=lambda k: BUILTINS[k].title,
            key="builtin_key",
        )
        return f"builtin:{key}", None, None, None
    if source == "Upload":
        picked = _upload_spec()
        if picked is None:
            return None
        path, cfg, display = picked
        return path, cfg, upload_limit_mb(), display
    if source == "Local path":
        roots = allowed_roots()
        if not roots:
            st.sidebar.info(f"Reading local paths is off. Set {ALLOWED_ROOTS_ENV} to the folders the dashboard may read.")
            return None
        st.sidebar.caption("Allowed: " + os.pathsep.join(str(r) for r in roots))
        path = st.sidebar.text_input("Path to a model folder or checkpoint file", key="local_path").strip()
        return (path, None, None, None) if path else None
    repo = st.sidebar.text_input("Hub id (needs internet)", placeholder="ORG/NAME", key="hf_id").strip()
    return (f"hf:{repo.removeprefix('hf:')}", None, None, None) if repo else None


def draw_picker() -> None:
    """Draw the picker in the sidebar (app.py, every run) and remember what it says."""
    try:
        st.session_state["picked_model"] = picked_spec()
    except OrthoscopeError as exc:
        st.session_state["picked_model"] = exc


def current_ref() -> ModelRef:
    """The model picked in the sidebar, as a worker process opens it (call after :func:`current_model`)."""
    return ref_of(*st.session_state["picked_model"])


def current_model() -> ModelHandle | None:
    """The model picked in the sidebar, loaded (cached), or None with the reason shown."""
    picked = st.session_state.get("picked_model")
    try:
        if isinstance(picked, OrthoscopeError):
            raise picked
        if picked is None:
            st.info("Pick a model in the sidebar.")
            return None
        spec, cfg, max_mb, display = picked
        with st.status(f"Loading {guard.literal(display or spec)} ...", expanded=False) as status:
            handle = _cached_load(spec, stamp(spec), cfg, max_mb, display)
            status.update(label=f"Loaded {guard.literal(handle.name)}", state="complete")
    except OrthoscopeError as exc:
        guard.error(exc)
        return None
    st.sidebar.caption(f"{guard.literal(handle.name)} · {handle.kind} · {handle.num_params:,} parameters · `{handle.fingerprint[:12]}`")
    for note in handle.notes:  # e.g. which of a folder's weight files was read
        st.caption(f"ⓘ {guard.literal(note)}")
    return handle
