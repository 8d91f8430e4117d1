"""Typed, bounded models of the JSON files a model brings: config.json, the shard index, the
safetensors header and the sentence-transformers module list.

Every such file is first parsed by :mod:`models.limits` (regular file, bounded size, nesting,
integers and strings), then validated here before any other code reads a field of it. The fields
Orthoscope and transformers use to size and name things (``architectures``, ``model_type``, layer,
head and width counts, ``vocab_size`` ...) get a type and bounds; everything else in a config is
kept as it is (real configs carry dozens of fields nobody here reads).

Why pydantic v2 and not jsonschema: pydantic turns the file into typed Python objects in the same
step as it checks it, so the code after the boundary reads ``entry.shape`` knowing it is a list of
non-negative ints rather than re-checking a dict; bounds (``ge``/``le``/``max_length``) sit beside
the type they bound, in one place; strict mode refuses ``"12"`` or ``true`` where an integer is
meant instead of coercing them; its error list names the field (``num_attention_heads``), the
rule and the offending value, which become the one line a user reads; and it validates tens of
thousands of safetensors entries in milliseconds (its core is compiled). jsonschema would check
the same rules on plain dicts and leave every reader to trust them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from typing_extensions import TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, TypeAdapter, ValidationError

from models.errors import OrthoscopeError
from models.limits import (
    MAX_CONFIG_HEADS, MAX_CONFIG_LAYERS, MAX_CONFIG_NAME_CHARS, MAX_CONFIG_POSITIONS, MAX_CONFIG_VOCAB,
    MAX_CONFIG_WIDTH, MAX_TENSOR_NDIM, MAX_TENSORS, read_json,
)

Name = Annotated[str, StringConstraints(max_length=MAX_CONFIG_NAME_CHARS)]
Layers = Annotated[int, Field(strict=True, ge=0, le=MAX_CONFIG_LAYERS)]
Heads = Annotated[int, Field(strict=True, ge=1, le=MAX_CONFIG_HEADS)]
Width = Annotated[int, Field(strict=True, ge=1, le=MAX_CONFIG_WIDTH)]
Vocab = Annotated[int, Field(strict=True, ge=1, le=MAX_CONFIG_VOCAB)]
Positions = Annotated[int, Field(strict=True, ge=1, le=MAX_CONFIG_POSITIONS)]
Count = Annotated[int, Field(strict=True, ge=0)]


class ModelConfig(BaseModel):
    """The fields of a transformers config.json that Orthoscope or the module's size depend on."""

    model_config = ConfigDict(extra="allow", strict=True, protected_namespaces=())

    architectures: Optional[list[Name]] = Field(None, max_length=64)
    model_type: Optional[Name] = None
    num_hidden_layers: Optional[Layers] = None
    n_layer: Optional[Layers] = None
    num_layers: Optional[Layers] = None
    num_attention_heads: Optional[Heads] = None
    n_head: Optional[Heads] = None
    num_key_value_heads: Optional[Heads] = None
    hidden_size: Optional[Width] = None
    n_embd: Optional[Width] = None
    d_model: Optional[Width] = None
    intermediate_size: Optional[Width] = None
    n_inner: Optional[Width] = None
    head_dim: Optional[Width] = None
    vocab_size: Optional[Vocab] = None
    type_vocab_size: Optional[Annotated[int, Field(strict=True, ge=0, le=MAX_CONFIG_VOCAB)]] = None
    max_position_embeddings: Optional[Positions] = None
    n_positions: Optional[Positions] = None
    tie_word_embeddings: Optional[StrictBool] = None
    # Dual encoders and multimodal models keep their towers' sizes in sub-configs.
    text_config: Optional["ModelConfig"] = None
    vision_config: Optional["ModelConfig"] = None

    def layers(self) -> int | None:
        return next((n for n in (self.num_hidden_layers, self.n_layer, self.num_layers) if n is not None), None)

    def width(self) -> int | None:
        return next((n for n in (self.hidden_size, self.n_embd, self.d_model) if n is not None), None)


class TensorEntry(TypedDict):
    """One tensor of a safetensors header (a typed dict: a header may hold tens of thousands of them, and
    pydantic validates typed dicts several times faster than models)."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)  # type: ignore[misc]

    dtype: Annotated[str, StringConstraints(max_length=32)]
    shape: Annotated[list[Count], Field(max_length=MAX_TENSOR_NDIM)]
    data_offsets: Annotated[list[Count], Field(min_length=2, max_length=2)]


class SentenceModule(BaseModel):
    """One entry of a sentence-transformers modules.json."""

    model_config = ConfigDict(extra="allow", strict=True)

    path: Annotated[str, StringConstraints(max_length=MAX_CONFIG_NAME_CHARS)] = ""
    type: Annotated[str, StringConstraints(max_length=MAX_CONFIG_NAME_CHARS)] = ""


_ENTRIES = TypeAdapter(dict[str, TensorEntry])
_METADATA = TypeAdapter(dict[str, str])
_WEIGHT_MAP = TypeAdapter(dict[str, Annotated[str, StringConstraints(max_length=MAX_CONFIG_NAME_CHARS)]])
_MODULES = TypeAdapter(list[SentenceModule])


def describe(exc: ValidationError, where: str, prefix: tuple = ()) -> str:
    """Pydantic's first error as one line: the field, the rule, the value found."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in (*prefix, *first["loc"])) or "the top level"
    value = repr(first.get("input"))
    value = value if len(value) <= 60 else value[:57] + "..."
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: field {loc!r}: {first['msg']} (found {value}){more}."


def validate_config(data: Any, where: str = "config.json") -> ModelConfig:
    """A parsed config.json as a typed config, or an OrthoscopeError naming the first bad field."""
    if not isinstance(data, dict):
        raise OrthoscopeError(f"{where} is not a JSON object.")
    if "auto_map" in data:
        raise OrthoscopeError(
            f"{where}: config.json has 'auto_map', which asks to run code shipped with the model. "
            "Orthoscope never runs model code; remove auto_map or use a standard architecture."
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise OrthoscopeError(describe(exc, where)) from None


def read_config(path: Path, where: str | None = None) -> tuple[dict, ModelConfig]:
    """config.json read within bounds and validated: the raw dict (what transformers gets) and its typed view."""
    where = where or Path(path).name
    data = read_json(path, where, unique_keys=True)
    return data, validate_config(data, where)


def read_weight_map(index: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map: tensor name -> shard file name, each a plain name."""
    data = read_json(index, index.name, unique_keys=True)
    if not isinstance(data, dict) or "weight_map" not in data:
        raise OrthoscopeError(f"{index.name} is not a valid shard index: it has no 'weight_map' object.")
    try:
        weight_map = _WEIGHT_MAP.validate_python(data["weight_map"], strict=True)
    except ValidationError as exc:
        raise OrthoscopeError(describe(exc, f"{index.name} is not a valid shard index", ("weight_map",))) from None
    if len(weight_map) > MAX_TENSORS:
        raise OrthoscopeError(f"{index.name} lists {len(weight_map):,} tensors (at most {MAX_TENSORS:,} are read).")
    for shard in set(weight_map.values()):
        if not plain_file_name(shard):
            raise OrthoscopeError(f"{index.name} names a shard outside its folder: {shard[:80]!r}; shards must be "
                                  "plain file names beside the index.")
    return weight_map


def plain_file_name(name: str) -> bool:
    """A name that stays inside its folder: no separators, no '..', no control characters."""
    return (bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name
            and not any(ord(c) < 32 or c == "\x7f" for c in name))


def parse_safetensors_entries(header: Any, where: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """A parsed safetensors header as typed entries and its ``__metadata__`` (str -> str)."""
    if not isinstance(header, dict):
        raise OrthoscopeError(f"{where}: the safetensors header is not a JSON object.")
    metadata: dict[str, str] = {}
    if "__metadata__" in header:
        try:
            metadata = _METADATA.validate_python(header["__metadata__"], strict=True)
        except ValidationError as exc:
            raise OrthoscopeError(describe(exc, f"{where}: the safetensors header", ("__metadata__",))) from None
    raw = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(raw) > MAX_TENSORS:
        raise OrthoscopeError(f"{where} declares {len(raw):,} tensors; at most {MAX_TENSORS:,} are read.")
    try:
        entries = _ENTRIES.validate_python(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        raise OrthoscopeError(
            f"{where}: tensor {name[:80]!r} has a malformed header entry "
            f"({'.'.join(str(p) for p in first['loc'][1:]) or 'entry'}: {first['msg']})."
        ) from None
    return entries, metadata


def read_modules(path: Path) -> list[SentenceModule]:
    """A sentence-transformers modules.json: a list of {path, type}, each path inside the folder."""
    data = read_json(path, path.name)
    try:
        modules = _MODULES.validate_python(data, strict=True)
    except ValidationError as exc:
        raise OrthoscopeError(describe(exc, path.name)) from None
    for m in modules:
        if m.path and (m.path.startswith(("/", "\\")) or ".." in m.path.replace("\\", "/").split("/")):
            raise OrthoscopeError(f"{path.name} names a module outside its folder: {m.path[:80]!r}.")
    return modules
