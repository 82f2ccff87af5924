"""Ray: embed on Ray Data equals the in-process path; Ray Serve answers /v1/embeddings. Real local Ray, 2 CPUs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.conftest import corpus_texts, free_port
from torchship.cli import main
from torchship.embed import RECORD, EmbedOptions, embed_dataset, embed_file


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = corpus_texts()[:150]
    path = tmp_path_factory.mktemp("embed") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _over_long(artifact: Path, texts: list[str]) -> list[bool]:
    """Which texts exceed the artifact's longest bucket, by the artifact's own tokenizer (no truncation)."""
    from tokenizers import Tokenizer

    predictor = torchship.load(artifact)
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer" / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(e.ids) > predictor.max_length for e in tokenizer.encode_batch(texts)]


def test_embed_in_process_keeps_ids_order_and_fixed_size_float32(
    demo_artifact: Path, corpus_file: Path, tmp_path: Path, capsys
) -> None:
    import pyarrow as pa

    out = tmp_path / "local.parquet"
    assert (
        main(["embed", str(demo_artifact), "--input", str(corpus_file), "--output", str(out), "--batch-size", "64"])
        == 0
    )
    texts = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    over = _over_long(demo_artifact, texts)
    assert 0 < sum(over) < len(texts)  # the corpus has texts over 256 tokens
    assert f"150 of 150 rows embedded (dim 384), 0 skipped, {sum(over)} truncated to 256 tokens" in (
        capsys.readouterr().out
    )
    table = _read(out)
    assert table.column_names == ["id", "row", "embedding", "truncated", "error"]
    assert table.column("truncated").to_pylist() == over
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(150)]
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    with pytest.warns(UserWarning, match="truncated"):
        want = torchship.load(demo_artifact)(texts)
    np.testing.assert_allclose(vectors, want, atol=1e-6)


def test_embed_on_ray_equals_in_process(
    local_ray: None, demo_artifact: Path, corpus_file: Path, tmp_path: Path
) -> None:
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    embed_file(demo_artifact, corpus_file, local, EmbedOptions(batch_size=32))
    summary = embed_file(demo_artifact, corpus_file, remote, EmbedOptions(batch_size=32, ray=True, actors=(2, 2)))
    texts = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    over = _over_long(demo_artifact, texts)
    assert {k: v for k, v in summary.items() if k not in ("seconds", "rows_per_s")} == {
        "rows": 150,
        "embedded": 150,
        "skipped": 0,
        "truncated": sum(over),
        "max_length": 256,
        "dim": 384,
    }
    a, b = _read(local), _read(remote)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("truncated").to_pylist() == b.column("truncated").to_pylist() == over
    np.testing.assert_allclose(
        np.array(b.column("embedding").to_pylist()), np.array(a.column("embedding").to_pylist()), atol=1e-6
    )


def test_bad_rows_stop_or_are_skipped_and_recorded(demo_artifact: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(
        '{"id": 1, "text": "fine"}\n{"id": 2, "body": "no text"}\n{"id": 3, "text": 42}\n{"id": 4, "text": "ok"}\n'
    )
    out = tmp_path / "out.parquet"
    assert main(["embed", str(demo_artifact), "--input", str(src), "--output", str(out)]) == 1
    assert "bad.jsonl:2: missing field 'text'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["embed", str(demo_artifact), "--input", str(src), "--output", str(out), "--on-error", "skip"]) == 0
    table = _read(out)
    assert table.column("id").to_pylist() == [1, 2, 3, 4]
    embeddings = table.column("embedding").to_pylist()
    assert embeddings[1] is None
    assert embeddings[2] is None
    assert len(embeddings[0]) == 384
    errors = table.column("error").to_pylist()
    assert errors[0] is None
    assert "missing field 'text'" in errors[1]
    assert "is int, not a string" in errors[2]


def test_txt_and_parquet_inputs(demo_artifact: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in.txt").write_text("first line\n\nsecond line\n")
    embed_file(demo_artifact, tmp_path / "in.txt", tmp_path / "a.parquet", EmbedOptions())
    assert _read(tmp_path / "a.parquet").column("id").to_pylist() == [1, 3]
    pq.write_table(pa.table({"key": ["x", "y"], "body": ["hello", "world"]}), tmp_path / "in.parquet")
    embed_file(
        demo_artifact, tmp_path / "in.parquet", tmp_path / "b.parquet", EmbedOptions(text_field="body", id_field="key")
    )
    assert _read(tmp_path / "b.parquet").column("id").to_pylist() == ["x", "y"]


def _actor_pids() -> list[int]:
    """The processes of Ray Data's map actors (their process title names the operator)."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
        if b"MapWorker" in cmdline and b"_PartActor" in cmdline:
            pids.append(int(pid))
    return pids


def test_dataset_on_ray_is_exactly_once_when_an_actor_is_killed(
    local_ray: None, demo_artifact: Path, corpus_file: Path, tmp_path: Path
) -> None:
    """Kill one embedding actor's process mid-run: Ray restarts it and retries its part, and since a part is
    written whole under a temporary name and renamed, the dataset still holds every row exactly once. What the
    killed actor was writing is swept when the job ends (a half-written file stands in for it: whether the kill
    lands mid-write is up to timing)."""
    import pyarrow.dataset as ds

    local, remote = tmp_path / "local", tmp_path / "ray"
    embed_dataset(demo_artifact, str(corpus_file), str(local), EmbedOptions(rows_per_part=10, batch_size=32))
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            record = remote / RECORD
            done = json.loads(record.read_text())["parts"] if record.is_file() else {}
            pids = _actor_pids()
            if len(done) >= 2 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                (remote / f".part-00000-000001.parquet.tmp-{pids[0]}").write_bytes(b"PAR1 half")
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        summary = embed_dataset(
            demo_artifact, str(corpus_file), str(remote),
            EmbedOptions(rows_per_part=10, batch_size=32, ray=True, actors=(1, 2)),
        )  # fmt: skip
    finally:
        thread.join()
    assert killed, "no actor was found to kill"
    assert summary["rows"] == 150
    a = ds.dataset(local, format="parquet").to_table().sort_by("row")
    b = ds.dataset(remote, format="parquet").to_table().sort_by("row")
    assert b.column("row").to_pylist() == list(range(150))  # every row, once
    assert b.column("id").to_pylist() == a.column("id").to_pylist()
    np.testing.assert_allclose(
        np.array(b.column("embedding").to_pylist()), np.array(a.column("embedding").to_pylist()), atol=1e-6
    )
    assert not [p for p in os.listdir(remote) if p.startswith(".")]


def test_ray_serve_deployment_answers_embeddings(local_ray: None, demo_artifact: Path) -> None:
    from ray import serve

    from torchship.options import ServeOptions
    from torchship.serve import ray_serve

    port = free_port()
    options = ServeOptions(port=port)
    try:
        ray_serve.run(str(demo_artifact), options, replicas=2, address=None, blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        r = httpx.post(
            f"{url}/v1/embeddings", json={"input": ["Jim Henson was a puppeteer", "hello"], "model": "m"}, timeout=60
        )
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(
            got, torchship.load(demo_artifact)(["Jim Henson was a puppeteer", "hello"]), atol=1e-5
        )
        assert r.json()["model"] == "m"
        assert httpx.post(f"{url}/v1/embeddings", json={"input": []}, timeout=30).status_code == 422
        assert serve.status().applications["torchship"].deployments["torchship"].replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
