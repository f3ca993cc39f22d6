"""Configuration the dlt way: node URL rules, env vars and .dlt/*.toml, clear errors, and no key where it should not be."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import query, reload_dlt_config

from gaia_source import GaiaConfigError, NodeClient, gaia_source, resolve_base_url, resolve_node_settings

KEY = "gaia-TOPSECRET-5a5b5c5d5e"


@pytest.mark.parametrize(
    "node_id,base_url,expected",
    [
        (None, "http://localhost:8080", "http://localhost:8080/v1"),
        (None, "http://localhost:8080/v1", "http://localhost:8080/v1"),
        (None, "http://localhost:8080/v1/", "http://localhost:8080/v1"),
        (None, "  http://127.0.0.1:8080//v1//  ", "http://127.0.0.1:8080/v1"),
        (None, "https://gw.example.com/gaia", "https://gw.example.com/gaia/v1"),
        (None, "https://user:pw@node.example.com/v1", "https://node.example.com/v1"),
        ("0x4a5b6c7d", None, "https://0x4a5b6c7d.gaia.domains/v1"),
        ("llama8b.gaia.domains", None, "https://llama8b.gaia.domains/v1"),
        ("https://qwen72b.gaia.domains/v1/", None, "https://qwen72b.gaia.domains/v1"),
        ("0xignored", "http://localhost:9000", "http://localhost:9000/v1"),
    ],
)
def test_node_url_rules(node_id, base_url, expected) -> None:
    assert resolve_base_url(node_id, base_url) == expected


@pytest.mark.parametrize(
    "node_id,base_url,message",
    [
        (None, None, "No Gaia node configured"),
        (None, "localhost:8080", "has no scheme"),
        (None, "ftp://files.example.com", "must be an http:// or https:// URL"),
        ("not a node", None, "is not a node id"),
    ],
)
def test_node_url_errors(node_id, base_url, message) -> None:
    with pytest.raises(GaiaConfigError, match=message):
        resolve_base_url(node_id, base_url)


def test_missing_node_says_how_to_configure_it() -> None:
    with pytest.raises(GaiaConfigError) as info:
        gaia_source()
    text = str(info.value)
    assert "SOURCES__GAIA_SOURCE__BASE_URL" in text and "[sources.gaia_source]" in text and "--demo" in text


def test_env_vars_configure_the_source(make_node, make_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node("nexus", api_key=KEY)
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__BASE_URL", node.root_url)  # without /v1
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__API_KEY", KEY)
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__PROMPTS", '["What is the capital of France?"]')
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__MAX_TOKENS", "32")
    pipeline = make_pipeline()
    pipeline.run(gaia_source().with_resources("chat_completions", "models"))
    [(content, params, node_url)] = query(pipeline, "SELECT content, CAST(params AS VARCHAR), node_url FROM chat_completions")
    assert content == "Paris is the capital of France." and params == '{"max_tokens":32}'
    assert node_url == node.base_url


def test_toml_files_configure_the_source(make_node, make_pipeline, isolated_dlt: Path) -> None:
    node = make_node("rag", api_key=KEY)
    (isolated_dlt / ".dlt").mkdir()
    (isolated_dlt / ".dlt" / "config.toml").write_text(
        f'[sources.gaia_source]\nbase_url = "{node.base_url}/"\ntexts = ["Paris is on the Seine."]\nembedding_batch_size = 4\n'
    )
    (isolated_dlt / ".dlt" / "secrets.toml").write_text(f'[sources.gaia_source]\napi_key = "{KEY}"\n')
    reload_dlt_config()
    pipeline = make_pipeline()
    pipeline.run(gaia_source().with_resources("embeddings"))
    assert query(pipeline, "SELECT text, dim FROM embeddings") == [("Paris is on the Seine.", 768)]


def test_non_numeric_setting_names_the_setting(make_node, monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node("rag")
    monkeypatch.setenv("SOURCES__GAIA_SOURCE__TIMEOUT", "soon")
    with pytest.raises(Exception) as info:
        gaia_source(base_url=node.base_url)
    assert "timeout" in str(info.value)
    monkeypatch.delenv("SOURCES__GAIA_SOURCE__TIMEOUT")
    with pytest.raises(GaiaConfigError, match="max_concurrency must be >= 1, got 0"):
        gaia_source(base_url=node.base_url, max_concurrency=0)
    assert node.total_requests() == 0


def test_key_over_plain_http_to_a_remote_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    settings = resolve_node_settings(base_url="http://127.0.0.1:9/v1", api_key=KEY)
    with caplog.at_level(logging.WARNING, logger="gaia_source"):
        NodeClient("http://node.example.com/v1", settings).close()
        NodeClient("http://127.0.0.1:8080/v1", settings).close()
        NodeClient("https://node.example.com/v1", settings).close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "plain http to http://node.example.com/v1" in warnings[0]
    assert KEY not in warnings[0]
    assert KEY not in repr(NodeClient("https://node.example.com/v1", settings)) and KEY not in repr(settings)


def test_the_key_is_in_no_file_the_run_writes(make_node, make_pipeline, isolated_dlt: Path) -> None:
    node = make_node("rag", api_key=KEY)
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, api_key=KEY, prompts=["hi"], texts=["t"], queries=["Paris"]))
    pipeline.run(gaia_source(base_url=node.base_url, api_key=KEY, prompts=["hi [[fail]]"], max_attempts=1)
                 .with_resources("chat_completions"))
    assert query(pipeline, "SELECT count(*) FROM failed_requests") == [(1,)]
    written = [p for p in isolated_dlt.rglob("*") if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in written) and any("state" in p.name for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
