"""The emulator speaks each flavour's protocol as the reference describes it (methods, error dialects, shapes)."""

from __future__ import annotations

import ast
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import gaia_source.emulator
from gaia_source.emulator import FAULT_KINDS, GATEWAY_FAULT_KINDS, KNOWLEDGE_BASE, NodeEmulator, embed_text


def test_models_and_info_methods_differ_by_generation(make_node) -> None:
    rag, nexus, amd = make_node("rag"), make_node("nexus"), make_node("amd")
    # rag-api-server routes on the path alone: POST /v1/models works, as the seed docs show
    assert httpx.post(f"{rag.base_url}/models").json()["data"][0]["id"] == "Llama-3.2-3B-Instruct"
    # gaia-nexus is GET-only for models and info: POST is a bare 405
    post = httpx.post(f"{nexus.base_url}/models")
    assert (post.status_code, post.content) == (405, b"")
    assert httpx.post(f"{nexus.base_url}/info").status_code == 405
    assert httpx.get(f"{nexus.base_url}/info").json()["models"]["chat"][0]["name"] == "Qwen3-4B"
    # AMD GAIA: FastAPI's 405 and 404 bodies
    assert httpx.post(f"{amd.base_url}/models").json() == {"detail": "Method Not Allowed"}
    assert httpx.get(f"{amd.base_url}/info").json() == {"detail": "Not Found"}
    models = httpx.get(f"{amd.base_url}/models").json()["data"]
    assert [m["id"] for m in models] == ["gaia"]
    assert models[0]["owned_by"] == "amd-gaia" and models[0]["max_input_tokens"] == 32768


def test_error_dialects(make_node) -> None:
    rag, nexus, amd = make_node("rag"), make_node("nexus"), make_node("amd")
    r = httpx.post(f"{rag.base_url}/chat/completions", content=b'{"model": "x"}')
    assert r.status_code == 400 and "content-type" not in r.headers
    assert r.text.startswith("400 Bad Request: Fail to deserialize chat completion request: missing field `messages`")
    assert "\njson_value:" in r.text
    r = httpx.get(f"{rag.base_url}/nope")
    assert (r.status_code, r.text) == (404, "404 Not Found: The requested service endpoint is not found: /v1/nope")
    r = httpx.post(f"{nexus.base_url}/chat/completions", content=b'{"model": "x"}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/plain")
    r = httpx.post(f"{nexus.base_url}/chat/completions", content=b"{}")
    assert r.status_code == 415
    r = httpx.post(f"{nexus.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "[[fail]]"}]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    r = httpx.post(f"{amd.base_url}/chat/completions",
                   json={"model": "gaia-nope", "messages": [{"role": "user", "content": "hi"}]})
    assert (r.status_code, r.json()) == (404, {"detail": "Model 'gaia-nope' not found"})


def test_retrieve_shapes(make_node) -> None:
    body = {"messages": [{"role": "user", "content": "Where is Paris located?"}]}
    listed = httpx.post(f"{make_node('rag').base_url}/retrieve", json=body).json()
    assert isinstance(listed, list) and len(listed) == 1
    points = listed[0]["points"]
    assert points[0]["source"] == KNOWLEDGE_BASE[0]
    assert [p["score"] for p in points] == sorted((p["score"] for p in points), reverse=True)
    assert listed[0]["limit"] == 3 and listed[0]["score_threshold"] == 0.2
    single = httpx.post(f"{make_node('rag', retrieve_shape='object').base_url}/retrieve", json=body).json()
    assert single["points"] == points
    nothing = {"messages": [{"role": "user", "content": "zebra quantum xylophone"}]}
    assert httpx.post(f"{make_node('rag').base_url}/retrieve", json=nothing).json() == []


def test_embeddings_are_deterministic_unit_vectors(make_node) -> None:
    node = make_node("nexus", dim=64)
    data = httpx.post(f"{node.base_url}/embeddings", json={"input": ["a cat", "a cat", "DuckDB arrays"]}).json()["data"]
    vectors = np.array([d["embedding"] for d in data])
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1])
    np.testing.assert_allclose(vectors[2], embed_text("DuckDB arrays", 64), rtol=1e-6)


def test_embeddings_are_dense_and_similar_for_similar_texts(make_node) -> None:
    """Like a real model's: every one of the 768 floats is set (JSON and storage cost what they would), and texts that
    share words score higher than texts that do not, so a similarity search still finds what it should."""
    node = make_node("nexus", dim=768)
    texts = ["The Seine flows through Paris", "Paris and the river Seine", "DuckDB stores vectors in arrays"]
    data = httpx.post(f"{node.base_url}/embeddings", json={"input": texts}).json()["data"]
    vectors = np.array([d["embedding"] for d in data], dtype=np.float32)
    assert vectors.shape == (3, 768) and np.count_nonzero(vectors) == 3 * 768
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    seine_paris, seine_duckdb = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert seine_paris > 0.4 and abs(seine_duckdb) < 0.2
    np.testing.assert_array_equal(vectors[2], embed_text(texts[2], 768))  # float32 through JSON and back


def test_auth_when_a_key_is_set(make_node) -> None:
    node = make_node("rag", api_key="s3cret-key")
    assert httpx.get(f"{node.base_url}/models").status_code == 401
    wrong = httpx.get(f"{node.base_url}/models", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.text) == (401, "401 Unauthorized: Invalid API key.")
    ok = httpx.get(f"{node.base_url}/models", headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    amd = make_node("amd", api_key="k3y-k3y")
    assert httpx.get(f"{amd.root_url}/health").json()["status"] == "ok"
    assert "Missing API key" in httpx.get(f"{amd.base_url}/models").json()["detail"]


@pytest.mark.parametrize("flavor,serial", [("rag", True), ("nexus", False), ("amd", False)])
def test_rag_answers_one_request_at_a_time(make_node, flavor: str, serial: bool) -> None:
    node = make_node(flavor, latency_ms=50)
    body = {"model": node.default_chat_model, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.post(f"{node.base_url}/chat/completions", json=body).status_code,
                                 range(16)))
    assert statuses == [200] * 16
    assert node.requests_to("/v1/chat/completions") == 16
    assert (node.max_in_flight == 1) is serial
    if not serial:
        assert node.max_in_flight > 1


def test_many_concurrent_clients_are_accepted(make_node) -> None:
    node = make_node("nexus")

    def one(_: int) -> int:
        return httpx.get(f"{node.base_url}/models", timeout=10).status_code

    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(one, range(200))) == {200}


@pytest.mark.parametrize("flavor", ["rag", "nexus", "amd"])
def test_gateway_404_fault(make_node, flavor: str) -> None:
    node = make_node(flavor, fault_rate=1.0, fault_kinds=("404",))
    body = {"model": node.default_chat_model, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{node.base_url}/chat/completions", json=body)
    assert (r.status_code, r.headers["content-type"]) == (404, "text/html")
    page = b"<html><head><title>404 Not Found</title></head><body><h1>404 page not found</h1></body></html>"
    assert r.content == page
    assert node.stats["fault 404"] == 1 and node.faults() == 1
    assert node.requests_to("/v1/chat/completions", "POST") == 1


def test_fault_kinds() -> None:
    assert "404" not in FAULT_KINDS  # the soak test expects every default kind to occur
    assert GATEWAY_FAULT_KINDS == FAULT_KINDS + ("404",)
    with pytest.raises(ValueError):
        NodeEmulator(fault_kinds=("418",))


def test_the_emulator_imports_nothing_from_the_client_code() -> None:
    """A witness of the protocol: only the stdlib, numpy and orjson, and its own modules."""
    package = Path(gaia_source.emulator.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{module.name} imports from outside the emulator package"
                continue
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = top in sys.stdlib_module_names or top in ("numpy", "orjson") or name == "__future__"
                assert allowed or name.startswith("gaia_source.emulator"), f"{module.name} imports {name}"


def test_its_own_process_computes_with_one_blas_thread() -> None:
    """``python -m gaia_source.emulator`` asks for one BLAS thread before numpy is imported (``__main__``); importing
    the package must not import numpy first, or the setting does nothing and OpenBLAS's idle worker spins on a core
    of its own while a benchmark runs (the server, not the client, was then what bench/embeddings.py timed)."""
    import subprocess

    check = ("import sys, gaia_source.emulator; "
             "sys.exit('numpy is imported with gaia_source.emulator' if 'numpy' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_command_line_loads_another_model_and_samples(tmp_path: Path) -> None:
    """``--model`` swaps the loaded chat model (what a restart with another model does to a node) and ``--sampling``
    varies answers at temperature > 0: both from the command line, as README's evaluation steps run them."""
    import subprocess

    from conftest import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gaia_source.emulator", "--flavor", "rag", "--port", str(port),
                               "--model", "Qwen3-4B-Q5_K_M", "--sampling"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == (
            f"Gaia node emulator (rag, Qwen3-4B-Q5_K_M) listening on http://127.0.0.1:{port}/v1")
        base = f"http://127.0.0.1:{port}/v1"
        assert [m["id"] for m in httpx.get(f"{base}/models").json()["data"]] == ["Qwen3-4B-Q5_K_M",
                                                                                "Nomic-embed-text-v1.5"]
        assert httpx.get(f"{base}/info").json()["chat_model"]["name"] == "Qwen3-4B-Q5_K_M"
        body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0.8}
        answers = {httpx.post(f"{base}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
                   for _ in range(30)}
        assert len(answers) > 1 and all(a.startswith("Paris is the capital of France.") for a in answers)
        cold = {httpx.post(f"{base}/chat/completions", json={**body, "temperature": 0}).json()["choices"][0][
            "message"]["content"] for _ in range(5)}
        assert cold == {"Paris is the capital of France."}
    finally:
        server.terminate()
        server.wait(10)
