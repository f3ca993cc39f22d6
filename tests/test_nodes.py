"""Several nodes behind one source: requests spread over them, each node within its own limit, rows say who answered."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import query

from gaia_source import GaiaConfigError, gaia_source, resolve_base_urls


def test_requests_spread_over_nodes_each_within_its_limit(make_node, make_pipeline) -> None:
    nodes = [make_node("rag", latency_ms=5) for _ in range(3)]
    pipeline = make_pipeline()
    prompts = [f"Question {i}?" for i in range(30)]
    source = gaia_source(base_url=[n.base_url for n in nodes], prompts=prompts, max_concurrency=2)
    pipeline.run(source.with_resources("chat_completions", "models", "info"))
    served = [n.requests_to("/v1/chat/completions") for n in nodes]
    assert sum(served) == 30 and all(s >= 3 for s in served)  # every node took a share
    assert all(n.max_in_flight == 1 for n in nodes)  # a rag node still answers one at a time
    by_node = Counter(url for url, in query(pipeline, "SELECT node_url FROM chat_completions"))
    assert by_node == Counter({n.base_url: s for n, s in zip(nodes, served, strict=True)})  # rows name the node that answered
    assert query(pipeline, "SELECT count(*), count(DISTINCT node_url) FROM models") == [(6, 3)]
    assert query(pipeline, "SELECT count(DISTINCT node_url) FROM info") == [(3,)]


def test_node_lists_in_every_spelling() -> None:
    expected = ["http://a:1/v1", "http://b:2/v1"]
    assert resolve_base_urls(base_url=["http://a:1", "http://b:2/v1/"]) == expected
    assert resolve_base_urls(base_url="http://a:1, http://b:2") == expected
    assert resolve_base_urls(base_url='["http://a:1/v1", "http://b:2"]') == expected
    assert resolve_base_urls(node_id=["0xaa", "0xbb"]) == ["https://0xaa.gaia.domains/v1", "https://0xbb.gaia.domains/v1"]
    with pytest.raises(GaiaConfigError, match="listed more than once"):
        resolve_base_urls(base_url=["http://a:1", "http://a:1/v1"])
