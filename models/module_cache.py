"""On-disk cache of what transformers rebuilds slowly from a GGUF file: the dequantised module and the tokenizer.

transformers converts a GGUF on every load (SmolLM2-135M: about 30 s for the module and 12 s for the tokenizer
on two cores); the same float32 weights read back from safetensors take a few seconds. An entry is a folder
``<root>/gguf-modules/<sha256 of the GGUF>/`` (``gguf-tokenizers/`` for tokenizers). It is written under a
temporary name and renamed into place, so a crash never leaves a half entry under the real name, and it records
the transformers version that converted it: another version may convert to other numbers, so its entries are
rebuilt rather than trusted.

The root is ``$ORTHOSCOPE_CACHE_DIR`` (empty or ``off``: no cache), else ``$XDG_CACHE_HOME/orthoscope``, else
``~/.cache/orthoscope``. Any failure to read or write the cache falls back to the GGUF conversion.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch

ENV = "ORTHOSCOPE_CACHE_DIR"
MANIFEST = "orthoscope-cache.json"
MODULES = "gguf-modules"
TOKENIZERS = "gguf-tokenizers"
_TMP_PREFIX = ".tmp-"
# A temporary folder this old belongs to a writer that died: a live one finishes SmolLM2 in seconds.
_STALE_TMP_S = 3600.0

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_root() -> Path | None:
    """The cache's root folder, or None when the user turned the cache off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in {"", "off"} else Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "orthoscope"


def gguf_module(path: Path, fingerprint: str) -> torch.nn.Module:
    """The causal LM in a GGUF file, dequantised to float32."""

    def build():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
        )

    return _cached(MODULES, fingerprint, build, _save_module, _load_module)


def gguf_tokenizer(path: Path, fingerprint: str):
    """The tokenizer in a GGUF file's metadata."""

    def build():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)

    return _cached(TOKENIZERS, fingerprint, build, lambda tok, folder: tok.save_pretrained(folder), _load_tokenizer)


def _manifest() -> dict:
    import transformers

    return {"format": 1, "transformers": transformers.__version__}


def _cached(section: str, fingerprint: str, build: Callable[[], T], save: Callable[[T, Path], object],
            load: Callable[[Path], T]) -> T:
    root = cache_root()
    if root is None:
        return build()
    folder = root / section / fingerprint
    if _current(folder):
        try:
            return load(folder)
        except Exception as exc:  # whatever damaged the entry, the GGUF still gives the right answer
            log.warning("ignoring the damaged cache entry %s (%s: %s); rebuilding it", folder, type(exc).__name__, exc)
    obj = build()
    _store(obj, folder, save)
    return obj


def _current(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")) == _manifest()
    except (OSError, ValueError):
        return False


def _store(obj, folder: Path, save: Callable[[object, Path], object]) -> None:
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmps(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{folder.name}-", dir=folder.parent))
        save(obj, tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest()), encoding="utf-8")
        if folder.exists():  # stale or damaged: move it aside first, as a rename cannot replace a full folder
            old = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=folder.parent))
            os.replace(folder, old / folder.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
        tmp = None
    except Exception as exc:  # the cache only saves time; never fail a load over it
        log.warning("could not cache %s (%s: %s); the next start converts the GGUF again", folder,
                    type(exc).__name__, exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmps(parent: Path) -> None:
    now = time.time()
    for entry in parent.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _save_module(model, folder: Path) -> None:
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    # The GGUF quantizer's settings would send the reload through the GGUF loader again; the weights are plain floats.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    # Tied weights (SmolLM2's lm_head is its embedding) share storage, which safetensors refuses; from_pretrained
    # ties them again from the config.
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _load_module(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, trust_remote_code=False, output_loading_info=True
    )
    # A tensor missing here would be left randomly initialised, silently.
    if problems := {k: v for k, v in info.items() if v and k in {"missing_keys", "unexpected_keys", "mismatched_keys"}}:
        raise ValueError(f"the cached weights do not fit the module: {problems}")
    return model


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
