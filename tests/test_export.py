"""Export: manifest, tuple outputs, the seed's call, tied weights, parity failures, atomic writes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import torchship
from tests.conftest import TS
from torchship import artifact
from torchship.formats import torchscript
from torchship.options import DEFAULT_FORMATS, DEFAULT_SEQ_LENGTHS


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_manifest_records_what_the_issue_asks(demo_artifact: Path) -> None:
    m = _manifest(demo_artifact)
    assert m["schema_version"] == artifact.SCHEMA_VERSION
    assert m["torch_version"] == torch.__version__
    assert m["torchship_version"] == torchship.__version__
    assert m["transformers_version"].startswith("5.")
    assert m["task"] == "feature-extraction"
    assert m["architecture"] == {
        "model_type": "bert", "class": "BertModel", "attn_implementation": "eager", "dense_layers": "real tokens only"
    }  # fmt: skip
    assert m["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["outputs"] == ["last_hidden_state", "pooler_output"]
    assert m["dtype"] == "float32"
    assert m["inference_only"] is True
    assert m["pooling"] == {
        "mode": "mean",
        "normalize": True,
        "include_prompt": True,
        "source": "sentence-transformers",
    }
    assert list(m["source"]["weights_sha256"]) == ["model.safetensors"]
    assert list(m["formats"]) == list(DEFAULT_FORMATS)  # the seed's model.pt, and ONNX
    entries = m["formats"]["torchscript"]
    assert [e["seq"] for e in entries] == list(DEFAULT_SEQ_LENGTHS)
    for e in entries:
        assert e["batch"] is None
        assert e["parity"]["passed"] is True
        assert set(e["parity"]["max_abs_diff"]) == {"last_hidden_state", "pooler_output"}
        assert max(e["parity"]["max_abs_diff"].values()) <= 1e-4
        batch, seq = e["parity"]["validated_shape"]
        assert batch != e["traced_batch"]
        assert seq < e["seq"], "validation must run at a length that was not traced"
    assert set(m["files"]) == {
        "config.json", "model.pt", "model.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"
    }  # fmt: skip
    for rel, digest in m["files"].items():
        assert artifact.sha256_file(demo_artifact / rel) == digest


def test_export_warnings_are_recorded_not_printed(tiny_bert_dir: Path, tmp_path: Path, capfd) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # the padded graph: Hugging Face's BERT emits a TracerWarning as it traces; the padding-free one emits none
        options = torchship.ExportOptions(formats=TS, seq_lengths=(8,), unpad=False)
        out = torchship.export(tiny_bert_dir, tmp_path / "a", options)
    assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning | DeprecationWarning)]
    captured = capfd.readouterr()
    assert "TracerWarning" not in captured.err
    assert "deprecated" not in captured.err
    recorded = _manifest(out)["export"]["warnings"]
    categories = {w["category"] for w in recorded}
    assert "DeprecationWarning" in categories  # torch.jit.trace_module's own notice
    assert "TracerWarning" in categories


def test_seed_call_works_on_the_saved_file(demo_artifact: Path) -> None:
    """torch.jit.load(path)(*dummy_input): positional tensors in manifest['inputs'] order, a tuple back."""
    m = _manifest(demo_artifact)
    module = torch.jit.load(str(demo_artifact / "model.pt"))
    seq = m["max_length"]
    ids = torch.randint(1000, 2000, (1, seq))
    ids[0, 0], ids[0, -1] = 101, 102
    out = module(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert isinstance(out, tuple)
    assert [tuple(t.shape) for t in out] == [(1, seq, 384), (1, 384)]
    for e in m["formats"]["torchscript"]:
        method = getattr(module, e["method"])
        x = ids[:, : e["seq"]]
        assert method(x, torch.ones_like(x), torch.zeros_like(x))[0].shape == (1, e["seq"], 384)


def test_buckets_share_one_copy_of_the_weights(demo_artifact: Path, demo_dir: Path) -> None:
    weights = (demo_dir / "model.safetensors").stat().st_size
    model_file = (demo_artifact / torchscript.FILE).stat().st_size
    assert model_file < 1.05 * weights, f"{model_file} bytes for 5 buckets vs {weights} bytes of weights"


def test_tied_weights_are_cloned(tiny_mlm_dir: Path, tiny_mlm_artifact: Path) -> None:
    from transformers import AutoModelForMaskedLM

    eager = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    assert eager.get_input_embeddings().weight is eager.get_output_embeddings().weight, "fixture must be tied"
    m = _manifest(tiny_mlm_artifact)
    assert m["task"] == "fill-mask"
    assert m["inference_only"] is True
    groups = sorted(sorted(g) for g in m["tied_weights"])
    assert groups == [
        ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"],
        ["cls.predictions.bias", "cls.predictions.decoder.bias"],
    ]
    predictor = torchship.load(tiny_mlm_artifact)
    ids = torch.tensor([[101, 2040, 2001, 103, 102, 0], [101, 2040, 103, 102, 0, 0]])
    mask = (ids != 0).long()
    got = predictor.run(input_ids=ids, attention_mask=mask)["logits"]
    with torch.inference_mode():
        want = eager(input_ids=ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max() < 1e-4


def test_untie_weights_gives_each_name_its_own_storage(tiny_mlm_dir: Path) -> None:
    from transformers import AutoModelForMaskedLM

    from torchship.wrap import untie_weights

    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    before = model.get_input_embeddings().weight.detach().clone()
    tied = untie_weights(model)
    assert ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"] in tied
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert torch.equal(model.get_output_embeddings().weight, before)


def test_parity_failure_names_every_output_and_leaves_nothing(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(torchship.ParityError) as info:
        torchship.export(tiny_bert_dir, out, torchship.ExportOptions(seq_lengths=(8, 16), atol=1e-15))
    message = str(info.value)
    assert "last_hidden_state: max diff" in message
    assert "> allowed 1e-15 (atol 1e-15)" in message
    assert set(info.value.failures) <= {f"seq {s}/{n}" for s in (8, 16) for n in ("last_hidden_state", "pooler_output")}
    assert info.value.failures
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "the temporary export directory must be removed"


def test_every_format_is_checked_on_the_same_cases_and_the_eager_model_runs_each_once(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity cases (rows cut to lengths just under each bucket, padding inside the batch) are the same for
    every format, so the eager reference is computed once per case, not once per format; the cases are still cut
    to the exact lengths asked, segment ids included."""
    from torchship import exporter, validate

    calls: list[tuple[int, ...]] = []
    real = exporter.eager_fn

    def counting(wrapper: object) -> validate.EagerFn:
        run = real(wrapper)  # type: ignore[arg-type]

        def counted(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            calls.append(tuple(inputs["input_ids"].shape))
            return run(inputs)

        return counted

    monkeypatch.setattr(exporter, "eager_fn", counting)
    out = torchship.export(tiny_bert_dir, tmp_path / "a", torchship.ExportOptions(seq_lengths=(8, 16, 32)))
    manifest = _manifest(out)
    assert set(manifest["formats"]) == {"torchscript", "onnx"}
    assert manifest["formats"]["onnx"][0]["parity"]["passed"]
    assert len(calls) == len(set(calls)) == 3, calls  # a batch per bucket, for both formats (and any fused graph)

    tokenizer = torchship.load(out).encoder.tokenizer
    lengths = [3, 4, 7, 12, 31, 64]
    encoded = validate.rows_at_lengths(tokenizer, lengths, seed=0)
    assert [len(ids) for ids in encoded.ids] == lengths
    assert all(1 in types for types, n in zip(encoded.type_ids, lengths, strict=True) if n >= 5)


def test_interrupted_export_leaves_nothing_loadable(tiny_bert_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torchscript.TorchScript, "export", boom)
    with pytest.raises(KeyboardInterrupt):
        torchship.export(tiny_bert_dir, tmp_path / "out", torchship.ExportOptions(seq_lengths=(8,)))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_refuses_without_flag(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    torchship.export(tiny_bert_dir, out, torchship.ExportOptions(formats=TS, seq_lengths=(8,)))
    with pytest.raises(torchship.ArtifactError, match="--overwrite"):
        torchship.export(tiny_bert_dir, out, torchship.ExportOptions(seq_lengths=(8,)))
    torchship.export(tiny_bert_dir, out, torchship.ExportOptions(seq_lengths=(8, 16), overwrite=True))
    assert [e["seq"] for e in _manifest(out)["formats"]["torchscript"]] == [8, 16]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_buckets_are_capped_by_max_length(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = torchship.export(
        tiny_bert_dir, tmp_path / "a", torchship.ExportOptions(formats=TS, seq_lengths=(8, 64), max_length=24)
    )
    assert [e["seq"] for e in _manifest(out)["formats"]["torchscript"]] == [8, 24]


def test_token_type_ids_only_where_the_model_uses_them(demo_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import save_tiny

    src = save_tiny(tmp_path / "one-segment", "BertModel", demo_dir, type_vocab_size=1)
    out = torchship.export(src, tmp_path / "a", torchship.ExportOptions(formats=TS, seq_lengths=(8,)))
    assert _manifest(out)["inputs"] == ["input_ids", "attention_mask"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "translation"}, "task 'translation' is not supported"),
        ({"formats": ("tflite",)}, "format 'tflite' is not supported"),
        ({"seq_lengths": ()}, "seq_lengths is empty"),
        ({"seq_lengths": (16, 16)}, "repeats a length"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"atol": 0.0}, "atol must be > 0"),
        ({"cache_dir": 3}, "cache_dir must be a path"),
    ],
)
def test_bad_options_are_rejected_where_written(options: dict, message: str) -> None:
    with pytest.raises(torchship.OptionsError, match=message):
        torchship.ExportOptions(**options)


def test_paths_may_be_strings_and_formats_a_comma_list(tmp_path: Path) -> None:
    options = torchship.ExportOptions(formats="torchscript, onnx", cache_dir=str(tmp_path), lengths_from=str(tmp_path))
    assert options.formats == ("torchscript", "onnx")
    assert options.cache_dir == tmp_path
    assert isinstance(options.lengths_from, Path)
    with pytest.raises(torchship.OptionsError, match="format 'tflite' is not supported"):
        torchship.ExportOptions(formats="onnx,tflite")


def test_options_are_keyword_only_and_reject_typos() -> None:
    with pytest.raises(TypeError):
        torchship.ExportOptions(atoll=1e-3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        torchship.ExportOptions("auto")  # type: ignore[misc]


def test_model_not_found_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(torchship.ModelNotFoundError, match="hf download someone/not-cached"):
        torchship.export("someone/not-cached", tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(torchship.ModelNotFoundError, match="no config.json"):
        torchship.export(tmp_path / "empty", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(torchship.UnsupportedModelError, match=r"'gpt2' is not supported; supported .*bert"):
        torchship.export(tmp_path / "gpt2", tmp_path / "out")
