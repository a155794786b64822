"""Convert a CTranslate2 Whisper model (faster-whisper's format) into an openai-whisper checkpoint.

The weights that ship in pip packages are CTranslate2 ``model.bin`` files; openai-whisper (the
GPU/PyTorch engine) wants ``{"dims", "model_state_dict"}``. Both come from the same original
weights, so the conversion is a renaming plus three undoings of CTranslate2's optimisations:
fused q/k/v (self-attention) and k/v (cross-attention) projections are split, quantized
weights are dequantized with their stored scales, and the output projection alias to the token
embedding is dropped (openai-whisper ties them itself).

``model.bin`` layout (ctranslate2/specs/model_spec.py ``_serialize``, binary version 6):
``uint32 version, str spec_name, uint32 revision, uint32 n``, then n times ``str name,
uint8 rank, uint32 dims[rank], uint8 dtype, uint32 nbytes, bytes``; then ``uint32 n_aliases``
and pairs of ``str alias, str target``. A ``str`` is ``uint16 length`` (with its NUL) + bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dhgq.errors import ConfigurationError, PermanentError
from dhgq.media.transcription.models import default_models_dir, resolve_ct2_model

SUPPORTED_BINARY_VERSIONS = (6,)
# Order of ctranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 has no numpy type.
_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


@dataclass
class Ct2Model:
    """A parsed model.bin: spec name and revision, variables (dequantized) and aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_ct2_model(model_bin: Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin into float32 arrays (int8/int16 dequantized, f16/bf16 widened)."""
    with model_bin.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        reader = _Reader(data)
        version = reader.unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise PermanentError(
                f"{model_bin}: CTranslate2 binary version {version} is not supported "
                f"(expected {SUPPORTED_BINARY_VERSIONS}); re-convert it with ctranslate2 >= 3",
                file=str(model_bin),
            )
        spec, revision = reader.string(), reader.unpack("I")
        raw = dict(reader.variable() for _ in range(reader.unpack("I")))
        aliases = dict((reader.string(), reader.string()) for _ in range(reader.unpack("I")))
    return Ct2Model(spec, revision, _dequantize(raw), aliases)


class _Reader:
    """Sequential little-endian reads over the mapped file."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("H")
        text = bytes(self.data[self.offset : self.offset + length - 1]).decode("utf-8")
        self.offset += length
        return text

    def variable(self) -> tuple[str, tuple[str, np.ndarray]]:
        name = self.string()
        shape = tuple(self.unpack("I") for _ in range(self.unpack("B")))
        dtype = _DTYPES[self.unpack("B")]
        nbytes = self.unpack("I")
        storage = "uint16" if dtype == "bfloat16" else dtype
        array = np.frombuffer(self.data, dtype=storage, count=nbytes // np.dtype(storage).itemsize, offset=self.offset)
        self.offset += nbytes
        return name, (dtype, array.reshape(shape).copy())


def _dequantize(raw: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """float32 values: ``q / scale`` for quantized weights (per output row for int8)."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, array) in raw.items():
        if name.endswith("_scale") or name.endswith("_zero"):
            continue
        if f"{name}_zero" in raw:
            raise PermanentError(f"{name}: AWQ/GPTQ-quantized weights (with zero points) are not supported")
        if dtype == "bfloat16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        scale = raw.get(f"{name}_scale")
        if scale is not None and dtype in ("int8", "int16"):
            s = scale[1].astype(np.float32)
            array = array.astype(np.float32) / (s.reshape(-1, *[1] * (array.ndim - 1)) if s.ndim else s)
        out[name] = array.astype(np.float32) if array.dtype.kind == "f" or scale is not None else array
    return out


# --- mapping to openai-whisper ---------------------------------------------------------------


def to_openai_state_dict(model: Ct2Model) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """openai-whisper's ``ModelDimensions`` fields and state dict for a parsed WhisperSpec."""
    if model.spec != "WhisperSpec":
        raise PermanentError(f"not a Whisper model: the CTranslate2 spec is {model.spec!r}")
    v = model.variables
    n_audio_layer = _count_layers(v, "encoder")
    n_text_layer = _count_layers(v, "decoder")
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(v["encoder/position_encodings/encodings"].shape[1]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(v["decoder/position_encodings/encodings"].shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    state: dict[str, np.ndarray] = {
        "encoder.positional_embedding": v["encoder/position_encodings/encodings"],
        "decoder.positional_embedding": v["decoder/position_encodings/encodings"],
        "decoder.token_embedding.weight": v["decoder/embeddings/weight"],
    }
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = v[f"encoder/{conv}/weight"]
        state[f"encoder.{conv}.bias"] = v[f"encoder/{conv}/bias"]
    _layer_norm(state, v, "encoder.ln_post", "encoder/layer_norm")
    _layer_norm(state, v, "decoder.ln", "decoder/layer_norm")
    for i in range(n_audio_layer):
        _block(state, v, f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    for i in range(n_text_layer):
        _block(state, v, f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    return dims, state


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for name in v if (m := pattern.match(name)))


def _layer_norm(state: dict[str, np.ndarray], v: dict[str, np.ndarray], dst: str, src: str) -> None:
    state[f"{dst}.weight"] = v[f"{src}/gamma"]
    state[f"{dst}.bias"] = v[f"{src}/beta"]


def _linear(state: dict[str, np.ndarray], dst: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    state[f"{dst}.weight"] = weight
    if bias is not None:
        state[f"{dst}.bias"] = bias


def _block(state: dict[str, np.ndarray], v: dict[str, np.ndarray], dst: str, src: str, *, cross: bool) -> None:
    """One residual block: self-attention (fused qkv), cross-attention (q + fused kv), MLP."""
    _layer_norm(state, v, f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
    _attention(
        state,
        dst + ".attn",
        [v[f"{src}/self_attention/linear_0/weight"]],
        [v[f"{src}/self_attention/linear_0/bias"]],
    )
    _linear(
        state,
        f"{dst}.attn.out",
        v[f"{src}/self_attention/linear_1/weight"],
        v[f"{src}/self_attention/linear_1/bias"],
    )
    if cross:
        _layer_norm(state, v, f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        weights = [v[f"{src}/attention/linear_0/weight"], v[f"{src}/attention/linear_1/weight"]]
        biases = [v[f"{src}/attention/linear_0/bias"], v[f"{src}/attention/linear_1/bias"]]
        _attention(state, dst + ".cross_attn", weights, biases)
        _linear(
            state,
            f"{dst}.cross_attn.out",
            v[f"{src}/attention/linear_2/weight"],
            v[f"{src}/attention/linear_2/bias"],
        )
    _layer_norm(state, v, f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    _linear(state, f"{dst}.mlp.0", v[f"{src}/ffn/linear_0/weight"], v[f"{src}/ffn/linear_0/bias"])
    _linear(state, f"{dst}.mlp.2", v[f"{src}/ffn/linear_1/weight"], v[f"{src}/ffn/linear_1/bias"])


def _attention(state: dict[str, np.ndarray], dst: str, weights: list[np.ndarray], biases: list[np.ndarray]) -> None:
    """Split the fused projections back into query/key/value; whisper's key has no bias."""
    weight = np.concatenate(weights, axis=0)
    bias = np.concatenate(biases, axis=0)
    wq, wk, wv = np.split(weight, 3, axis=0)
    bq, _, bv = np.split(bias, 3, axis=0)  # CTranslate2 stores zeros for the key bias
    _linear(state, f"{dst}.query", wq, bq)
    _linear(state, f"{dst}.key", wk, None)
    _linear(state, f"{dst}.value", wv, bv)


def alignment_heads_dump(heads: list[list[int]], n_layer: int, n_head: int) -> bytes:
    """``[[layer, head], ...]`` as openai-whisper's base85(gzip(bool mask)) for set_alignment_heads."""
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes()))


# --- entry points ----------------------------------------------------------------------------


def convert_ct2_to_openai_whisper(ct2_dir: Path, out_pt: Path) -> Path:
    """Write an openai-whisper checkpoint (``whisper.load_model(out_pt)`` loads it) for a CT2 model.

    Besides ``dims`` and ``model_state_dict`` the checkpoint keeps ``alignment_heads`` (the
    ``set_alignment_heads`` dump from config.json), which ``load_model`` ignores for local files.
    """
    import torch

    model_bin = Path(ct2_dir) / "model.bin"
    if not model_bin.is_file():
        raise ConfigurationError(f"{ct2_dir} has no model.bin: not a CTranslate2 model directory")
    dims, state = to_openai_state_dict(read_ct2_model(model_bin))
    checkpoint: dict[str, Any] = {
        "dims": dims,
        "model_state_dict": {name: torch.from_numpy(np.ascontiguousarray(a)).half() for name, a in state.items()},
    }
    config = Path(ct2_dir) / "config.json"
    heads = json.loads(config.read_text()).get("alignment_heads") if config.is_file() else None
    if heads:
        checkpoint["alignment_heads"] = alignment_heads_dump(heads, dims["n_text_layer"], dims["n_text_head"])
    out_pt.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=out_pt.parent, prefix=f".{out_pt.name}.")
    os.close(handle)
    try:
        torch.save(checkpoint, temp)
        os.replace(temp, out_pt)
    finally:
        Path(temp).unlink(missing_ok=True)
    return out_pt


def convert_named_model(name: str, out_dir: Path, *, models_dir: Path | None = None) -> Path:
    """Convert a named (or directory) CT2 model to ``out_dir/<name>.pt``, for ``dhgq models convert``."""
    ct2_dir = resolve_ct2_model(name, models_dir)
    label = ct2_dir.name if Path(name).expanduser().is_dir() else name
    return convert_ct2_to_openai_whisper(ct2_dir, Path(out_dir) / f"{label}.pt")


def openai_checkpoint(name: str, models_dir: Path | None = None) -> Path:
    """The converted checkpoint for a model, converting once into the models cache."""
    if name.endswith(".pt") and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    ct2_dir = resolve_ct2_model(name, models_dir)
    cache = (models_dir or default_models_dir()) / "cache" / "openai-whisper"
    digest = hashlib.sha1(str(ct2_dir.resolve()).encode()).hexdigest()[:10]
    label = f"{ct2_dir.name}-{digest}" if Path(name).expanduser().is_dir() else name
    target = cache / f"{label}.pt"
    source = ct2_dir / "model.bin"
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    return convert_ct2_to_openai_whisper(ct2_dir, target)
