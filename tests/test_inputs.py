"""Inputs from lists and files: every format lands in the tables with its ids; bad input stops before any request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import query, table_rows

from gaia_source import GaiaConfigError, gaia_source
from gaia_source.emulator import answer_for


def _write(path: Path, lines) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_openai_batch_jsonl_carries_custom_id_model_and_params(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("rag")
    batch = _write(tmp_path / "batch.jsonl", [
        json.dumps({"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "Llama-3.2-3B-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                             "temperature": 0, "max_tokens": 64}}),
        json.dumps({"custom_id": "req-2", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does dlt do?"}]}}),
    ])
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts_file=batch, temperature=0.7).with_resources("chat_completions"))
    rows = {r["custom_id"]: r for r in table_rows(pipeline, "chat_completions", "custom_id")}
    assert set(rows) == {"req-1", "req-2"}
    assert rows["req-1"]["content"] == "Paris is the capital of France."
    assert json.loads(rows["req-1"]["params"]) == {"temperature": 0, "max_tokens": 64}  # the line's params win
    assert json.loads(rows["req-2"]["params"]) == {"temperature": 0.7}  # the source-wide default applies
    assert json.loads(rows["req-2"]["messages"])[0] == {"role": "system", "content": "Be brief."}
    assert rows["req-2"]["content"] == answer_for("What does dlt do?", "Llama-3.2-3B-Instruct")


def test_messages_jsonl_plain_text_and_csv_prompts(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("nexus")
    files = [
        _write(tmp_path / "messages.jsonl", [
            json.dumps({"custom_id": "m1", "messages": [{"role": "user", "content": "first"}]}),
            json.dumps({"prompt": "second"}),
            json.dumps("third"),
        ]),
        _write(tmp_path / "prompts.txt", ["fourth", "", "fifth"]),
        _write(tmp_path / "prompts.csv", ["custom_id,prompt", "c6,sixth", "c7,\"seventh, with a comma\""]),
    ]
    pipeline = make_pipeline()
    for path in files:
        pipeline.run(gaia_source(base_url=node.base_url, prompts_file=path, system_prompt="Answer in French.")
                     .with_resources("chat_completions"))
    rows = query(pipeline, "SELECT custom_id, content, messages FROM chat_completions ORDER BY content")
    contents = [r[1] for r in rows]
    assert contents == sorted(f"Qwen3-4B answers: {p}" for p in
                              ["first", "second", "third", "fourth", "fifth", "sixth", "seventh, with a comma"])
    assert {r[0] for r in rows} == {"m1", "c6", "c7", None}
    for _, _, messages in rows:
        assert json.loads(messages)[0] == {"role": "system", "content": "Answer in French."}


def test_texts_from_jsonl_with_ids_and_metadata_and_csv(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("rag")
    jsonl = _write(tmp_path / "texts.jsonl", [
        json.dumps({"id": "doc-1", "text": "Paris is on the Seine.", "metadata": {"lang": "en", "page": 3}}),
        json.dumps("A bare string line."),
    ])
    csv_file = _write(tmp_path / "texts.csv", ["id,text,ignored", "doc-9,\"DuckDB, arrays\",x"])
    pipeline = make_pipeline()
    for path in (jsonl, csv_file):
        pipeline.run(gaia_source(base_url=node.base_url, texts_file=path).with_resources("embeddings"))
    rows = {r["text"]: r for r in table_rows(pipeline, "embeddings", "text")}
    assert set(rows) == {"Paris is on the Seine.", "A bare string line.", "DuckDB, arrays"}
    assert rows["Paris is on the Seine."]["text_id"] == "doc-1"
    assert json.loads(rows["Paris is on the Seine."]["metadata"]) == {"lang": "en", "page": 3}
    assert rows["A bare string line."]["text_id"] is None
    assert rows["DuckDB, arrays"]["text_id"] == "doc-9"


def test_queries_file(make_node, make_pipeline, tmp_path: Path) -> None:
    node = make_node("rag")
    path = _write(tmp_path / "queries.jsonl", [
        json.dumps({"custom_id": "q1", "query": "Where is Paris located?"}),
        json.dumps({"messages": [{"role": "user", "content": "What is a Gaia domain?"}]}),
    ])
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, queries_file=path).with_resources("retrieve"))
    rows = query(pipeline, "SELECT custom_id, query, point_count FROM retrieve ORDER BY query")
    assert [(r[0], r[1]) for r in rows] == [(None, "What is a Gaia domain?"), ("q1", "Where is Paris located?")]
    assert all(r[2] > 0 for r in rows)


@pytest.mark.parametrize(
    "name,lines,message",
    [
        ("bad.jsonl", ['{"prompt": "ok"}', '{"prompt": "ok", '], "bad.jsonl:2: not valid JSON"),
        ("empty.jsonl", ['{"prompt": "ok"}', '{"prompt": "   "}'], "empty.jsonl:2: empty prompt"),
        ("shape.jsonl", ['{"question": "?"}'], "shape.jsonl:1: object has none of 'body', 'messages' or 'prompt'"),
        ("role.jsonl", ['{"messages": [{"role": "robot", "content": "x"}]}'], "role.jsonl:1: messages[0] has role 'robot'"),
        ("url.jsonl", ['{"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}'],
         "url.jsonl:1: batch line is for '/v1/embeddings'"),
        ("nocol.csv", ["question", "what?"], "nocol.csv: CSV has no 'prompt' column (columns: question)"),
    ],
)
def test_bad_prompt_files_are_refused_before_any_request(make_node, tmp_path: Path, name, lines, message) -> None:
    node = make_node("rag")
    path = _write(tmp_path / name, lines)
    with pytest.raises(GaiaConfigError) as info:
        gaia_source(base_url=node.base_url, prompts_file=path)
    assert message in str(info.value)
    assert node.total_requests() == 0


def test_bad_texts_and_queries_and_missing_files(make_node, tmp_path: Path) -> None:
    node = make_node("rag")
    with pytest.raises(GaiaConfigError, match=r"texts\[1\]: empty text"):
        gaia_source(base_url=node.base_url, texts=["fine", ""])
    with pytest.raises(GaiaConfigError, match=r"texts\.jsonl:1: 'metadata' must be an object"):
        gaia_source(base_url=node.base_url, texts_file=_write(tmp_path / "texts.jsonl", ['{"text": "x", "metadata": 3}']))
    with pytest.raises(GaiaConfigError, match="queries_file: file not found: .*nope.txt"):
        gaia_source(base_url=node.base_url, queries_file=str(tmp_path / "nope.txt"))
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(GaiaConfigError, match=r"latin1.txt:2: not valid UTF-8"):
        gaia_source(base_url=node.base_url, prompts_file=str(bad_utf8))
    assert node.total_requests() == 0
