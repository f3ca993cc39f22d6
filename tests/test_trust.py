"""No row lost or doubled silently: the situations that used to write wrong or incomplete tables with exit code 0.

Each test is one case of the trust redesign: a gateway's transient 404 mid-run, a dead node in a pool, attempts
counted, two runs in one process after a failure, a failed "already loaded" lookup, samples only with --demo.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, List

import dlt
import pytest
from conftest import counts, data_tables, query, run_cli, table_rows
from dlt.pipeline.exceptions import PipelineStepFailed

from gaia_source import GaiaAuthError, GaiaLookupError, GaiaNodeUnusable, gaia_source
from gaia_source.transformers import chat_completions_from

FAST = {"retry_backoff": 0.01, "retry_max_wait": 0.05}


def _cause(exc: BaseException, kind: type) -> BaseException:
    while exc is not None and not isinstance(exc, kind):
        exc = getattr(exc, "exception", None) or exc.__cause__ or exc.__context__
    assert exc is not None, f"no {kind.__name__} in the chain"
    return exc


def _first_draw_passes(rate: float) -> int:
    """A fault seed whose first draw is no fault: the resource's first request (the probe) gets through."""
    return next(seed for seed in range(1000) if random.Random(seed).random() >= rate)


def _dead_url() -> str:
    """A loopback URL nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# 1. A gateway's transient 404 costs time, not the rest of the resource ------------------------------------------


def test_a_transient_gateway_404_mid_run_loads_every_prompt(make_node, tmp_path: Path) -> None:
    node = make_node("nexus", fault_rate=0.3, fault_kinds=("404",), fault_seed=_first_draw_passes(0.3))
    (tmp_path / "prompts.txt").write_text("".join(f"Question {i}?\n" for i in range(40)))
    env = {"SOURCES__GAIA_SOURCE__RETRY_BACKOFF": "0.01", "SOURCES__GAIA_SOURCE__CHAT_MODEL": "Qwen3-4B"}
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "prompts.txt",
                     "--resources", "chat_completions", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.stats["fault 404"] > 5  # the gateway really did answer 404s mid-run
    assert "Skipping resource" not in result.stderr
    assert counts(tmp_path / "gaia_pipeline.duckdb") == {"chat_completions": 40}


def test_a_404_that_persists_after_the_first_request_is_a_failed_request(make_node, make_pipeline) -> None:
    node = make_node("nexus", latency_ms=300)

    def lose_the_route() -> None:  # once the first request is in (and its fault draw done), the route is gone
        while node.requests_to("/v1/chat/completions") == 0:
            time.sleep(0.005)
        time.sleep(0.05)
        node.fault_rate, node.fault_kinds = 1.0, ("404",)

    gateway = threading.Thread(target=lose_the_route, daemon=True)
    gateway.start()
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=[f"Question {i}?" for i in range(6)], chat_model="Qwen3-4B", retry_rounds=1,
                         max_attempts=2, max_concurrency=1, **FAST)
    pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
    gateway.join(timeout=5)
    assert query(pipeline, "SELECT content FROM chat_completions") == [("Qwen3-4B answers: Question 0?",)]
    failed = table_rows(pipeline, "failed_requests", "request_id")
    assert len(failed) == 5 and {(f["http_status"], f["attempts"]) for f in failed} == {(404, 4)}  # 2 rounds of 2
    assert all("HTML page: 404 Not Found" in f["error_message"] for f in failed)
    assert node.requests_to("/v1/chat/completions") == 1 + 5 * 4


# 2. Several nodes, one down: retries move to the healthy node ----------------------------------------------------


def test_one_dead_node_in_a_pool_loses_nothing(make_node, make_pipeline) -> None:
    healthy, dead = make_node("rag"), _dead_url()
    pipeline = make_pipeline()
    source = gaia_source(base_url=[healthy.base_url, dead], prompts=[f"Question {i}?" for i in range(40)],
                         chat_model="Llama-3.2-3B-Instruct", max_attempts=3, **FAST)
    pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
    assert query(pipeline, "SELECT count(*), count(DISTINCT request_id), min(node_url), max(node_url) "
                           "FROM chat_completions WHERE status = 'completed'") == [
        (40, 40, healthy.base_url, healthy.base_url)]  # rows name the node that finally answered
    assert "failed_requests" not in data_tables(pipeline)
    assert healthy.requests_to("/v1/chat/completions") == 40


def test_when_every_node_refuses_the_connection_the_run_stops_at_once_naming_each(make_pipeline) -> None:
    dead = [_dead_url(), _dead_url()]
    pipeline = make_pipeline()
    source = gaia_source(base_url=dead, prompts=["a", "b"], chat_model="m", max_attempts=4, retry_rounds=2, **FAST)
    with pytest.raises(PipelineStepFailed) as info:
        pipeline.run(source.with_resources("chat_completions"))
    message = str(_cause(info.value, GaiaNodeUnusable))
    assert message.startswith("no node can be used: cannot connect to ")
    assert all(f"cannot connect to {url} (ConnectError: " in message for url in dead)
    # nothing loaded, nothing pending: the nodes failed, not the prompts
    assert pipeline.default_schema_name is None and not pipeline.has_pending_data


# 3. Every send is counted -----------------------------------------------------------------------------------------


def test_attempts_and_latency_count_every_send(make_node, make_pipeline) -> None:
    node = make_node("nexus", fault_rate=0.5, fault_kinds=("503",), fault_seed=_first_draw_passes(0.5))
    pipeline = make_pipeline()
    source = gaia_source(base_url=node.base_url, prompts=[f"Question {i}?" for i in range(30)], chat_model="Qwen3-4B",
                         max_attempts=10, **FAST)
    pipeline.run(source.with_resources("chat_completions")).raise_on_failed_jobs()
    posts = node.requests_to("/v1/chat/completions")
    [(rows, attempts, retried, consistent)] = query(
        pipeline, "SELECT count(*), sum(attempts), count(*) FILTER (WHERE attempts > 1), "
                  "bool_and(latency_ms >= attempt_latency_ms) FROM chat_completions")
    assert rows == 30 and posts > 40 and attempts == posts  # 50 % answered 503: every POST is in some row's attempts
    assert retried > 5 and consistent


# 4. A long-lived process: a failure in one run never changes the next ---------------------------------------------


def test_the_source_recovers_in_the_same_process_after_a_401_and_a_404(make_node, make_pipeline) -> None:
    node = make_node("nexus", api_key="key-one")
    pipeline = make_pipeline()
    args = {"base_url": node.base_url, "api_key": "key-one", "prompts": ["Is it back?"], "chat_model": "Qwen3-4B"}
    node.api_key = "key-two"  # the key was rotated on the server
    with pytest.raises(PipelineStepFailed) as info:
        pipeline.run(gaia_source(**args).with_resources("chat_completions"))
    _cause(info.value, GaiaAuthError)
    node.api_key, node.outage = "key-one", 404  # rotated back; now every route is gone: not an API any more
    with pytest.raises(PipelineStepFailed) as info:
        pipeline.run(gaia_source(**args).with_resources("chat_completions"))
    assert "is not an OpenAI-compatible API" in str(_cause(info.value, GaiaNodeUnusable))
    node.outage = None
    pipeline.run(gaia_source(**args).with_resources("chat_completions")).raise_on_failed_jobs()
    assert query(pipeline, "SELECT content FROM chat_completions") == [("Qwen3-4B answers: Is it back?",)]


def test_a_transformer_recovers_in_the_same_process_after_a_401_and_a_404(make_node, make_pipeline) -> None:
    node = make_node("nexus", api_key="key-one")
    pipeline = make_pipeline()
    questions = [{"id": i, "q": f"Question {i}?"} for i in range(3)]
    transformer = chat_completions_from(prompt_field="q", id_field="id", base_url=node.base_url, api_key="key-one",
                                        chat_model="Qwen3-4B")

    @dlt.resource(name="questions", selected=False)
    def pages() -> Iterator[List[dict]]:
        yield questions[:2]
        yield questions[2:]

    def run() -> None:  # the same transformer object, as a notebook or an Airflow worker keeps it
        pipeline.run(pages | transformer).raise_on_failed_jobs()

    node.api_key = "key-two"
    with pytest.raises(PipelineStepFailed) as info:
        run()
    _cause(info.value, GaiaAuthError)
    node.api_key, node.outage = "key-one", 404  # every route gone: the first request and the check of /models stop it
    node.reset_stats()
    with pytest.raises(PipelineStepFailed) as info:
        run()
    _cause(info.value, GaiaNodeUnusable)
    assert node.requests_to("/v1/chat/completions") == node.requests_to("/v1/models") == 1
    node.outage = None
    run()
    assert query(pipeline, "SELECT custom_id, content FROM chat_completions ORDER BY custom_id") == [
        (str(i), f"Qwen3-4B answers: Question {i}?") for i in range(3)]


# 5. A failed "already loaded" lookup stops the run before anything is sent ----------------------------------------


def test_a_failed_lookup_sends_nothing_and_doubles_nothing(make_node, make_pipeline) -> None:
    node = make_node("rag", dim=16)
    pipeline = make_pipeline()
    texts = ["Paris is on the Seine.", "DuckDB stores vectors.", "Gaia nodes serve models."]

    def run(items: List[str]) -> None:
        pipeline.run(gaia_source(base_url=node.base_url, texts=items).with_resources("embeddings")).raise_on_failed_jobs()

    run(texts)
    with pipeline.sql_client() as sql:  # a warehouse blip: the table is there but cannot be read
        sql.execute_sql("ALTER TABLE gaia_data.embeddings RENAME TO embeddings_kept")
        sql.execute_sql("CREATE VIEW gaia_data.embeddings AS SELECT * FROM gaia_data.embeddings_kept "
                        "WHERE error('warehouse blip: connection reset') IS NULL")
    node.reset_stats()
    with pytest.raises(PipelineStepFailed) as info:
        run([*texts, "A new text."])
    message = str(_cause(info.value, GaiaLookupError))
    assert "table 'embeddings'" in message and "duckdb" in message and "warehouse blip: connection reset" in message
    assert node.requests_to("/v1/embeddings") == 0  # nothing was sent, so nothing can be doubled
    with pipeline.sql_client() as sql:
        sql.execute_sql("DROP VIEW gaia_data.embeddings")
        sql.execute_sql("ALTER TABLE gaia_data.embeddings_kept RENAME TO embeddings")
    run([*texts, "A new text."])
    assert query(pipeline, "SELECT count(*), count(DISTINCT embedding_id) FROM embeddings") == [(4, 4)]
    assert node.requests_to("/v1/embeddings") == 1  # only the new text


# 6. Samples only with --demo ---------------------------------------------------------------------------------------


def test_a_real_run_sends_only_what_was_configured(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    (tmp_path / "prompts.txt").write_text("Is DuckDB fast?\nWhat is a knowledge base?\n")
    result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", "prompts.txt")
    assert result.returncode == 0, result.stderr
    assert node.requests_to("/v1/embeddings") == node.requests_to("/v1/retrieve") == 0  # no built-in samples
    assert node.requests_to("/v1/chat/completions") == 4  # 2 prompts, plain and streamed
    db = tmp_path / "gaia_pipeline.duckdb"
    assert counts(db) == {"models": 2, "info": 1, "chat_completions": 2, "chat_completions_stream": 2}
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        asked = {r[0] for r in con.execute("SELECT messages->>'$[0].content' FROM gaia_data.chat_completions").fetchall()}
    assert asked == {"Is DuckDB fast?", "What is a knowledge base?"}
    assert "not run (no inputs): embeddings (--texts-file), retrieve (--queries-file)" in result.stdout
