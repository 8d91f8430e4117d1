"""Result cache with explicit keys (diagnostic, model fingerprint, parameters).

``st.cache_data`` cannot be used for the heavy results: it replays the Streamlit calls a
cached function makes, and our diagnostics report progress into a bar created outside the
function, which it refuses (CacheReplayClosureError). This cache is shared by all sessions of
the server, bounded, and never hashes tensors: the key is given, not derived.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Callable, TypeVar

import streamlit as st

T = TypeVar("T")
MAX_ENTRIES = 32


@st.cache_resource(show_spinner=False)
def _store() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def result_key(diagnostic: str, fingerprint: str, params: dict) -> str:
    return f"{diagnostic}|{fingerprint}|{json.dumps(params, sort_keys=True, default=str)}"


def cached(key: str, compute: Callable[[], T]) -> T:
    """Return the value stored under ``key``, computing and storing it on a miss."""
    store, lock = _store()
    with lock:
        if key in store:
            store.move_to_end(key)
            return store[key]
    value = compute()
    put_many({key: value})
    return value


def entries(prefix: str) -> dict:
    """The stored values whose keys start with ``prefix``."""
    store, lock = _store()
    with lock:
        return {k: v for k, v in store.items() if k.startswith(prefix)}


def put_many(values: dict) -> None:
    store, lock = _store()
    with lock:
        store.update(values)
        while len(store) > MAX_ENTRIES:
            store.popitem(last=False)
