"""Evaluation runs: nodes × models side by side, repeated samples, expected answers and labels, retrieval hit rates,
and drift — over HTTP to emulated nodes, into DuckDB, values asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import duckdb
import pytest
from conftest import query, run_cli, table_rows

from gaia_source import gaia_source
from gaia_source.emulator import KNOWLEDGE_BASE, answer_for
from gaia_source.ledger import Ledger
from gaia_source.rows import source_matches

PROMPTS = ["What is the capital of France?", "What does dlt do?"]


# --- nodes × models ---------------------------------------------------------------------------------------------


def test_compare_nodes_sends_every_prompt_to_every_node_and_model(make_node, make_pipeline) -> None:
    old, new = make_node("rag"), make_node("node06")
    pipeline = make_pipeline()

    def run(prompts):
        source = gaia_source(base_url=[old.base_url, new.base_url], prompts=prompts, compare_nodes=True,
                             chat_model="model-a,model-b")
        pipeline.run(source.with_resources("chat_completions"))

    run(PROMPTS)
    rows = table_rows(pipeline, "chat_completions", "request_id")
    assert len(rows) == 2 * 2 * 2  # prompts x nodes x models
    cells = {(json.loads(r["messages"])[-1]["content"], r["node_url"], r["model_requested"]): r for r in rows}
    for prompt in PROMPTS:
        for node in (old, new):
            for model in ("model-a", "model-b"):
                row = cells[(prompt, node.base_url, model)]
                # a Gaia node answers with its loaded model, whatever is asked: the row says which
                assert row["model"] == node.default_chat_model
                assert row["content"] == answer_for(prompt, node.default_chat_model)
    # one prompt, one prompt_id across its four cells (nodes and models): the join key of a side-by-side view
    assert len({r["prompt_id"] for r in rows}) == 2 and len({r["request_id"] for r in rows}) == 8
    assert old.requests_to("/v1/chat/completions") == 4 and new.requests_to("/v1/chat/completions") == 4
    # a re-run with one more prompt sends only its four cells
    run([*PROMPTS, "Name a river"])
    assert old.requests_to("/v1/chat/completions") == 6 and new.requests_to("/v1/chat/completions") == 6
    assert query(pipeline, "SELECT count(*) FROM chat_completions") == [(12,)]


def test_without_compare_nodes_prompts_are_spread_once(make_node, make_pipeline) -> None:
    a, b = make_node("nexus"), make_node("nexus")
    pipeline = make_pipeline()
    prompts = [f"Question {i}" for i in range(8)]
    pipeline.run(gaia_source(base_url=[a.base_url, b.base_url], prompts=prompts).with_resources("chat_completions"))
    sent = a.requests_to("/v1/chat/completions") + b.requests_to("/v1/chat/completions")
    assert sent == 8 and query(pipeline, "SELECT count(*), count(DISTINCT prompt_id) FROM chat_completions") == [(8, 8)]


def test_export_writes_one_batch_file_per_node_and_model(make_node, tmp_path: Path) -> None:
    a, b = make_node("rag"), make_node("llama")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    result = run_cli(tmp_path, "--base-url", f"{a.base_url},{b.base_url}", "--compare-nodes", "--prompts-file",
                     "prompts.txt", "--resources", "chat_completions", "--chat-model", "m1,m2",
                     "--export-batch-output", "out.jsonl")
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("out.*.jsonl"))
    assert len(files) == 4, result.stdout
    for file in files:
        lines = [json.loads(line) for line in file.read_text().splitlines()]
        node = a if f"{a.port}" in file.name else b
        assert len(lines) == 2 and {line["response"]["body"]["model"] for line in lines} == {node.default_chat_model}
        model = "m1" if file.name.endswith(".m1.jsonl") else "m2"
        assert file.name.endswith(f".{model}.jsonl")


def test_export_after_switching_nodes_writes_one_file_of_this_runs_answers(make_node, tmp_path: Path) -> None:
    """The dataset holds answers of an earlier node; this run's prompts are answered by another one only: the export
    is the one file asked for, with this run's lines, not a file per node the dataset ever heard from (one of them
    empty)."""
    first, second = make_node("rag"), make_node("llama")
    (tmp_path / "old.txt").write_text(PROMPTS[0] + "\n")
    (tmp_path / "new.txt").write_text(PROMPTS[1] + "\n")
    for node, prompts in ((first, "old.txt"), (second, "new.txt")):
        result = run_cli(tmp_path, "--base-url", node.base_url, "--prompts-file", prompts, "--resources",
                         "chat_completions", "--export-batch-output", "out.jsonl")
        assert result.returncode == 0, result.stderr
    assert sorted(f.name for f in tmp_path.glob("out*.jsonl")) == ["out.jsonl"]
    [line] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    body = line["response"]["body"]
    assert (body["model"], body["choices"][0]["message"]["content"]) == (
        second.default_chat_model, answer_for(PROMPTS[1], second.default_chat_model))
    assert "wrote 1 Batch output line(s) from chat_completions to out.jsonl" in result.stdout


def test_export_writes_a_file_of_error_lines_for_a_node_that_failed_every_request(make_node, tmp_path: Path) -> None:
    good, down = make_node("rag"), make_node("llama", outage=500)
    prompts = {"q1": PROMPTS[0], "q2": PROMPTS[1], "q3": "What is a Gaia domain?"}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"custom_id": c, "prompt": p}) + "\n"
                                                    for c, p in prompts.items()))
    result = run_cli(tmp_path, "--base-url", f"{good.base_url},{down.base_url}", "--compare-nodes", "--prompts-file",
                     "prompts.jsonl", "--resources", "chat_completions", "--chat-model", "m1",
                     "--export-batch-output", "out.jsonl", "--allow-failed-requests",
                     env={"SOURCES__GAIA_SOURCE__MAX_ATTEMPTS": "1", "SOURCES__GAIA_SOURCE__RETRY_ROUNDS": "0"})
    assert result.returncode == 0, result.stderr
    assert down.requests_to("/v1/chat/completions") == 3
    files = {f.name: [json.loads(line) for line in f.read_text().splitlines()] for f in tmp_path.glob("out.*.jsonl")}
    # named by the model that answered; the node that answered nothing by the model asked
    answered = f"out.127.0.0.1_{good.port}_v1.{good.default_chat_model}.jsonl"
    failed = f"out.127.0.0.1_{down.port}_v1.m1.jsonl"
    assert sorted(files) == sorted([answered, failed]) and not (tmp_path / "out.jsonl").exists()
    assert [(line["custom_id"], line["response"]["body"]["choices"][0]["message"]["content"], line["error"])
            for line in files[answered]] == [(c, answer_for(p, good.default_chat_model), None)
                                             for c, p in sorted(prompts.items())]
    assert [(line["custom_id"], line["response"]["status_code"], line["error"]["code"]) for line in files[failed]] == [
        (c, 500, "GaiaRequestError") for c in sorted(prompts)]
    assert all(down.base_url in line["error"]["message"] and "emulated outage" in line["error"]["message"]
               for line in files[failed])
    assert f"wrote 3 Batch output line(s) from chat_completions to {failed}" in result.stdout


def test_export_puts_inputs_refused_for_a_compared_node_in_that_nodes_file(make_node, make_pipeline,
                                                                          tmp_path: Path) -> None:
    from gaia_source.batch import export_batch_output_per_target

    a, b = make_node("amd"), make_node("amd")
    refused = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]  # AMD GAIA refuses it
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=[a.base_url, b.base_url], compare_nodes=True, chat_model="gaia",
                             prompts=[PROMPTS[0], refused]).with_resources("chat_completions"))
    written = export_batch_output_per_target(pipeline, str(tmp_path / "out.jsonl"))
    # comparing nodes, the refused prompt is a cell of each node: each node's file has its answer and the refusal
    assert written == {str(tmp_path / f"out.127.0.0.1_{node.port}_v1.gaia.jsonl"): 2 for node in (a, b)}
    for node in (a, b):
        lines = [json.loads(line) for line in
                 (tmp_path / f"out.127.0.0.1_{node.port}_v1.gaia.jsonl").read_text().splitlines()]
        refusals = [line for line in lines if line["error"]]
        assert [(line["response"], line["error"]["code"]) for line in refusals] == [(None, "GaiaInputRefused")]
        assert "last message is a 'assistant' message" in refusals[0]["error"]["message"]


# --- samples ----------------------------------------------------------------------------------------------------


def test_samples_are_rows_of_their_own_and_a_rerun_fills_only_the_missing(make_node, make_pipeline) -> None:
    node = make_node("llama", record_bodies=True)
    pipeline = make_pipeline()

    def run(samples: int) -> None:
        source = gaia_source(base_url=node.base_url, prompts=PROMPTS, samples=samples, seed=7)
        pipeline.run(source.with_resources("chat_completions"))

    run(3)
    rows = table_rows(pipeline, "chat_completions", "request_id")
    assert sorted((json.loads(r["messages"])[-1]["content"], r["sample_index"]) for r in rows) == [
        (p, i) for p in sorted(PROMPTS) for i in range(3)]
    assert len({r["request_id"] for r in rows}) == 6 and len({r["prompt_id"] for r in rows}) == 2
    # sample i is sent with seed 7 + i, and its row's params say so
    assert sorted(b["seed"] for b in node.bodies("/v1/chat/completions")) == [7, 7, 8, 8, 9, 9]
    assert sorted((r["sample_index"], json.loads(r["params"])["seed"]) for r in rows) == [
        (i, 7 + i) for i in range(3) for _ in range(2)]
    run(5)  # two more samples per prompt: only those are sent
    assert node.requests_to("/v1/chat/completions") == 6 + 4
    assert query(pipeline, "SELECT sample_index, count(*) FROM chat_completions GROUP BY 1 ORDER BY 1") == [
        (i, 2) for i in range(5)]
    run(5)  # complete: nothing is sent
    assert node.requests_to("/v1/chat/completions") == 10


def test_a_run_without_samples_is_sample_0_of_a_later_run_with_samples(make_node, make_pipeline) -> None:
    """A prompt sent once is sample 0 of the same cell a run with samples asks for: raising ``samples`` later sends
    only the new samples."""
    node = make_node("rag")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS).with_resources("chat_completions"))
    assert {r["sample_index"] for r in table_rows(pipeline, "chat_completions", "request_id")} == {0}
    pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS, samples=2).with_resources("chat_completions"))
    assert node.requests_to("/v1/chat/completions") == 2 + 2
    assert query(pipeline, "SELECT sample_index, count(*) FROM chat_completions GROUP BY 1 ORDER BY 1") == [(0, 2), (1, 2)]


# --- expected answers and labels ----------------------------------------------------------------------------------


def test_expected_and_metadata_land_next_to_the_answer(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("rag")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        json.dumps({"custom_id": "q1", "prompt": "What is the capital of France?", "expected": "Paris",
                    "metadata": {"topic": "geography", "difficulty": 1}}) + "\n"
        + json.dumps({"custom_id": "q2", "method": "POST", "url": "/v1/chat/completions", "expected": "warehouses",
                      "body": {"messages": [{"role": "user", "content": "What does dlt do?"}]}}) + "\n")
    csv = tmp_path / "prompts.csv"
    csv.write_text("custom_id,prompt,expected,topic,owner\nc1,Name a river,Seine,geography,ana\n")
    pipeline = make_pipeline()
    for prompts_file in (jsonl, csv):
        pipeline.run(gaia_source(base_url=node.base_url, prompts_file=str(prompts_file)).with_resources(
            "chat_completions", "chat_completions_stream"))
    for table in ("chat_completions", "chat_completions_stream"):
        rows = {r["custom_id"]: r for r in table_rows(pipeline, table, "custom_id")}
        assert {k: (r["expected"], r["metadata"] and json.loads(r["metadata"])) for k, r in rows.items()} == {
            "q1": ("Paris", {"topic": "geography", "difficulty": 1}),
            "q2": ("warehouses", None),
            "c1": ("Seine", {"topic": "geography", "owner": "ana"}),
        }
    # a pass rate is one aggregate
    assert query(pipeline, "SELECT count(*) FILTER (WHERE contains(lower(content), lower(expected))), count(*) "
                           "FROM chat_completions WHERE expected IS NOT NULL") == [(2, 3)]


# --- retrieval evaluation ---------------------------------------------------------------------------------------


def test_hit_rank_and_hits_make_hit_rate_and_mrr_one_aggregate(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("rag", retrieve_limit=3)
    queries = tmp_path / "queries.jsonl"
    lines = [
        {"custom_id": "paris", "query": "Where is Paris located?", "expected_sources": [KNOWLEDGE_BASE[0]]},
        # an id that appears in the passage text counts too: "Le Havre" is in the Seine passage
        {"custom_id": "seine", "query": "Where does the Seine flow?", "expected_sources": ["Le Havre"]},
        {"custom_id": "miss", "query": "Where is the Eiffel Tower?", "expected_sources": ["Tokyo is in Japan."]},
        {"custom_id": "none", "query": "What is a Gaia domain?"},
    ]
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, queries_file=str(queries)).with_resources("retrieve"))
    rows = {r["custom_id"]: r for r in table_rows(pipeline, "retrieve", "custom_id")}
    # what the emulator's knowledge base returns for each query, ranked
    ranks = {cid: [p["source"] for p in node.retrieve(q)] for cid, q in
             [("paris", "Where is Paris located?"), ("seine", "Where does the Seine flow?")]}
    assert rows["paris"]["hit_rank"] == ranks["paris"].index(KNOWLEDGE_BASE[0]) + 1 == 1
    seine_rank = next(i for i, s in enumerate(ranks["seine"], 1) if "Le Havre" in s)
    assert (rows["seine"]["hit_rank"], rows["seine"]["hits"]) == (seine_rank, 1)
    assert (rows["miss"]["hit_rank"], rows["miss"]["hits"]) == (None, 0)
    assert (rows["none"]["hit_rank"], rows["none"]["hits"], rows["none"]["expected_sources"]) == (None, None, None)
    [(hit_at_3, mrr)] = query(pipeline, "SELECT avg(CASE WHEN hit_rank <= 3 THEN 1 ELSE 0 END), "
                                        "avg(coalesce(1.0 / hit_rank, 0)) FROM retrieve WHERE hits IS NOT NULL")
    assert hit_at_3 == 2 / 3 and abs(mrr - (1 + 1 / seine_rank) / 3) < 1e-9


def test_an_expected_id_matches_only_itself_not_a_longer_id(make_node, make_pipeline, tmp_path: Path) -> None:
    passages = ("[doc-12] Rivers of France: the Seine flows through Paris.\n",
                "[doc-10] Rivers of France: the Loire is the longest river.\n",
                "[doc-1] Rivers of France: the Rhone flows into the sea.\n",
                "doc-1.2 Rivers of France: the Garonne flows to Bordeaux.\n")
    node = make_node("rag", knowledge_base=passages, retrieve_limit=4, score_threshold=-1.0)
    asked = {"doc-1": "Which is the longest river?", "doc-12": "Which river flows into the sea?",
             "doc-1.2": "Which river flows through Paris?", "doc": "Which rivers does France have?"}
    ranked = {cid: [p["source"] for p in node.retrieve(question)] for cid, question in asked.items()}
    assert all(sorted(r) == sorted(passages) for r in ranked.values())  # every passage comes back, in some order
    assert ranked["doc-1"][-1] == passages[2]  # [doc-12], [doc-10] and doc-1.2 come before [doc-1]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"custom_id": cid, "query": question, "expected_sources": [cid]}) + "\n"
                               for cid, question in asked.items()))
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, queries_file=str(queries)).with_resources("retrieve"))
    rows = {r["custom_id"]: (r["hit_rank"], r["hits"]) for r in table_rows(pipeline, "retrieve", "custom_id")}
    assert rows == {
        # not [doc-12], [doc-10] or doc-1.2, which contain "doc-1"
        "doc-1": (ranked["doc-1"].index(passages[2]) + 1, 1),
        "doc-12": (ranked["doc-12"].index(passages[0]) + 1, 1),
        "doc-1.2": (ranked["doc-1.2"].index(passages[3]) + 1, 1),
        "doc": (None, 0),  # a prefix of every id is none of them
    }


@pytest.mark.parametrize(("source", "expected", "matches"), [
    ("[doc-1] The Rhone.", "doc-1", True),
    ("[doc-12] The Seine.", "doc-1", False),
    ("doc-10: The Loire.", "doc-1", False),
    ("doc-1.2 The Garonne.", "doc-1", False),  # '.' then a digit: a longer id (a version, a section)
    ("doc-1-b and doc-1_b", "doc-1", False),
    ("xdoc-1 and édoc-1", "doc-1", False),
    ("version 1.2 of the text", "2", False),
    ("as doc-1.md says", "doc-1", True),  # '.' then a letter: the id ends there
    ("see (doc-1), id:doc-1, or doc-1.", "doc-1", True),
    ("The Seine flows into the English Channel at Le Havre.\n", "Le Havre", True),
    ("The port of Le Havres", "Le Havre", False),
    ("Le Havre's port", "Le Havre", True),
    ("  A whole passage.\n", "A whole passage. ", True),
    ("Paris is in France.", "Paris is in France.", True),
    ("some text", "   ", False),
])
def test_an_expected_source_is_the_point_text_or_a_whole_token_in_it(source: str, expected: str, matches: bool) -> None:
    assert source_matches(source, expected) is matches


# --- drift --------------------------------------------------------------------------------------------------------


def test_a_changed_model_sends_pinned_prompts_again_and_keeps_both_generations(make_node, make_pipeline) -> None:
    node = make_node("node06")
    pipeline = make_pipeline()

    def run(**kwargs) -> None:  # the model name is pinned: a node swapping what it serves under it is not seen there
        pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS, chat_model="Qwen3-4B-Q5_K_M",
                                 **kwargs).with_resources("chat_completions", "info"))

    run()
    run()  # unchanged node: nothing is sent again
    assert node.requests_to("/v1/chat/completions") == 2
    node.loaded_model = "Qwen3-8B-Q4_K_M"  # the operator swaps the model under the same URL
    run(drift=False)  # who opts out keeps today's skip-forever behaviour
    assert node.requests_to("/v1/chat/completions") == 2
    run()
    assert node.requests_to("/v1/chat/completions") == 4
    rows = table_rows(pipeline, "chat_completions", "requested_at")
    assert len(rows) == 4 and len({r["info_hash"] for r in rows}) == 2
    # both generations, joinable by prompt: before/after side by side
    pairs = query(pipeline, """
        SELECT b.content, a.content FROM chat_completions b JOIN chat_completions a USING (prompt_id)
        WHERE b.model = 'Qwen3-4B-Q5_K_M' AND a.model = 'Qwen3-8B-Q4_K_M' ORDER BY 1""")
    assert pairs == sorted((answer_for(p, "Qwen3-4B-Q5_K_M"), answer_for(p, "Qwen3-8B-Q4_K_M")) for p in PROMPTS)
    # each row's info_hash is a snapshot of the info table: the drift is visible there too
    assert {h for (h,) in query(pipeline, "SELECT info_hash FROM info")} == {r["info_hash"] for r in rows}
    run()  # the new configuration is answered: nothing more is sent
    assert node.requests_to("/v1/chat/completions") == 4


def test_answers_of_a_node_no_longer_configured_are_not_sent_again(make_node, make_pipeline) -> None:
    """A prompt answered by a node that is not in this run's pool (a --demo node on another port, a node removed)
    is done: it is not sent again, and the run does not fail looking up that node's configuration."""
    old, new = make_node("rag"), make_node("rag")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=old.base_url, prompts=PROMPTS).with_resources("chat_completions", "info"))
    old.stop()
    pipeline.run(gaia_source(base_url=new.base_url, prompts=PROMPTS).with_resources("chat_completions", "info"))
    assert new.requests_to("/v1/chat/completions") == 0
    assert query(pipeline, "SELECT node_url, count(*) FROM chat_completions GROUP BY 1") == [(old.base_url, 2)]


def test_the_configuration_hash_ignores_what_a_restart_changes(make_node, make_pipeline) -> None:
    """gaia-nexus names its servers with fresh ids on each start: two identical 0.6 nodes have one info_hash."""
    a, b = make_node("node06"), make_node("node06")
    assert a.info_body() != b.info_body()  # different server ids
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=[a.base_url, b.base_url]).with_resources("info"))
    assert query(pipeline, "SELECT count(*), count(DISTINCT info_hash) FROM info") == [(2, 1)]


# --- reading an evaluation right: targets are the node and the model that answered ----------------------------------


def test_export_names_each_file_by_the_model_that_answered(make_node, make_pipeline, tmp_path: Path) -> None:
    """Discovery asks node A's model of every node; node B answers with its own, and, after its operator swaps it,
    with another: each is a file of its own, named by what answered."""
    from gaia_source.batch import export_batch_output_per_target, targets

    a, b = make_node("rag", loaded_model="Llama-3.2-3B-Instruct"), make_node("rag", loaded_model="Llama-3.2-1B-Instruct")
    pipeline = make_pipeline()

    def run() -> None:
        source = gaia_source(base_url=[a.base_url, b.base_url], prompts=[*PROMPTS, "[[fail]] Explain"],
                             compare_nodes=True, max_attempts=1, retry_rounds=0)
        pipeline.run(source.with_resources("chat_completions", "info"))

    run()
    b.loaded_model = "Qwen3-4B-Q5_K_M"
    run()
    assert targets(pipeline) == sorted([(a.base_url, "Llama-3.2-3B-Instruct", "Llama-3.2-3B-Instruct"),
                                        (b.base_url, "Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct"),
                                        (b.base_url, "Qwen3-4B-Q5_K_M", "Llama-3.2-3B-Instruct")])
    written = export_batch_output_per_target(pipeline, str(tmp_path / "out.jsonl"))
    files = {Path(path).name: [json.loads(line) for line in Path(path).read_text().splitlines()] for path in written}
    name_a, name_b = (f"out.127.0.0.1_{node.port}_v1" for node in (a, b))
    assert sorted(files) == sorted([f"{name_a}.Llama-3.2-3B-Instruct.jsonl", f"{name_b}.Llama-3.2-1B-Instruct.jsonl",
                                    f"{name_b}.Qwen3-4B-Q5_K_M.jsonl"])
    for name, model in ((f"{name_a}.Llama-3.2-3B-Instruct.jsonl", "Llama-3.2-3B-Instruct"),
                        (f"{name_b}.Llama-3.2-1B-Instruct.jsonl", "Llama-3.2-1B-Instruct"),
                        (f"{name_b}.Qwen3-4B-Q5_K_M.jsonl", "Qwen3-4B-Q5_K_M")):
        answered = sorted((line["response"]["body"]["model"], line["response"]["body"]["choices"][0]["message"]
                           ["content"]) for line in files[name] if line["error"] is None)
        assert answered == sorted((model, answer_for(p, model)) for p in PROMPTS), name
    # a failing request goes with its node's newest model; none with the old one
    assert {name: len([line for line in lines if line["error"]]) for name, lines in files.items()} == {
        f"{name_a}.Llama-3.2-3B-Instruct.jsonl": 1, f"{name_b}.Llama-3.2-1B-Instruct.jsonl": 0,
        f"{name_b}.Qwen3-4B-Q5_K_M.jsonl": 1}


def test_compared_nodes_are_graded_on_the_same_queries(make_node, make_pipeline, tmp_path: Path) -> None:
    """With compare_nodes, every query goes to every node and stays there (no failover to another node), so per-node
    hit@k compares one query set."""
    from gaia_source.evaluation import summarize

    a, b = make_node("rag", loaded_model="Llama-3.2-3B-Instruct"), make_node("rag", loaded_model="Llama-3.2-1B-Instruct")
    queries = [{"custom_id": "where", "query": "Where is Paris located?", "expected_sources": ["northern central"]},
               {"custom_id": "seine", "query": "Where does the Seine flow?", "expected_sources": ["Le Havre"]},
               {"custom_id": "tower", "query": "When was the Eiffel Tower built?", "expected_sources": ["Tokyo"]}]
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=[a.base_url, b.base_url], queries=queries, compare_nodes=True,
                             max_concurrency=4).with_resources("retrieve"))
    assert a.requests_to("/v1/retrieve") == b.requests_to("/v1/retrieve") == 3
    per_node = {}
    for node_url, custom_id, cell_id in query(pipeline, "SELECT node_url, custom_id, cell_id FROM retrieve"):
        per_node.setdefault(node_url, set()).add((custom_id, cell_id))
    assert set(per_node) == {a.base_url, b.base_url} and per_node[a.base_url] == per_node[b.base_url]
    assert len(per_node[a.base_url]) == 3
    graded = summarize(pipeline)["retrieval"]
    assert [(r["node_url"], r["queries"], r["hit_at_1"]) for r in graded] == sorted(
        (node.base_url, 3, pytest.approx(2 / 3)) for node in (a, b))


# --- compared nodes that differ in endpoints: the verdict is each node's ----------------------------------------------

QUERIES = ["Where is Paris located?", "Where does the Seine flow?", "When was the Eiffel Tower built?"]


def _outcomes(stdout: str, resource: str) -> Dict[str, int]:
    """The CLI's outcome line of ``resource`` (the table after "requests of this run")."""
    [line] = [line for line in stdout.split("requests of this run")[1].splitlines() if line.startswith(resource + " ")]
    names = ("completed", "failed", "empty", "refused", "skipped", "sends")
    return dict(zip(names, map(int, line.split()[1:]), strict=True))


def _compare_rag_and_node06(make_node, folder: Path, rag_first: bool, *extra: str):
    """A --compare-nodes run of QUERIES over a rag node (it has /v1/retrieve) and a node06 node (it answers 405)."""
    rag, node06 = make_node("rag"), make_node("node06")
    (folder / "q.txt").write_text("\n".join(QUERIES) + "\n")
    nodes = [rag, node06] if rag_first else [node06, rag]
    result = run_cli(folder, "--base-url", ",".join(n.base_url for n in nodes), "--compare-nodes",
                     "--queries-file", "q.txt", *extra)
    return rag, node06, result


def _db_rows(folder: Path, sql: str) -> list:
    with duckdb.connect(str(folder / "gaia_pipeline.duckdb"), read_only=True) as db:
        return db.sql(sql).fetchall()


@pytest.mark.parametrize("rag_first", [True, False], ids=["rag-first", "node06-first"])
def test_a_compared_node_without_the_endpoint_is_skipped_and_the_others_load(make_node, tmp_path: Path,
                                                                             rag_first: bool) -> None:
    """Not named (it runs by default): node06's retrieve cells are skipped after one request, with one note naming
    the endpoint and the node; rag's all load; nothing fails, nothing is retried, exit 0 — whichever node comes
    first."""
    rag, node06, result = _compare_rag_and_node06(make_node, tmp_path, rag_first)
    assert result.returncode == 0, result.stdout + result.stderr
    assert rag.requests_to("/v1/retrieve") == 3 and node06.requests_to("/v1/retrieve") == 1  # node06: the probe only
    assert _db_rows(tmp_path, "SELECT node_url, count(*) FROM gaia_data.retrieve GROUP BY node_url") == [
        (rag.base_url, 3)]
    assert sorted(r[0] for r in _db_rows(tmp_path, "SELECT query FROM gaia_data.retrieve")) == sorted(QUERIES)
    assert _outcomes(result.stdout, "retrieve") == {"completed": 3, "failed": 0, "empty": 0, "refused": 0,
                                                    "skipped": 0, "sends": 3}
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: retrieve")]
    assert notes == [f"note: retrieve: not run on {node06.base_url}, which has no POST /v1/retrieve (HTTP 405)"]
    tables = {r[0] for r in _db_rows(tmp_path, "SELECT table_name FROM information_schema.tables")}
    assert "failed_requests" not in tables


@pytest.mark.parametrize("rag_first", [True, False], ids=["rag-first", "node06-first"])
def test_a_named_resource_refuses_the_cells_of_the_compared_node_without_it(make_node, tmp_path: Path,
                                                                            rag_first: bool) -> None:
    """Named (--resources retrieve): each of node06's cells is a refused failed_requests row naming node06, rag's
    cells complete, and the run exits 1; nothing is sent to node06 after its probe, nor to rag in its place."""
    rag, node06, result = _compare_rag_and_node06(make_node, tmp_path, rag_first, "--resources", "retrieve")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 request(s) of this run are failing" in result.stderr
    assert rag.requests_to("/v1/retrieve") == 3 and node06.requests_to("/v1/retrieve") == 1
    assert _outcomes(result.stdout, "retrieve") == {"completed": 3, "failed": 0, "empty": 0, "refused": 3,
                                                    "skipped": 0, "sends": 4}
    answered = dict(_db_rows(tmp_path, "SELECT query, cell_id FROM gaia_data.retrieve "
                                       f"WHERE node_url = '{rag.base_url}'"))
    assert sorted(answered) == sorted(QUERIES)
    failed = _db_rows(tmp_path, "SELECT node_url, resource, http_status, error_type, attempts, cell_id, error_message "
                                "FROM gaia_data.failed_requests ORDER BY attempts, cell_id")
    assert [row[:5] for row in failed] == [(node06.base_url, "retrieve", 405, "EndpointNotAvailable", attempts)
                                           for attempts in (0, 0, 1)]
    assert sorted(row[5] for row in failed) == sorted(answered.values())  # the same cells, on the other node
    assert all(row[6].startswith(f"the node at {node06.base_url} has no POST /v1/retrieve") for row in failed)
    # a re-run asks node06 once more (its cells are failing), refuses them again, and leaves rag's answers alone
    again = run_cli(tmp_path, "--base-url", f"{rag.base_url},{node06.base_url}", "--compare-nodes", "--queries-file",
                    "q.txt", "--resources", "retrieve")
    assert again.returncode == 1 and rag.requests_to("/v1/retrieve") == 3 and node06.requests_to("/v1/retrieve") == 2
    assert _outcomes(again.stdout, "retrieve") == {"completed": 0, "failed": 0, "empty": 0, "refused": 3,
                                                   "skipped": 3, "sends": 1}


def test_a_pool_node_without_info_loses_only_its_own_info_row(make_node, make_pipeline) -> None:
    """A node's metadata is pinned to it: a llama.cpp server's missing /v1/info (and /health) is its own verdict,
    and the other node of the pool still gets its info row."""
    llamacpp, rag = make_node("llamacpp"), make_node("rag")
    pipeline, ledger = make_pipeline(), Ledger()
    pipeline.run(gaia_source(base_url=[llamacpp.base_url, rag.base_url], resources=["info"], ledger=ledger,
                             required_resources=False))
    assert query(pipeline, "SELECT node_url, info_shape FROM info") == [(rag.base_url, "rag-api-server")]
    assert ledger.count("completed", "info") == 1 and ledger.failing == 0
    assert ledger.notes == [f"info: not run on {llamacpp.base_url}, which has no GET /v1/info (HTTP 404)"]


def _notebook_defs(pipeline_name: str) -> dict:
    """Run notebooks/gaia_evaluate.py headless on pipeline ``pipeline_name``; its cells' definitions."""
    import importlib.util
    import os

    from conftest import REPO_ROOT

    os.environ["GAIA_PIPELINE_NAME"] = pipeline_name
    try:
        spec = importlib.util.spec_from_file_location("gaia_evaluate", REPO_ROOT / "notebooks" / "gaia_evaluate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _, defs = module.app.run()
        return dict(defs)
    finally:
        del os.environ["GAIA_PIPELINE_NAME"]


def test_the_evaluation_page_labels_targets_by_the_model_that_answered(make_node, tmp_path: Path) -> None:
    """Node B answers with its own model, then with a swapped-in one; a later run changes a parameter. The page
    labels each target by what answered (the name asked beside it), and groups samples by cell: three samples per
    prompt, target and configuration, never six; a model swap or a parameter change is not flakiness."""
    import dlt

    a, b = make_node("rag", loaded_model="Llama-3.2-3B-Instruct"), make_node("rag", loaded_model="Llama-3.2-1B-Instruct")
    prompts = [{"custom_id": "capital", "prompt": "What is the capital of France?", "expected": "Paris"},
               {"custom_id": "model", "prompt": "Which model are you?", "expected": "qwen3"}]
    pipeline = dlt.pipeline("gaia_eval_page", destination="duckdb", dataset_name="gaia_data")  # where the page looks

    def run(**params) -> None:
        source = gaia_source(base_url=[a.base_url, b.base_url], prompts=prompts, compare_nodes=True, samples=3,
                             **params)
        pipeline.run(source.with_resources("chat_completions", "info")).raise_on_failed_jobs()

    run(temperature=0.7)
    b.loaded_model = "Qwen3-4B-Q5_K_M"
    run(temperature=0.7)
    run(temperature=0.2)  # another parameter: other prompts (prompt_id), the same custom_ids
    defs = _notebook_defs("gaia_eval_page")
    node_a, node_b = (n.base_url.removeprefix("http://") for n in (a, b))
    labels = {f"{node_a} · Llama-3.2-3B-Instruct", f"{node_b} · Llama-3.2-1B-Instruct", f"{node_b} · Qwen3-4B-Q5_K_M"}
    assert set(defs["side_by_side"].columns) - {"prompt"} == labels
    rates = {r["target"]: (r["model_requested"], r["passed"], r["answers"])
             for r in defs["pass_rates"].to_dict("records")}
    assert rates == {  # 2 prompts x 3 samples x 2 temperatures; only Qwen names itself
        f"{node_a} · Llama-3.2-3B-Instruct": ("Llama-3.2-3B-Instruct", 6, 12),
        f"{node_b} · Llama-3.2-1B-Instruct": ("Llama-3.2-3B-Instruct", 3, 6),  # its first run only
        f"{node_b} · Qwen3-4B-Q5_K_M": ("Llama-3.2-3B-Instruct", 12, 12),
    }
    variance = defs["variance"]
    # 2 prompts x (temperature 0.7: A, B's first model, B's second; 0.2: A, B's second)
    assert len(variance) == 2 * 5 and set(variance["samples"]) == {3}
    assert not variance["flaky"].any()  # no node samples here: neither the swap nor the temperature is flakiness
    assert variance["prompt"].str.match(r"^(capital|model) #[0-9a-f]{6}$").all()  # two prompts share each name
