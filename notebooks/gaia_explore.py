"""Explore what gaia_pipeline loaded: usage and latency per model, slow requests, TTFT, similarity, retrieval scores.

Run it where the pipeline ran (so the DuckDB file and credentials resolve):

    marimo edit notebooks/gaia_explore.py          # interactive
    marimo export html notebooks/gaia_explore.py -o report.html   # a static report (what CI runs)
    python notebooks/gaia_explore.py               # as a plain script

``GAIA_PIPELINE_NAME`` picks another pipeline (default ``gaia_pipeline``).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="Gaia node data")


@app.cell
def _():
    import os

    import altair as alt
    import dlt
    import marimo as mo
    import pandas as pd

    return alt, dlt, mo, os, pd


@app.cell
def _(dlt, mo, os):
    pipeline_name = os.environ.get("GAIA_PIPELINE_NAME", "gaia_pipeline")
    pipeline = dlt.pipeline(pipeline_name)
    dataset = pipeline.dataset()
    tables = set(pipeline.default_schema.data_table_names(seen_data_only=True))
    counts = dict(dataset.row_counts(table_names=sorted(tables)).fetchall()) if tables else {}

    def sql(query):
        """Run SQL on the pipeline's dataset; return a pandas DataFrame."""
        return dataset(query).df()

    mo.md(
        f"# Gaia node data — pipeline `{pipeline_name}`, dataset `{pipeline.dataset_name}`\n\n"
        + ("\n".join(f"- `{t}`: {n:,} rows" for t, n in sorted(counts.items())) or "_No data loaded yet: run "
           "`python gaia_pipeline.py --demo`._")
    )
    return counts, sql


@app.cell
def _(alt, counts, mo, sql):
    if counts.get("chat_completions"):
        usage = sql(
            "SELECT requested_at, model, total_tokens, completion_tokens, latency_ms, output_tokens_per_s "
            "FROM chat_completions WHERE status = 'completed' ORDER BY requested_at"
        )
        tokens_chart = alt.Chart(usage).mark_circle(size=60).encode(
            x=alt.X("requested_at:T", title="requested at"), y=alt.Y("total_tokens:Q", title="total tokens"),
            color="model:N", tooltip=["model", "total_tokens", "latency_ms"],
        ).properties(title="Token usage per request", width=560, height=220)
        latency_chart = alt.Chart(usage).mark_line(point=True).encode(
            x=alt.X("requested_at:T", title="requested at"), y=alt.Y("latency_ms:Q", title="latency (ms)"),
            color="model:N",
        ).properties(title="Latency per model over time", width=560, height=220)
        per_model = usage.groupby("model").agg(
            requests=("total_tokens", "size"), total_tokens=("total_tokens", "sum"),
            mean_latency_ms=("latency_ms", "mean"), mean_tokens_per_s=("output_tokens_per_s", "mean"),
        ).reset_index()
        usage_view = mo.vstack([mo.md("## Token usage and latency per model"), mo.ui.table(per_model),
                                tokens_chart, latency_chart])
    else:
        usage_view = mo.md("## Token usage and latency\n_No `chat_completions` rows yet._")
    usage_view
    return


@app.cell
def _(counts, mo, sql):
    if counts.get("chat_completions"):
        slowest = sql(
            "SELECT latency_ms, model, completion_tokens, custom_id, left(content, 80) AS answer "
            "FROM chat_completions ORDER BY latency_ms DESC LIMIT 10"
        )
        slow_view = mo.vstack([mo.md("## The slowest requests"), mo.ui.table(slowest)])
    else:
        slow_view = mo.md("## The slowest requests\n_No `chat_completions` rows yet._")
    slow_view
    return


@app.cell
def _(alt, counts, mo, sql):
    if counts.get("chat_completions_stream"):
        # a replayed stream (gaia-nexus >= 0.8.1, Gaia node 0.6) arrives only after the whole answer: its ttft_ms is
        # the generation time, not time to first token, so the chart leaves it out
        streams = sql(
            "SELECT model, status, ttft_ms, duration_ms, chunk_count, output_tokens_per_s "
            "FROM chat_completions_stream WHERE ttft_ms IS NOT NULL AND stream_mode IS DISTINCT FROM 'replayed'"
        )
        ttft_chart = alt.Chart(streams).mark_bar().encode(
            x=alt.X("ttft_ms:Q", bin=alt.Bin(maxbins=20), title="time to first token (ms)"),
            y=alt.Y("count():Q", title="streams"), color="model:N",
        ).properties(title="Time to first token (live streams)", width=560, height=200)
        statuses = sql("SELECT status, coalesce(stream_mode, 'too short to tell') AS stream_mode, count(*) AS streams "
                       "FROM chat_completions_stream GROUP BY ALL ORDER BY ALL")
        ttft_view = mo.vstack([mo.md("## Time to first token (streamed completions)"), ttft_chart,
                               mo.md("Replayed streams are left out of the chart: their first chunk comes after the "
                                     "whole answer."), mo.ui.table(statuses)])
    else:
        ttft_view = mo.md("## Time to first token\n_No `chat_completions_stream` rows yet._")
    ttft_view
    return


@app.cell
def _(counts, mo, sql):
    texts = sql("SELECT text FROM embeddings ORDER BY text") if counts.get("embeddings") else None
    anchor = mo.ui.dropdown(options=list(texts["text"]) if texts is not None else [],
                            value=texts["text"].iloc[0] if texts is not None and len(texts) else None,
                            label="Texts most similar to")
    return (anchor,)


@app.cell
def _(anchor, counts, mo, sql):
    if counts.get("embeddings") and anchor.value is not None:
        quoted = anchor.value.replace("'", "''")
        dim = int(sql("SELECT max(dim) AS dim FROM embeddings")["dim"].iloc[0])
        similar = sql(
            f"SELECT b.text, round(array_cosine_similarity(a.embedding::FLOAT[{dim}], b.embedding::FLOAT[{dim}]), 4)"
            f" AS similarity FROM embeddings a, embeddings b WHERE a.text = '{quoted}' AND a.model = b.model "
            "ORDER BY similarity DESC LIMIT 5"
        )
        similar_view = mo.vstack(
            [mo.md("## Embedding similarity search (cosine, in SQL)"), anchor, mo.ui.table(similar)]
        )
    else:
        similar_view = mo.md("## Embedding similarity search\n_No `embeddings` rows yet._")
    similar_view
    return


@app.cell
def _(alt, counts, mo, sql):
    if counts.get("retrieve__points"):
        points = sql(
            "SELECT r.query, p.rank, p.score FROM retrieve r JOIN retrieve__points p ON p._dlt_parent_id = r._dlt_id"
        )
        score_chart = alt.Chart(points).mark_bar().encode(
            x=alt.X("score:Q", bin=alt.Bin(maxbins=20), title="retrieval score"), y=alt.Y("count():Q", title="points"),
        ).properties(title="Retrieval score distribution", width=560, height=200)
        per_query = sql("SELECT query, point_count, score_threshold FROM retrieve ORDER BY point_count")
        retrieval_view = mo.vstack([mo.md("## Retrieval scores"), score_chart, mo.ui.table(per_query)])
    else:
        retrieval_view = mo.md("## Retrieval scores\n_No `retrieve__points` rows yet._")
    retrieval_view
    return


if __name__ == "__main__":
    app.run()
