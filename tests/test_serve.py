"""The HTTP server, for real on 127.0.0.1: OpenAI client, /predict, batching, backpressure, bad input, SIGTERM."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.conftest import TS, free_port
from torchship.options import ServeOptions
from torchship.serve.app import create_app


@contextlib.contextmanager
def serve_in_thread(artifact: Path | dict[str, Path], **options: object) -> Iterator[str]:
    """Run uvicorn on 127.0.0.1 with a free port in a thread; yield its base URL (httpx's conftest pattern).
    ``artifact`` may be several, by name."""
    import uvicorn

    app = create_app(artifact, ServeOptions(port=0, **options))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def demo_url(demo_artifact: Path) -> Iterator[str]:
    with serve_in_thread(demo_artifact, api_key="sekret", max_input_items=8, max_input_chars=2000) as url:
        yield url


AUTH = {"Authorization": "Bearer sekret"}


def test_openai_client_gets_embeddings_equal_to_the_predictor(demo_url: str, demo_artifact: Path) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{demo_url}/v1", api_key="sekret", max_retries=0)
    texts = ["Jim Henson was a puppeteer", "Who was Jim Henson?"]
    response = client.embeddings.create(input=texts, model="any-name-at-all")
    assert response.model == "any-name-at-all"
    assert [d.index for d in response.data] == [0, 1]
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    want = torchship.load(demo_artifact)(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 10
    single = client.embeddings.create(input="one text", model="m", encoding_format="float")
    assert len(single.data) == 1
    assert len(single.data[0].embedding) == 384


def test_base64_encoding(demo_url: str) -> None:
    body = {"input": ["hello"], "model": "m", "encoding_format": "base64"}
    r = httpx.post(f"{demo_url}/v1/embeddings", json=body, headers=AUTH)
    assert r.status_code == 200
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    plain = httpx.post(f"{demo_url}/v1/embeddings", json={**body, "encoding_format": "float"}, headers=AUTH).json()
    np.testing.assert_allclose(vector, plain["data"][0]["embedding"], atol=0)


def test_health_info_metrics_docs(demo_url: str) -> None:
    assert httpx.get(f"{demo_url}/health").json() == {"status": "ready"}
    info = httpx.get(f"{demo_url}/info").json()
    assert info["task"] == "feature-extraction"
    assert info["limits"]["max_input_items"] == 8
    httpx.post(f"{demo_url}/v1/embeddings", json={"input": ["a b c"]}, headers=AUTH)
    metrics = httpx.get(f"{demo_url}/metrics").text
    for name in (
        "torchship_requests_total", "torchship_request_latency_seconds_bucket", "torchship_batch_size_bucket",
        "torchship_queue_depth", 'torchship_tokens_total{kind="padded",model="minilm"}',
        'torchship_flops_total{kind="executed",model="minilm"}', 'torchship_requests_in_flight{model="minilm"}',
    ):  # fmt: skip
        assert name in metrics
    assert 'torchship_requests_total{endpoint="/v1/embeddings",model="minilm",status="200"}' in metrics
    assert httpx.get(f"{demo_url}/docs").status_code == 200
    spec = httpx.get(f"{demo_url}/openapi.json").json()
    body = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    many = body["properties"]["input"]["anyOf"][1]
    assert (many["maxItems"], many["items"]["maxLength"]) == (8, 2000)  # this server's limits
    assert body["properties"]["dimensions"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 384}
    assert set(spec["paths"]["/v1/embeddings"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "404",
        "413",
        "422",
        "503",
    }
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"input": ["x"]}, {}, 401, "API key"),
        ({"input": ["x"]}, {"Authorization": "Bearer wrong"}, 401, "API key"),
        ({"input": []}, AUTH, 422, "input is empty"),
        ({"input": [""]}, AUTH, 422, "item 0 is an empty string"),
        ({"input": [1, 2]}, AUTH, 422, "input"),
        ({"inputs": "x"}, AUTH, 422, "input"),
        ({"input": ["x"] * 9}, AUTH, 413, "max_input_items 8"),
        ({"input": ["y" * 2001]}, AUTH, 413, "max_input_chars 2000"),
        ({"input": ["x"], "encoding_format": "int8"}, AUTH, 422, "encoding_format"),
        ({"input": ["x"], "dimensions": 500}, AUTH, 422, "this model's embeddings have 384; pass 1 to 384"),
        ({"input": ["x"], "dimensions": 0}, AUTH, 422, "this model's embeddings have 384; pass 1 to 384"),
    ],
)
def test_bad_requests_get_clear_4xx(demo_url: str, body: dict, headers: dict, status: int, message: str) -> None:
    r = httpx.post(f"{demo_url}/v1/embeddings", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_malformed_json_and_wrong_task(demo_url: str) -> None:
    r = httpx.post(
        f"{demo_url}/v1/embeddings", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 422
    r = httpx.post(f"{demo_url}/predict", json={"question": "who?", "context": "me"}, headers=AUTH)
    assert r.status_code == 400
    assert "not question-answering" in r.json()["error"]["message"]
    r = httpx.post(f"{demo_url}/predict", json={"inputs": ["x"], "parameters": {"top_k": 2}}, headers=AUTH)
    assert r.status_code == 422
    assert "unknown option" in r.json()["error"]["message"]


def test_concurrent_requests_are_batched_and_answered_in_order(demo_artifact: Path) -> None:
    texts = [f"sentence number {i} about muppets" + " and puppets" * (i % 7) for i in range(40)]
    want = torchship.load(demo_artifact)(texts)
    with serve_in_thread(demo_artifact, max_wait_ms=50) as url:

        def one(i: int) -> list[float]:
            r = httpx.post(f"{url}/v1/embeddings", json={"input": texts[i]}, timeout=60)
            assert r.status_code == 200
            return r.json()["data"][0]["embedding"]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = np.array(list(pool.map(one, range(len(texts)))), dtype=np.float32)
        metrics = httpx.get(f"{url}/metrics").text
    np.testing.assert_allclose(got, want, atol=1e-5)
    count = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("torchship_batch_size_count"))
    )
    assert count < len(texts), "some requests must have shared a batch"


def test_full_queue_gets_503_with_retry_after(demo_artifact: Path) -> None:
    with serve_in_thread(demo_artifact, max_queue=4, max_input_items=4, max_wait_ms=200, max_batch_size=4) as url:

        def one(_: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"input": ["word " * 200] * 4}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, range(12)))
        assert httpx.get(f"{url}/health").status_code == 200  # still alive
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}
    assert 503 in statuses
    assert 200 in statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert "queue is full" in rejected.json()["error"]["message"]


def test_client_disconnect_does_not_break_the_batch(demo_artifact: Path) -> None:
    with serve_in_thread(demo_artifact, max_wait_ms=300) as url:

        def impatient() -> None:
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(f"{url}/v1/embeddings", json={"input": ["leaving early"] * 4}, timeout=0.05)

        def patient() -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"input": ["staying"]}, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            gone = [pool.submit(impatient) for _ in range(3)]
            stays = pool.submit(patient)
            for f in gone:
                f.result()
            assert stays.result().status_code == 200
        assert httpx.post(f"{url}/v1/embeddings", json={"input": ["after"]}).status_code == 200


def test_predict_is_task_native(tiny_mlm_artifact: Path) -> None:
    with serve_in_thread(tiny_mlm_artifact) as url:
        r = httpx.post(f"{url}/predict", json={"inputs": "Jim Henson was a [MASK].", "parameters": {"top_k": 2}})
        assert r.status_code == 200
        want = torchship.load(tiny_mlm_artifact)("Jim Henson was a [MASK].", top_k=2)
        assert [o["token"] for o in r.json()["outputs"]] == [w["token"] for w in want]
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["x"]})
        assert r.status_code == 400
        assert "serves fill-mask, not embeddings" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/predict", json={"inputs": ["a [MASK]"], "parameters": {"top_k": 0}})
        assert r.status_code == 422
        spec = httpx.get(f"{url}/openapi.json").json()
        assert "/v1/embeddings" not in spec["paths"]  # documented only where it answers
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["inputs"]
        top_k = {"type": "integer", "minimum": 1, "maximum": 100, "default": 5, "description": "candidates per mask"}
        assert body["properties"]["parameters"]["properties"] == {"top_k": top_k}
        assert body["properties"]["parameters"]["additionalProperties"] is False
        r = httpx.post(f"{url}/predict", json={"inputs": ["a [MASK]"], "parameters": {"top_k": 30000}})
        assert r.status_code == 422
        assert "top_k 30000 is over this server's limit of 100" in r.json()["error"]["message"]


def in_flight(url: str) -> float:
    """The server's own count of requests received and not yet answered."""
    lines = httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
    return sum(float(line.split()[1]) for line in lines if line.startswith("torchship_requests_in_flight{"))


def test_sigterm_finishes_in_flight_requests_and_exits_zero(demo_artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torchship.cli",
        "serve",
        str(demo_artifact),
        "--port",
        str(port),
        "--max-wait-ms",
        "5000",
    ]
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "server did not become ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            inflight = [
                pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": ["x y z"] * 3}, timeout=60)
                for _ in range(4)
            ]
            while in_flight(url) < 4:  # all four are received, waiting in the 5 s batch window
                assert time.monotonic() < deadline, "the requests never reached the server"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in inflight]
        assert [r.status_code for r in results] == [200] * 4
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "Finished server process" in output


SCHEMATHESIS_CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"


HEADS = {
    "text-classification": ("BertForSequenceClassification", {}),
    "token-classification": ("BertForTokenClassification", {}),
    "question-answering": ("BertForQuestionAnswering", {}),
    "reranker": ("BertForSequenceClassification", {"num_labels": 1}),  # a cross-encoder: /rerank, /v2/rerank
    "sparse-embedding": ("BertForMaskedLM", {}),  # SPLADE: /embed_sparse
}


# each task in its own xdist group: seven servers fuzzed one after the other on one worker kept the other idle
FUZZED = ["feature-extraction", "fill-mask", *HEADS]


@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.xdist_group(f"fuzz-{t}")) for t in FUZZED])
def test_fuzzing_the_openapi_contract_finds_no_500_and_no_undocumented_behaviour(
    task: str, demo_artifact: Path, tiny_mlm_artifact: Path, demo_dir: Path, tmp_path: Path
) -> None:
    """schemathesis generates valid and invalid requests from /openapi.json: every valid one must be answered
    2xx, every invalid one refused with a documented 4xx, and no response may be a 500, an undocumented status
    or content type, or break the documented response schema. The real MiniLM for embeddings, tiny heads else."""
    from tests.conftest import save_tiny

    if task in HEADS:
        head, config = HEADS[task]
        checkpoint = save_tiny(tmp_path / "model", head, demo_dir, **config)
        exported = "text-classification" if task == "reranker" else task
        options = torchship.ExportOptions(formats=TS, task=exported, seq_lengths=(16, 64), progress=False)
        artifact = torchship.export(checkpoint, tmp_path / "art", options)
    else:
        artifact = demo_artifact if task == "feature-extraction" else tiny_mlm_artifact
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG), "--no-color"]
    args = ["--checks", "all", "--max-examples", "12", "--seed", "1", "--workers", "1", "--request-timeout", "30"]
    # every route is also served under /models/{name}/ by the same handler (serve/app.py registers both from one
    # table; tests/test_multi_model.py checks the prefixed ones): the fuzzing covers the root ones. The operations
    # every server has alike (health, info, metrics, models, tokenize, decode) are fuzzed once, on the embedding
    # server; the others fuzz only the operations whose schema or answer depends on their task
    shared = "" if task == "feature-extraction" else "|health$|info$|metrics$|v1/models$|tokenize$|decode$"
    args += ["--exclude-path-regex", f"^/(models/{shared})"]
    if task == "question-answering":
        # JSON Schema cannot say that question and context lists have equal lengths: the server refuses unequal
        # ones with 422, which this check would count as a valid request refused
        args += ["--exclude-checks", "positive_data_acceptance"]
    with serve_in_thread(artifact, api_key="sekret", max_input_items=4, max_input_chars=300, truncate=True) as url:
        run = subprocess.run(
            [*command, "run", f"{url}/openapi.json", *args, "-H", "Authorization: Bearer sekret"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or "passed" in run.stdout, run.stdout[-3000:]


def test_question_answering_runs_through_the_batcher(demo_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import save_tiny

    checkpoint = save_tiny(tmp_path / "qa", HEADS["question-answering"][0], demo_dir)
    options = torchship.ExportOptions(formats=TS, task="question-answering", seq_lengths=(16, 64), progress=False)
    artifact = torchship.export(checkpoint, tmp_path / "art", options)
    context = "Jim Henson was a puppeteer who created the muppets in new york. " * 40  # many windows each
    with serve_in_thread(artifact, max_queue=4, max_input_items=4) as url:

        def one(_: int) -> httpx.Response:
            body = {"question": ["Who?"] * 4, "context": context, "parameters": {"doc_stride": 4}}
            return httpx.post(f"{url}/predict", json=body, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, range(8)))
        r = httpx.post(f"{url}/predict", json={"question": "Who?", "context": "Jim Henson was a puppeteer."})
        assert r.status_code == 200  # the queue drained: nothing leaked
        metrics = httpx.get(f"{url}/metrics").text
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert "the queue is full" in rejected.json()["error"]["message"]
    answered = next(r for r in responses if r.status_code == 200)
    want = torchship.load(artifact)(question=["Who?"] * 4, context=context, doc_stride=4)
    assert answered.json()["outputs"] == json.loads(json.dumps(want))  # one answer per question, as the library's
    real = next(line for line in metrics.splitlines() if line.startswith('torchship_tokens_total{kind="real",'))
    assert float(real.split()[-1]) > 4 * 200  # the windows ran in the batcher, which counts their tokens


def test_the_servers_batch_limits_reach_the_engine(demo_artifact: Path) -> None:
    """--max-batch-size 256 must mean 256 rows per forward pass, not the library's default of 64."""
    app = create_app(demo_artifact, ServeOptions(max_batch_size=256, max_batch_tokens=256 * 16))
    engine = app.state.predictor.engine
    assert (engine.options.micro_batch_size, engine.options.max_batch_tokens) == (256, 256 * 16)
    jobs = engine.plan(np.full(200, 9))  # 200 rows of one length: one micro-batch, not four of 64
    assert [len(rows) for rows, _, _ in jobs] == [200]
