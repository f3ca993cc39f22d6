"""The ledger of cells: what a request is, and how it ended — one regression test per case of the ledger issue that
lost, doubled, hid or mislabelled rows, each run as a user would (emulated nodes over HTTP, a real DuckDB)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import dlt
import duckdb
import httpx
import pytest
from conftest import query, run_cli, table_rows

from gaia_source import gaia_source
from gaia_source.destination import apply_chunk_sync
from gaia_source.emulator import answer_for
from gaia_source.errors import GaiaConfigError
from gaia_source.ledger import Ledger
from gaia_source.transformers import embeddings_from
from gaia_source.vectors import search

PROMPTS = [f"Question number {i}?" for i in range(10)]


def load(pipeline: dlt.Pipeline, resources: str, **source_args: Any) -> Ledger:
    """One run as the command line does it: the source with a ledger, the load, then the post-load chunk sync."""
    ledger = Ledger()
    pipeline.run(gaia_source(ledger=ledger, **source_args).with_resources(*resources.split(",")))
    apply_chunk_sync(pipeline, ledger)
    return ledger


def document(words: int, salt: str = "") -> str:
    return " ".join(f"word{i}{salt}." if i % 12 == 11 else f"word{i}{salt}" for i in range(words))


# --- 1, 2: chunk sync keeps other models' chunks, and deletes only after the replacement is loaded --------------


def test_a_second_model_keeps_the_first_models_chunks(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    texts = [{"text": document(60), "document_id": "guide"}]
    for model in ("m1", "m2"):
        load(pipeline, "embeddings", base_url=node.base_url, texts=texts, chunk_size=120, embedding_model=model)
    per_model = dict(query(pipeline, "SELECT model_requested, count(*) FROM embeddings GROUP BY 1"))
    assert per_model["m1"] == per_model["m2"] >= 3
    # the document changes, embedded again with m2 only: m2's old chunks go, m1's stay as they were
    changed = [{"text": document(30, "x"), "document_id": "guide"}]
    load(pipeline, "embeddings", base_url=node.base_url, texts=changed, chunk_size=120, embedding_model="m2")
    after = dict(query(pipeline, "SELECT model_requested, count(*) FROM embeddings GROUP BY 1"))
    assert after["m1"] == per_model["m1"]
    m2_texts = [t for (t,) in query(pipeline, "SELECT text FROM embeddings WHERE model_requested = 'm2'")]
    assert m2_texts and all("x" in t for t in m2_texts)


def test_a_document_edited_while_the_node_is_down_keeps_its_old_chunks(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    args: Dict[str, Any] = {"base_url": node.base_url, "chunk_size": 120, "embedding_model": "m1"}
    load(pipeline, "embeddings", texts=[{"text": document(60), "document_id": "guide"}], **args)
    before = query(pipeline, "SELECT embedding_id, text FROM embeddings ORDER BY chunk_index")
    edited = [{"text": document(60, "v2"), "document_id": "guide"}]
    node.outage = 503
    ledger = load(pipeline, "embeddings", texts=edited, max_attempts=1, retry_rounds=0, **args)
    assert ledger.failing > 0
    assert query(pipeline, "SELECT embedding_id, text FROM embeddings ORDER BY chunk_index") == before
    node.outage = None
    ledger = load(pipeline, "embeddings", texts=edited, **args)
    assert ledger.failing == 0
    texts = [t for (t,) in query(pipeline, "SELECT text FROM embeddings ORDER BY chunk_index")]
    assert len(texts) >= len(before) and all("v2" in t for t in texts)
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]


# --- 3: a document spanning pages is one document ----------------------------------------------------------------


def test_a_document_across_upstream_pages_is_numbered_and_synced_as_one(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()

    def pages() -> Iterator[List[Dict[str, Any]]]:
        yield [{"doc": "manual", "body": "Chapter one is about rivers."},
               {"doc": "manual", "body": "Chapter two is about mountains."}]
        yield [{"doc": "manual", "body": "Chapter three is about seas."}]

    counts = []
    for _ in range(3):
        upstream = dlt.resource(pages(), name="sections", selected=False)
        ledger = Ledger()
        pipeline.run(upstream | embeddings_from(text_field="body", document_id_field="doc", base_url=node.base_url,
                                                ledger=ledger))
        apply_chunk_sync(pipeline, ledger)
        counts.append(query(pipeline, "SELECT count(*) FROM embeddings")[0][0])
    assert counts == [3, 3, 3]
    rows = query(pipeline, "SELECT text_id, chunk_index, char_start, char_end FROM embeddings ORDER BY chunk_index")
    assert [r[0] for r in rows] == ["manual#0", "manual#1", "manual#2"]
    assert [r[1] for r in rows] == [0, 1, 2] and rows[1][2] == rows[0][3] and rows[2][2] == rows[1][3]
    assert node.requests_to("/v1/embeddings") == 2  # the first run's two pages; later runs send nothing


# --- 5, 13, 14, 15: one cell whatever the node, the shard or the node's model -------------------------------------


def test_shards_after_a_model_swap_answer_every_prompt_once(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    prompts = [f"Prompt {i}" for i in range(40)]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")

    def shards() -> None:
        for i in range(2):
            result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.txt", "--resources",
                             "chat_completions", "--shard", f"{i}/2", "--pipeline-name", f"shard{i}")
            assert result.returncode == 0, result.stderr

    shards()
    first_model = node.default_chat_model
    node.loaded_model = "Qwen3-4B"
    shards()
    rows: List[Any] = []
    for i in range(2):
        with duckdb.connect(str(tmp_path / f"shard{i}.duckdb"), read_only=True) as con:
            rows += con.execute("SELECT json_extract_string(messages, '$[0].content'), model "
                                "FROM gaia_data.chat_completions").fetchall()
    per_prompt: Dict[str, List[str]] = {}
    for prompt, model in rows:
        per_prompt.setdefault(prompt, []).append(model)
    # every prompt answered exactly once under each configuration, by exactly one shard
    assert sorted(per_prompt) == sorted(prompts)
    assert all(sorted(models) == sorted([first_model, "Qwen3-4B"]) for models in per_prompt.values())
    assert node.requests_to("/v1/chat/completions") == 80


def test_a_pool_run_then_a_compare_run_holds_one_answer_per_prompt_and_node(make_node, make_pipeline) -> None:
    a, b = make_node("nexus"), make_node("nexus", loaded_model="Llama-3.2-1B")
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS, compare_nodes=True)
    per_node = dict(query(pipeline, "SELECT node_url, count(*) FROM chat_completions GROUP BY 1"))
    assert per_node == {a.base_url: 10, b.base_url: 10}
    assert query(pipeline, "SELECT count(*) FROM (SELECT node_url, prompt_id FROM chat_completions "
                           "GROUP BY ALL HAVING count(*) > 1)") == [(0,)]
    # the compare run sent each prompt only to the node that had not answered it
    assert a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions") == 20
    # and a pool run after it sends nothing
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    assert a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions") == 20


def test_pool_drift_resends_only_what_the_changed_node_answered(make_node, make_pipeline) -> None:
    a, b = make_node("nexus"), make_node("nexus")
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    answered_by_b = query(pipeline, "SELECT count(*) FROM chat_completions WHERE node_url = ?", b.base_url)[0][0]
    assert 0 < answered_by_b < 10
    sent = a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions")
    b.loaded_model = "Llama-3.2-1B"
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    again = a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions") - sent
    assert again == answered_by_b
    # the old answers stay as history next to the new ones; a third run sends nothing
    assert query(pipeline, "SELECT count(*) FROM chat_completions")[0][0] == 10 + answered_by_b
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    assert a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions") - sent == again


def test_answers_given_while_a_nodes_info_failed_are_not_sent_again_once_it_answers(make_node, make_pipeline) -> None:
    a, b = make_node("nexus"), make_node("nexus", failing_paths=("/v1/info",))
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    unknown = query(pipeline, "SELECT count(*) FROM chat_completions WHERE node_url = ? AND info_hash IS NULL",
                    b.base_url)[0][0]
    assert unknown > 0  # B answered while it could not say its configuration
    sent = a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions")
    b.failing_paths = ()
    ledger = load(pipeline, "chat_completions", base_url=[a.base_url, b.base_url], prompts=PROMPTS)
    assert a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions") == sent
    assert ledger.count("skipped") == 10


def test_no_drift_after_a_model_swap_sends_nothing(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS)
    node.loaded_model = "Qwen3-4B"
    ledger = load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS, drift=False)
    assert node.requests_to("/v1/chat/completions") == 10
    assert ledger.count("skipped") == 10 and ledger.count("completed") == 0


def test_a_failing_pool_cell_answered_by_a_compare_run_is_no_longer_failing(make_node, make_pipeline) -> None:
    node = make_node("rag", outage=503)
    pipeline = make_pipeline()
    ledger = load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:3], max_attempts=1,
                  retry_rounds=0)
    assert ledger.failing == 3
    node.outage = None
    load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:3], compare_nodes=True)
    # the pool run finds its cells done (the compare run's rows answer them): their failure rows go, nothing is sent
    ledger = load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:3])
    assert ledger.count("skipped") == 3 and ledger.failing == 0
    assert node.requests_to("/v1/chat/completions") == 3 + 3
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]


def test_a_cell_failing_in_one_shards_pipeline_is_cleared_by_another_shard(make_node, tmp_path: Path) -> None:
    node = make_node("rag", outage=503)
    prompts = [f"Prompt {i}" for i in range(8)]

    def shard(name: str) -> dlt.Pipeline:  # one DuckDB file, one pipeline (and dlt state) per shard
        return dlt.pipeline(name, destination=dlt.destinations.duckdb(str(tmp_path / "shared.duckdb")),
                            dataset_name="gaia_data", pipelines_dir=str(tmp_path / "pipelines"))

    for i in range(2):
        load(shard(f"two{i}"), "chat_completions", base_url=node.base_url, prompts=prompts, shard=f"{i}/2",
             max_attempts=1, retry_rounds=0)
    assert query(shard("two0"), "SELECT count(*) FROM failed_requests") == [(8,)]
    node.outage = None
    for i in range(3):  # resharded: cells move to pipelines whose dlt state never saw them fail
        load(shard(f"three{i}"), "chat_completions", base_url=node.base_url, prompts=prompts, shard=f"{i}/3")
    assert query(shard("two0"), "SELECT count(*) FROM chat_completions") == [(8,)]
    assert query(shard("two0"), "SELECT count(*) FROM failed_requests") == [(0,)]


# --- 6: every input is its own cell; an id names one input ------------------------------------------------------


def test_two_lines_with_the_same_body_and_different_custom_ids_are_two_rows(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    lines = [{"custom_id": "a", "messages": [{"role": "user", "content": "Hello?"}]},
             {"custom_id": "b", "messages": [{"role": "user", "content": "Hello?"}]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.jsonl", "--resources",
                     "chat_completions")
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        ids = con.execute("SELECT custom_id, content FROM gaia_data.chat_completions ORDER BY 1").fetchall()
    assert ids == [("a", answer_for("Hello?", node.default_chat_model)), ("b", answer_for("Hello?", node.default_chat_model))]


def test_one_custom_id_on_two_different_prompts_is_refused_before_sending(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    lines = [{"custom_id": "a", "messages": [{"role": "user", "content": "Hello?"}]},
             {"custom_id": "a", "messages": [{"role": "user", "content": "Goodbye?"}]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "p.jsonl", "--resources",
                     "chat_completions")
    assert result.returncode == 2
    assert "p.jsonl:2" in result.stderr and "custom_id 'a'" in result.stderr and "p.jsonl:1" in result.stderr
    assert node.requests_to("/v1/chat/completions") == 0
    with pytest.raises(GaiaConfigError):
        list(gaia_source(base_url=node.base_url, prompts=[{"prompt": "x", "custom_id": "z"},
                                                          {"prompt": "y", "custom_id": "z"}]).resources)


# --- 8: completion clears failure for the same cell, whatever request carried it -----------------------------------


def test_a_failed_batch_is_cleared_text_by_text_when_its_texts_load(make_node, make_pipeline) -> None:
    node = make_node("rag", outage=503)
    pipeline = make_pipeline()
    texts = [f"text {i}" for i in range(5)]
    ledger = load(pipeline, "embeddings", base_url=node.base_url, texts=texts, max_attempts=1, retry_rounds=0)
    assert ledger.count("failed") == 5
    assert query(pipeline, "SELECT count(*), count(DISTINCT request_id) FROM failed_requests") == [(5, 5)]
    node.outage = None
    ledger = load(pipeline, "embeddings", base_url=node.base_url, texts=texts)
    assert ledger.failing == 0 and ledger.count("completed") == 5
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]


def test_a_too_long_text_later_loaded_in_chunks_is_no_longer_failing(make_node, tmp_path: Path) -> None:
    node = make_node("rag", embedding_ctx=50)
    texts = [{"id": "short", "text": "a short text"}, {"id": "long", "text": document(120)}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    first = run_cli(tmp_path, "--base-url", node.base_url, "--texts-file", "t.jsonl", "--resources", "embeddings")
    assert first.returncode == 1 and "1 request(s) of this run are failing" in first.stderr
    second = run_cli(tmp_path, "--base-url", node.base_url, "--texts-file", "t.jsonl", "--resources", "embeddings",
                     "--chunk-size", "200")
    assert second.returncode == 0, second.stderr + second.stdout
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM gaia_data.failed_requests").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM gaia_data.embeddings WHERE document_id = 'long'").fetchone()[0] > 1


def test_a_prompt_failing_then_answered_under_a_new_configuration_is_not_failing(make_node, make_pipeline) -> None:
    node = make_node("rag", outage=503)
    pipeline = make_pipeline()
    ledger = load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:2], max_attempts=1,
                  retry_rounds=0, chat_model="m")
    assert ledger.failing == 2
    node.outage, node.loaded_model = None, "Qwen3-4B"
    ledger = load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:2], chat_model="m")
    assert ledger.failing == 0 and ledger.count("completed") == 2
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(0,)]


# --- 9: a gateway's HTML 404 on the first request is retried, not taken for a missing endpoint ---------------------


class _FirstChat404(http.server.BaseHTTPRequestHandler):
    """A gateway in front of a node that answers the first chat POST with its HTML 404 page, then forwards."""

    upstream = ""
    seen = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        if self.path.endswith("/chat/completions") and type(self).seen == 0:
            type(self).seen += 1
            self.rfile.read(int(self.headers.get("content-length", 0)))
            page = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        self._forward("POST")

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0))) if method == "POST" else None
        answer = httpx.request(method, self.upstream + self.path, content=body,
                               headers={"Content-Type": "application/json"} if body else None)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)


def test_an_html_404_on_the_first_request_is_retried(make_node, make_pipeline) -> None:
    node = make_node("rag")
    handler = type("Gateway", (_FirstChat404,), {"upstream": node.root_url, "seen": 0})
    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        pipeline = make_pipeline()
        ledger = load(pipeline, "chat_completions", base_url=f"http://127.0.0.1:{gateway.server_address[1]}/v1",
                      prompts=PROMPTS[:3])
    finally:
        gateway.shutdown()
    assert handler.seen == 1 and ledger.count("completed") == 3 and ledger.failing == 0
    assert query(pipeline, "SELECT count(*) FROM chat_completions WHERE status = 'completed'") == [(3,)]


def test_a_named_resource_whose_endpoint_is_missing_fails_the_run(make_node, tmp_path: Path) -> None:
    node = make_node("node06")  # gaia-nexus: no /v1/retrieve
    (tmp_path / "q.txt").write_text("Where is Paris?\nWhat is dlt?\n")
    named = run_cli(tmp_path, "--base-url", node.base_url, "--queries-file", "q.txt", "--resources", "retrieve")
    assert named.returncode == 1 and "2 request(s) of this run are failing" in named.stderr
    assert node.requests_to("/v1/retrieve") == 1
    (tmp_path / "p.txt").write_text("What is dlt?\n")  # not named: with something else to send, a note and exit 0
    default = run_cli(tmp_path, "--base-url", node.base_url, "--queries-file", "q.txt", "--prompts-file", "p.txt",
                      "--pipeline-name", "other")
    assert default.returncode == 0, default.stderr
    assert f"retrieve: not run on {node.base_url}, which has no POST /v1/retrieve (HTTP 405)" in default.stdout
    # (with nothing else to send, the run fails in one line: tests/test_errors.py)


# --- 16, 17: what rows say is what was sent ------------------------------------------------------------------------


def test_sample_rows_say_the_seed_each_sample_was_sent_with(make_node, make_pipeline) -> None:
    node = make_node("llama", record_bodies=True)
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=node.base_url, prompts=PROMPTS[:1], samples=3, seed=42)
    rows = table_rows(pipeline, "chat_completions", "sample_index")
    assert [json.loads(r["params"])["seed"] for r in rows] == [42, 43, 44]
    assert sorted(b["seed"] for b in node.bodies("/v1/chat/completions")) == [42, 43, 44]
    other, fresh = make_pipeline(), make_node("llama", record_bodies=True)
    load(other, "chat_completions", base_url=fresh.base_url, prompts=PROMPTS[:1], samples=3)
    assert len(fresh.bodies("/v1/chat/completions")) == 3
    assert all("seed" not in b for b in fresh.bodies("/v1/chat/completions"))
    assert all(r["params"] is None or "seed" not in json.loads(r["params"])
               for r in table_rows(other, "chat_completions", "sample_index"))


def test_a_split_batch_counts_every_send_its_texts_went_through(make_node, make_pipeline) -> None:
    node = make_node("rag", embedding_ctx=20)
    pipeline = make_pipeline()
    texts = ["one two", "three four", "five six", document(40)]
    ledger = load(pipeline, "embeddings", base_url=node.base_url, texts=texts, embedding_batch_size=4)
    assert node.requests_to("/v1/embeddings") == 5  # 4 → 2 + 2 → the bad half 1 + 1
    attempts = dict(query(pipeline, "SELECT text, attempts FROM embeddings"))
    assert attempts["one two"] == 2 and attempts["five six"] == 3
    assert query(pipeline, "SELECT attempts FROM failed_requests") == [(3,)]
    assert ledger.count("completed") == 3 and ledger.count("failed") == 1


# --- 19: search finds vectors by the model asked or the model that answered ---------------------------------------


def test_search_finds_vectors_by_the_model_asked_for_or_answered(make_node, make_pipeline) -> None:
    node = make_node("rag")
    pipeline = make_pipeline()
    load(pipeline, "embeddings", base_url=node.base_url, texts=["Paris is in France", "Primes are odd"],
         embedding_model="nomic-embed")
    answered = query(pipeline, "SELECT DISTINCT model FROM embeddings")[0][0]
    assert answered != "nomic-embed"
    for model in ("nomic-embed", answered):
        found = search(pipeline, "Paris", k=1, model=model, base_url=node.base_url)
        assert list(found["text"]) == ["Paris is in France"], model


# --- export: the answers to this run's inputs, one line per cell and node --------------------------------------------


def test_an_edited_prompt_exports_its_new_answer_once(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"custom_id": "x", "prompt": "Hi"}) + "\n")
    args = ["--base-url", node.base_url, "--prompts-file", "p.jsonl", "--resources", "chat_completions"]
    assert run_cli(tmp_path, *args).returncode == 0
    prompts.write_text(json.dumps({"custom_id": "x", "prompt": "Hello there"}) + "\n")
    result = run_cli(tmp_path, *args, "--export-batch-output", "out.jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(line["custom_id"], line["response"]["body"]["choices"][0]["message"]["content"]) for line in lines] == [
        ("x", answer_for("Hello there", node.default_chat_model))]


def test_answers_of_a_node_no_longer_in_the_pool_are_kept_and_not_sent_again(make_node, make_pipeline) -> None:
    a, b = make_node("nexus"), make_node("nexus", loaded_model="Llama-3.2-1B")
    pipeline = make_pipeline()
    load(pipeline, "chat_completions", base_url=a.base_url, prompts=PROMPTS[:3])
    a.stop()  # the node is gone (a demo's emulator, a node taken out of the list): the next run uses another
    ledger = load(pipeline, "chat_completions", base_url=b.base_url, prompts=PROMPTS[:3])
    assert ledger.count("skipped") == 3 and b.requests_to("/v1/chat/completions") == 0
    assert query(pipeline, "SELECT DISTINCT node_url FROM chat_completions") == [(a.base_url,)]


def test_recording_cells_together_is_recording_them_one_by_one() -> None:
    """``Ledger.record_many`` (a batch's texts, a batch of cells found done) ends where ``record`` per cell ends:
    outcomes, replaced outcomes, empty answers, sends counted once, the first errors, the cells asked for."""
    from gaia_source.ledger import COMPLETED, FAILED, REFUSED, SKIPPED, Cell

    cell = Cell("chat_completions", {"messages": [{"role": "user", "content": "hi"}]})
    steps: List[Any] = [
        (["a", "b", "c"], FAILED, 2, "boom", None, (True, False)),
        (["c", "h"], FAILED, 1, "cut", None, (True, True)),
        (["h"], FAILED, 1, "cut", None, (False, True)),
        (["a", "d"], COMPLETED, 1, None, None, (False, False)),
        (["b", "e", "f", "g"], REFUSED, 0, "refused", None, (False, False)),
        ([cell.key], SKIPPED, 0, None, [cell], (False, False)),
        (["c", "c"], COMPLETED, 3, None, None, (False, False)),
        ([], COMPLETED, 5, None, None, (False, False)),
    ]
    one, many = Ledger(), Ledger()
    for keys, outcome, attempts, error, cells, (empty, cut) in steps:
        for i, key in enumerate(keys):
            one.record("r", key, outcome, attempts if i == 0 else 0, error, cells[i] if cells else None, empty, cut)
        many.record_many("r", keys, outcome, attempts if keys else 0, error, cells, empty, cut)
        assert [(o, t.outcomes, t.attempts, t.errors, t.empty, t.cut, t.model_empty)
                for o, t in one.tallies().items()] == \
            [(o, t.outcomes, t.attempts, t.errors, t.empty, t.cut, t.model_empty) for o, t in many.tallies().items()]
        assert one.cells("r") == many.cells("r") and one.failing == many.failing
        assert all(one.outcome("r", k) == many.outcome("r", k) for k in "abcdefg")
    with pytest.raises(ValueError):
        many.record_many("r", ["x"], COMPLETED, empty=True)
