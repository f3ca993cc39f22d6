"""Compare nodes and models on what gaia_pipeline loaded: answers side by side, pass rates against expected answers,
variance across samples, retrieval hit@k and MRR, and what changed when a node drifted.

Load an evaluation run first, for example two nodes side by side, three samples per prompt:

    python gaia_pipeline.py --base-url http://node-a:8080/v1,http://node-b:8080/v1 --compare-nodes --samples 3 \\
        --prompts-file prompts.jsonl --queries-file queries.jsonl

then, where the pipeline ran:

    marimo edit notebooks/gaia_evaluate.py         # interactive
    marimo run notebooks/gaia_evaluate.py          # as an app
    marimo export html notebooks/gaia_evaluate.py -o evaluation.html   # a static page (loads marimo from a CDN)
    python gaia_pipeline.py report -o evaluation.html                  # the same figures, static and offline

A target is a node and the model that answered (``model``; a Gaia node answers any name with its own), with the
name asked (``model_requested``) beside it; samples are grouped by cell (prompt × target × configuration).

``GAIA_PIPELINE_NAME`` picks another pipeline (default ``gaia_pipeline``).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="Gaia evaluation")


@app.cell
def _():
    import json
    import os
    import re

    import altair as alt
    import dlt
    import marimo as mo
    import pandas as pd

    return alt, dlt, json, mo, os, pd, re


@app.cell
def _(dlt, json, mo, os, pd):
    pipeline_name = os.environ.get("GAIA_PIPELINE_NAME", "gaia_pipeline")
    pipeline = dlt.pipeline(pipeline_name)
    dataset = pipeline.dataset()
    schema = pipeline.default_schema
    tables = set(schema.data_table_names(seen_data_only=True))

    def sql(query):
        """Run SQL on the pipeline's dataset; return a pandas DataFrame."""
        return dataset(query).df()

    def has(table, *columns):
        """Whether ``table`` was loaded with ``columns`` (datasets from older versions lack the evaluation ones)."""
        return table in tables and all(c in schema.get_table_columns(table) for c in columns)

    def prompt_text(messages):
        """The last user message of a row's ``messages`` JSON, for labels."""
        parsed = json.loads(messages) if isinstance(messages, str) else messages
        users = [m.get("content") for m in parsed or [] if m.get("role") == "user"]
        text = users[-1] if users else ""
        return text if isinstance(text, str) else json.dumps(text)

    if has("chat_completions", "prompt_id", "sample_index", "info_hash", "cell_id"):
        answers = sql(
            "SELECT cell_id, prompt_id, request_id, custom_id, node_url, served_by, model_requested, model, "
            "sample_index, info_hash, requested_at, status, content, expected, messages FROM chat_completions "
            "WHERE status = 'completed'"
        )
        # a prompt is named by its custom_id or its text; two prompts of one name (a changed parameter) get its id too
        answers["prompt"] = [cid if isinstance(cid, str) else prompt_text(m)[:70]
                             for cid, m in zip(answers["custom_id"], answers["messages"], strict=True)]
        names = answers.groupby("prompt")["prompt_id"].transform("nunique")
        answers.loc[names > 1, "prompt"] = answers["prompt"] + " #" + answers["prompt_id"].str[:6]
        # a target is a node and the model that ANSWERED (a Gaia node answers any name with its own); the name asked
        # is added only where one model answered several names
        answers["model"] = answers["model"].fillna("?")
        answers["node"] = answers["served_by"].fillna(answers["node_url"]).str.replace("http://", "")
        answers["target"] = answers["node"] + " · " + answers["model"]
        asked = answers.groupby("target")["model_requested"].transform("nunique")
        answers.loc[asked > 1, "target"] = answers["target"] + " (asked " + answers["model_requested"].fillna("?") + ")"
        # the newest answer of each cell per target: an older model's answers stay under their own target
        latest = (answers.sort_values("requested_at")
                  .groupby(["cell_id", "node_url", "model"], as_index=False).last())
    else:
        answers = latest = pd.DataFrame()
    mo.md(
        f"# Evaluation — pipeline `{pipeline_name}`\n\n"
        + (f"{answers['prompt_id'].nunique()} prompts, {answers['target'].nunique()} node/model targets, "
           f"{int(answers['sample_index'].max()) + 1} sample(s) at most, {len(answers)} answers in all."
           if len(answers) else "_No evaluation data yet: load prompts with `python gaia_pipeline.py`._")
    )
    return answers, has, latest, sql


@app.cell
def _(latest, mo):
    if len(latest):
        first_samples = latest[latest["sample_index"] == 0]
        side_by_side = first_samples.pivot_table(index="prompt", columns="target", values="content",
                                                 aggfunc="first").reset_index()
        side_view = mo.vstack([mo.md("## Answers side by side (sample 0, newest configuration)"),
                               mo.ui.table(side_by_side, selection=None)])
    else:
        side_view = mo.md("## Answers side by side\n_No `chat_completions` rows with evaluation columns yet._")
    side_view
    return


@app.cell
def _(mo):
    match_mode = mo.ui.dropdown(options=["contains", "exact", "regex"], value="contains",
                                label="An answer passes when its expected answer")
    return (match_mode,)


@app.cell
def _(alt, latest, match_mode, mo, pd, re):
    def passes(content, expected, mode):
        content, expected = (content or "").strip(), (expected or "").strip()
        if mode == "exact":
            return content.lower() == expected.lower()
        if mode == "regex":
            try:
                return re.search(expected, content) is not None
            except re.error:
                return False
        return expected.lower() in content.lower()

    graded = latest[latest["expected"].notna()].copy() if len(latest) else pd.DataFrame()
    if len(graded):
        graded["passed"] = [passes(c, e, match_mode.value)
                            for c, e in zip(graded["content"], graded["expected"], strict=True)]
        pass_rates = graded.groupby("target", as_index=False).agg(
            node=("node", "first"), model=("model", "first"),
            model_requested=("model_requested", lambda names: ", ".join(sorted(set(names.dropna())))),
            answers=("passed", "size"), passed=("passed", "sum"))
        pass_rates["pass_rate"] = pass_rates["passed"] / pass_rates["answers"]
        pass_chart = alt.Chart(pass_rates).mark_bar().encode(
            x=alt.X("pass_rate:Q", title="pass rate", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("target:N", title=None), tooltip=["target", "passed", "answers"],
        ).properties(title=f"Pass rate against expected ({match_mode.value})", width=560, height=160)
        failures = graded[~graded["passed"]][["prompt", "target", "sample_index", "expected", "content"]]
        pass_view = mo.vstack([mo.md("## Pass rate against expected answers"), match_mode, pass_chart,
                               mo.ui.table(pass_rates), mo.md("### Answers that did not pass"),
                               mo.ui.table(failures, selection=None)])
    else:
        pass_view = mo.md("## Pass rate against expected answers\n_No prompts with an `expected` answer yet._")
    pass_view
    return


@app.cell
def _(alt, answers, mo):
    # samples of one cell: a prompt on one target under one node configuration, never a label (a changed parameter
    # is another prompt_id, a swapped model another info_hash: neither is sampling noise)
    cell = ["prompt_id", "node_url", "model_requested", "model", "info_hash"]
    samples = answers[answers.groupby(cell, dropna=False)["sample_index"].transform("size") > 1] \
        if len(answers) else answers
    if len(samples):
        samples = samples.assign(length=samples["content"].fillna("").str.len())
        variance = samples.groupby(cell, as_index=False, dropna=False).agg(
            prompt=("prompt", "first"), target=("target", "first"),
            samples=("sample_index", "size"), distinct_answers=("content", "nunique"),
            mean_length=("length", "mean"), length_std=("length", "std"),
        ).sort_values(["distinct_answers", "length_std"], ascending=False).reset_index(drop=True)
        variance["flaky"] = variance["distinct_answers"] > 1
        variance = variance[["prompt", "target", "info_hash", "samples", "distinct_answers", "flaky", "mean_length",
                             "length_std", "prompt_id"]]
        variance_chart = alt.Chart(variance).mark_bar().encode(
            x=alt.X("distinct_answers:Q", title="distinct answers across samples"),
            y=alt.Y("prompt:N", title=None, sort="-x"), color="target:N", yOffset="target:N",
        ).properties(title="Per-prompt variance across samples", width=560)
        variance_view = mo.vstack([mo.md("## Variance across samples"), variance_chart,
                                   mo.ui.table(variance, selection=None)])
    else:
        variance_view = mo.md("## Variance across samples\n_No prompt was sampled more than once (`--samples N`)._")
    variance_view
    return


@app.cell
def _(mo):
    k = mo.ui.slider(1, 10, value=3, label="k", show_value=True)
    return (k,)


@app.cell
def _(alt, has, k, mo, pd, sql):
    if has("retrieve", "hit_rank", "hits"):
        graded_queries = sql("SELECT node_url, query, hit_rank, hits FROM retrieve WHERE hits IS NOT NULL")
    else:
        graded_queries = pd.DataFrame()
    if len(graded_queries):
        def at_k(frame, cutoff):
            ranks = frame["hit_rank"].astype("float64")  # a miss is NaN: never <= k, and 0 in the reciprocal rank
            return pd.Series({"queries": len(frame), "hit_at_k": float((ranks <= cutoff).mean()),
                              "mrr": float((1.0 / ranks).fillna(0).mean())})

        summary = graded_queries.groupby("node_url").apply(at_k, k.value, include_groups=False).reset_index()
        summary["queries"] = summary["queries"].astype(int)
        curve = pd.concat([graded_queries.groupby("node_url").apply(at_k, cutoff, include_groups=False)
                           .reset_index().assign(k=cutoff) for cutoff in range(1, 11)])
        curve_chart = alt.Chart(curve).mark_line(point=True).encode(
            x=alt.X("k:O", title="k"), y=alt.Y("hit_at_k:Q", title="hit@k", scale=alt.Scale(domain=[0, 1])),
            color="node_url:N",
        ).properties(title="Retrieval hit@k", width=560, height=200)
        retrieval_view = mo.vstack([mo.md("## Retrieval hit@k and MRR"), k, mo.ui.table(summary), curve_chart,
                                    mo.ui.table(graded_queries, selection=None)])
    else:
        retrieval_view = mo.md("## Retrieval hit@k and MRR\n_No queries with `expected_sources` yet._")
    retrieval_view
    return


@app.cell
def _(answers, mo):
    generations = (answers.groupby(["prompt_id", "node_url"])["info_hash"].nunique()
                   if len(answers) else None)
    drifted = generations[generations > 1].reset_index()[["prompt_id", "node_url"]] \
        if generations is not None else None
    if drifted is not None and len(drifted):
        rows = answers[answers["sample_index"] == 0].merge(drifted, on=["prompt_id", "node_url"])
        ordered = rows.sort_values("requested_at")
        first = ordered.groupby(["prompt_id", "node_url"], as_index=False).first()
        last = ordered.groupby(["prompt_id", "node_url"], as_index=False).last()
        before_after = first.merge(last, on=["prompt_id", "node_url"], suffixes=("_before", "_after"))
        before_after["changed"] = before_after["content_before"] != before_after["content_after"]
        drift_table = before_after[["prompt_before", "node_url", "model_before", "model_after", "content_before",
                                    "content_after", "changed"]].rename(columns={"prompt_before": "prompt"})
        drift_view = mo.vstack([mo.md(f"## Drift: {len(drift_table)} prompt(s) answered under more than one node "
                                      f"configuration (`info_hash`)"), mo.ui.table(drift_table, selection=None)])
    else:
        drift_view = mo.md("## Drift\n_No node changed its configuration between runs._")
    drift_view
    return


if __name__ == "__main__":
    app.run()
