"""``torchship triton``: a model repository that a real Triton Inference Server loads and serves.

The server is the ``tritonserver`` binary from the ``nvidia-pytriton`` wheel (CPU, Python backend), started on
127.0.0.1 with the generated repository; clients are ``tritonclient``'s HTTP and gRPC clients. The native
``pytorch_libtorch`` and ``torch_aoti`` backends are not on PyPI: their configs are parsed with Triton's own
``ModelConfig`` schema and checked against the manifest, ``torch.jit.load`` and ``aoti_load_package``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchship
from tests import triton_server
from tests.conftest import TS, corpus_texts, free_port, save_tiny
from tests.test_architectures import _save as save_cell
from tests.test_hf_inference import HEADS
from tests.test_rerank_sparse import _splade
from torchship import artifact
from torchship.cli import main
from torchship.triton import TritonOptions, pbtxt, serialize_bytes, write_repository
from torchship.triton_model import TextModel, TextRequest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
needs_server = pytest.mark.skipif(triton_server.dist_dir() is None, reason="nvidia-pytriton is not installed")

TEXTS = corpus_texts()[:24]
QUESTIONS = ["who was jim henson?", "where were they filmed?", "what is it?"]
CONTEXTS = [
    "Jim Henson was a puppeteer who created the Muppets.",
    "The muppets were filmed in london studios for many years.",
    "It is a small random model with a real tokenizer.",
]
MASKED = ["paris is the [MASK] of france.", "the [MASK] sat on the mat.", "a [MASK] day"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path, demo_artifact: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-art")
    out = {"feature-extraction": demo_artifact}
    for task, (head, config) in HEADS.items():
        if task == "text-classification":  # the architecture matrix's BERT cell: its compiled package is reused
            checkpoint = save_cell(root / task, "bert", task, demo_dir)
            formats = ("torchscript", "aoti", "openvino")
            options = torchship.ExportOptions(task=task, seq_lengths=(8, 32), formats=formats)
        else:
            checkpoint = save_tiny(root / task, head, demo_dir, **config)
            options = torchship.ExportOptions(task=task, seq_lengths=(16, 64), formats=TS, progress=False)
        out[task] = torchship.export(checkpoint, root / f"{task}-art", options)
    mlm = save_tiny(root / "mlm", "BertForMaskedLM", demo_dir)
    out["fill-mask"] = torchship.export(
        mlm, root / "mlm-art", torchship.ExportOptions(formats=TS, seq_lengths=(16, 64))
    )
    splade = _splade(root / "splade", demo_dir, "max")
    options = torchship.ExportOptions(formats=TS, task="sparse-embedding", seq_lengths=(16, 64), progress=False)
    out["sparse-embedding"] = torchship.export(splade, root / "splade-art", options)
    return out


def _name(task: str) -> str:
    return task.replace("-", "_")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    for task, path in artifacts.items():
        write_repository(path, out, TritonOptions(name=_name(task), threads=1))
    return out


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton_server.Server]:
    if triton_server.dist_dir() is None:
        pytest.skip("nvidia-pytriton is not installed")
    # the native backends are not in the wheel: serve the repository without those two models
    served = triton_server.text_models_only(repo, tmp_path_factory.mktemp("served") / "models")
    server = triton_server.start(served, tmp_path_factory.mktemp("server"), (free_port(), free_port(), free_port()))
    yield server
    server.stop()


def _config(path: Path) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _close(got: Any, want: Any, atol: float = 1e-4) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list | tuple):
        return isinstance(got, list) and len(got) == len(want) and all(map(_close, got, want))
    if isinstance(want, float):
        return abs(got - want) <= atol
    return bool(got == want)


# ---- the repository, without a server ---------------------------------------------------------------------------


def test_every_config_parses_as_tritons_model_config(repo: Path, artifacts: dict[str, Path]) -> None:
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted(
        [_name(t) for t in artifacts]
        + [f"{_name(t)}_torchscript" for t in artifacts]
        + ["text_classification_aoti", "text_classification_openvino"]
    )
    for model in repo.iterdir():
        config = _config(model / "config.pbtxt")
        assert config.name == model.name
        assert (model / "README.md").read_text().startswith(f"# {model.name}\n")
        assert "Needs Triton" in (model / "README.md").read_text()


def test_text_in_config_is_typed_for_its_task(repo: Path, artifacts: dict[str, Path]) -> None:
    from torchship.tasks import get

    for task, path in artifacts.items():
        config = _config(repo / _name(task) / "config.pbtxt")
        assert config.backend == "python"
        assert config.max_batch_size == 64
        assert config.HasField("dynamic_batching")
        inputs = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in config.input}
        if task == "question-answering":
            assert inputs == {"question": ("TYPE_STRING", [1], False), "context": ("TYPE_STRING", [1], False)}
        elif get(task).takes_pairs:
            assert inputs == {"text": ("TYPE_STRING", [1], False), "text_pair": ("TYPE_STRING", [1], True)}
        else:
            assert inputs == {"text": ("TYPE_STRING", [1], False)}
        (output,) = config.output
        if task == "feature-extraction":
            assert (output.name, model_config_pb2.DataType.Name(output.data_type), list(output.dims)) == (
                "embedding", "TYPE_FP32", [384]
            )  # fmt: skip
        else:
            assert (output.name, model_config_pb2.DataType.Name(output.data_type)) == ("result", "TYPE_STRING")
        # warm-up: one request per bucket, each input from a file of Triton's BYTES serialization
        buckets = artifact.read_manifest(path).buckets
        assert [w.name for w in config.model_warmup] == [f"bucket_{s}" for s in buckets]
        for w in config.model_warmup:
            for spec in w.inputs.values():
                data = (repo / _name(task) / "warmup" / spec.input_data_file).read_bytes()
                n = int.from_bytes(data[:4], "little")
                assert len(data) == 4 + n
                assert data[4:].decode()


def test_torchscript_config_agrees_with_manifest_and_torch_jit_load(repo: Path, artifacts: dict[str, Path]) -> None:
    for task, path in artifacts.items():
        manifest = artifact.read_manifest(path)
        model = repo / f"{_name(task)}_torchscript"
        config = _config(model / "config.pbtxt")
        assert config.platform == "pytorch_libtorch"
        assert (model / "1" / "model.pt").read_bytes() == (path / "model.pt").read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(model / "1" / "model.pt"))
        # Triton binds inputs by forward()'s argument names (its FORWARD_ARGUMENT convention)
        arguments = [a.name for a in module.forward.schema.arguments[1:]]
        assert [i.name for i in config.input] == manifest.inputs == arguments
        seq = manifest.buckets[-1]
        for i in config.input:
            assert (model_config_pb2.DataType.Name(i.data_type), list(i.dims)) == ("TYPE_INT64", [seq])
        inputs = [torch.ones(3, seq, dtype=torch.long) for _ in arguments]
        with torch.no_grad():
            outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert [o.name for o in config.output] == [f"{n}__{k}" for k, n in enumerate(manifest.outputs)]
        for o, tensor in zip(config.output, outputs, strict=True):
            assert model_config_pb2.DataType.Name(o.data_type) == "TYPE_FP32"
            assert tensor.dtype == torch.float32
            assert [3, *o.dims] == list(tensor.shape)  # max_batch_size > 0: dims leave out the batch axis


def test_aoti_config_agrees_with_manifest_and_the_package(repo: Path, artifacts: dict[str, Path]) -> None:
    path = artifacts["text-classification"]
    manifest = artifact.read_manifest(path)
    model = repo / "text_classification_aoti"
    config = _config(model / "config.pbtxt")
    assert config.platform == "torch_aoti"
    assert config.max_batch_size == 0
    assert [i.name for i in config.input] == [f"INPUT__{k}" for k in range(len(manifest.inputs))]
    assert all(list(i.dims) == [-1, -1] for i in config.input)
    runner = torch._inductor.aoti_load_package(str(model / "1" / "model.pt2"))
    outputs = runner(*[torch.ones(2, 9, dtype=torch.long) for _ in manifest.inputs])
    assert [o.name for o in config.output] == [f"OUTPUT__{k}" for k in range(len(manifest.outputs))]
    for o, tensor in zip(config.output, outputs, strict=True):
        assert len(o.dims) == tensor.dim()
        assert all(d in (-1, s) for d, s in zip(o.dims, tensor.shape, strict=True))
    assert "INPUT__0 = input_ids" in (model / "config.pbtxt").read_text()


def test_openvino_config_agrees_with_manifest_and_the_ir(repo: Path, artifacts: dict[str, Path]) -> None:
    """Triton's OpenVINO backend binds by the IR's tensor names: the config's names, types and dims are the IR's,
    checked by compiling the copied IR with OpenVINO and running it at a shape it was never probed at."""
    import openvino as ov

    manifest = artifact.read_manifest(artifacts["text-classification"])
    model = repo / "text_classification_openvino"
    config = _config(model / "config.pbtxt")
    assert config.backend == "openvino"
    assert config.max_batch_size == 0
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.bin", "model.xml"]
    assert [i.name for i in config.input] == manifest.inputs
    assert all((model_config_pb2.DataType.Name(i.data_type), list(i.dims)) == ("TYPE_INT64", [-1, -1])
               for i in config.input)  # fmt: skip
    compiled = ov.Core().compile_model(str(model / "1" / "model.xml"), "CPU")
    assert sorted(i.get_any_name() for i in compiled.inputs) == sorted(manifest.inputs)
    results = compiled.create_infer_request().infer({n: np.ones((2, 9), dtype=np.int64) for n in manifest.inputs})
    assert [o.name for o in config.output] == manifest.outputs
    for o in config.output:
        got = np.asarray(results[compiled.output(o.name)])
        assert model_config_pb2.DataType.Name(o.data_type) == "TYPE_FP32"
        assert got.dtype == np.float32
        assert len(o.dims) == got.ndim
        assert all(d in (-1, n) for d, n in zip(o.dims, got.shape, strict=True))
    params = {p: config.parameters[p].string_value for p in config.parameters}
    assert params["PERFORMANCE_HINT"] == "LATENCY"
    assert params["INFERENCE_NUM_THREADS"] == "1"
    # float32 stated: the plugin's default is bf16 where the CPU has it (AMX), and an IR cannot carry the hint
    assert params["INFERENCE_PRECISION_HINT"] == "f32"


def test_pbtxt_escapes_and_nests() -> None:
    from google.protobuf import text_format

    from torchship.triton import Enum, Msg

    text = pbtxt(
        Msg(
            [
                ("name", 'a"b\\c'),
                ("max_batch_size", 2),
                (
                    "input",
                    [Msg([("name", "x"), ("dims", [-1, 3]), ("data_type", Enum("TYPE_FP32")), ("optional", True)])],
                ),
                ("dynamic_batching", Msg([("max_queue_delay_microseconds", 5)])),
            ]
        )  # fmt: skip
    )
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == 'a"b\\c'
    assert list(config.input[0].dims) == [-1, 3]
    assert config.input[0].optional
    assert config.dynamic_batching.max_queue_delay_microseconds == 5
    assert serialize_bytes([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_text_model_checks_each_request_alone(artifacts: dict[str, Path]) -> None:
    """Without Triton: a bad request gets its own error, the good ones in the same batch still run."""
    p = torchship.load(artifacts["text-classification"], truncation="error")
    model = TextModel(p)
    col = np.array([[b"good text"], [b"another"]], dtype=object)
    out = model.infer(
        [
            TextRequest({"text": col}),
            TextRequest({"text": np.array([[b""]], dtype=object)}),
            TextRequest({"text": col}, {"top_k": 2}),
            TextRequest({"text": col}, {"bogus": 1}),
            TextRequest({"txt": col}),
            TextRequest({"text": np.array([[b"\xff"]], dtype=object)}),
            TextRequest({"text": np.array([[b"word " * 200]], dtype=object)}),
            TextRequest({"text": np.array([[b"word " * 200]], dtype=object)}, {"truncate": True}),
        ]
    )
    want = p(["good text", "another"])
    assert [json.loads(r) for r in out[0]["result"][:, 0]] == [json.loads(json.dumps(w)) for w in want]
    assert "empty" in str(out[1])
    assert len(json.loads(out[2]["result"][0, 0])) == 2
    assert "unknown option(s) ['bogus']" in str(out[3])
    assert "truncate" in str(out[3])
    assert "input 'text' is missing" in str(out[4])
    assert "unknown" not in str(out[4])
    assert "not UTF-8" in str(out[5])
    assert "truncate" in str(out[6])
    assert "exceed the longest" in str(out[6])
    assert isinstance(out[7], dict)


def test_cli_writes_and_refuses_to_replace(tmp_path: Path, tiny_bert_artifact: Path, capsys) -> None:
    repo = tmp_path / "models"
    assert main(["triton", str(tiny_bert_artifact), str(repo), "--name", "bert"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in repo.iterdir()) == ["bert", "bert_torchscript"]
    before = (repo / "bert" / "config.pbtxt").read_text()
    assert main(["triton", str(tiny_bert_artifact), str(repo), "--name", "bert"]) == 1
    err = capsys.readouterr().err
    assert "already exist" in err
    assert "--overwrite" in err
    assert (repo / "bert" / "config.pbtxt").read_text() == before
    assert main(["triton", str(tiny_bert_artifact), str(repo), "--name", "bert", "--overwrite", "--truncate"]) == 0
    assert 'string_value: "true"' in (repo / "bert" / "config.pbtxt").read_text()
    assert main(["triton", str(tiny_bert_artifact), str(repo), "--name", "a/b"]) == 1
    assert "model name 'a/b' is invalid" in capsys.readouterr().err
    assert not list(repo.glob(".*tmp*"))  # nothing half-written left behind


# ---- a real Triton server ---------------------------------------------------------------------------------------


def _bytes(texts: list[str]) -> np.ndarray:
    return np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1)


def _infer(client: Any, module: Any, model: str, inputs: dict[str, list[str]], params: dict | None = None) -> Any:
    tensors = []
    for name, texts in inputs.items():
        t = module.InferInput(name, [len(texts), 1], "BYTES")
        t.set_data_from_numpy(_bytes(texts))
        tensors.append(t)
    return client.infer(model, tensors, parameters=params)


@needs_server
def test_server_and_every_model_are_ready(server: triton_server.Server, artifacts: dict[str, Path]) -> None:
    """Ready means loaded, and Triton runs model_warmup during the load (a bad warm-up sample fails the load:
    seen while building this); the warm-up samples themselves are checked in the config test above."""
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_server_live()
    assert client.is_server_ready()
    for task in artifacts:
        assert client.is_model_ready(_name(task))
    metadata = client.get_model_metadata(_name("feature-extraction"))
    assert [i["name"] for i in metadata["inputs"]] == ["text", "text_pair"]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embeddings_match_the_predictor(server: triton_server.Server, demo_artifact: Path, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    texts = corpus_texts()[:64]
    result = _infer(client, module, "feature_extraction", {"text": texts}, {"truncate": True})
    got = result.as_numpy("embedding")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torchship.load(demo_artifact)(texts)
    assert got.shape == want.shape == (64, 384)
    assert got.dtype == np.float32
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_task_matches_the_predictor(
    server: triton_server.Server, artifacts: dict[str, Path], protocol: str
) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    cases: dict[str, tuple[dict[str, list[str]], Any]] = {
        "text-classification": (
            {"text": TEXTS[:3], "text_pair": ["a", "b", "c"]},
            lambda p: p(list(zip(TEXTS[:3], ["a", "b", "c"], strict=True))),
        ),
        "token-classification": ({"text": TEXTS[:6]}, lambda p: p(TEXTS[:6])),
        "question-answering": (
            {"question": QUESTIONS, "context": CONTEXTS},
            lambda p: p(question=QUESTIONS, context=CONTEXTS),
        ),
        "fill-mask": ({"text": MASKED}, lambda p: p(MASKED)),
        "sparse-embedding": ({"text": TEXTS[:6]}, lambda p: p(TEXTS[:6])),
    }
    for task, (inputs, call) in cases.items():
        result = _infer(client, module, _name(task), inputs, {"truncate": True})
        got = [json.loads(row[0]) for row in result.as_numpy("result")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = torchship.load(artifacts[task])
            want = json.loads(json.dumps([p.task_def.to_json(r) for r in call(p)]))
        assert _close(got, want), (task, got[:1], want[:1])


@needs_server
def test_concurrent_requests_are_batched_and_each_gets_its_own(server: triton_server.Server) -> None:
    client = httpclient.InferenceServerClient(server.http, concurrency=16)
    texts = corpus_texts()[:48]
    before = client.get_inference_statistics("feature_extraction")["model_stats"][0]
    pending = []
    for t in texts:  # tritonclient.http's async_infer: gevent greenlets, 16 requests in flight
        i = httpclient.InferInput("text", [1, 1], "BYTES")
        i.set_data_from_numpy(_bytes([t]))
        pending.append(client.async_infer("feature_extraction", [i], parameters={"truncate": True}))
    results = [r.get_result() for r in pending]
    # Triton counts a request when its backend releases it, which can come after the response reached the client
    deadline = time.monotonic() + 10
    while True:
        after = client.get_inference_statistics("feature_extraction")["model_stats"][0]
        if after["inference_count"] - before["inference_count"] >= len(texts) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    single = _infer(client, httpclient, "feature_extraction", {"text": texts}, {"truncate": True}).as_numpy("embedding")
    for k, r in enumerate(results):
        np.testing.assert_allclose(r.as_numpy("embedding")[0], single[k], atol=1e-5)
    runs = after["execution_count"] - before["execution_count"]
    rows = after["inference_count"] - before["inference_count"]
    assert rows == len(texts)
    assert runs < rows


@needs_server
def test_bad_input_is_a_clear_400(server: triton_server.Server) -> None:
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.http)
    with pytest.raises(InferenceServerException) as empty:
        _infer(client, httpclient, "feature_extraction", {"text": ["fine", ""]})
    assert "empty" in str(empty.value)
    assert empty.value.status() == "400"
    with pytest.raises(InferenceServerException) as long:
        _infer(client, httpclient, "feature_extraction", {"text": ["word " * 600]})
    assert "exceed the longest" in str(long.value)
    assert "truncate to true" in str(long.value)
    assert "truncate" in str(long.value)
    assert long.value.status() == "400"
    with pytest.raises(InferenceServerException) as unknown:
        _infer(client, httpclient, "feature_extraction", {"text": ["fine"]}, {"dimensions": 8})
    assert "dimensions" in str(unknown.value)
    with pytest.raises(InferenceServerException) as qa:
        _infer(client, httpclient, "question_answering", {"question": ["q"]})
    assert "context" in str(qa.value)
    gclient = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException) as g:
        _infer(gclient, grpcclient, "token_classification", {"text": [""]})
    assert "empty" in str(g.value)
    assert "INVALID_ARG" in str(g.value.status())
    # the server is still serving after all that
    assert _infer(client, httpclient, "feature_extraction", {"text": ["fine"]}).as_numpy("embedding").shape == (1, 384)
