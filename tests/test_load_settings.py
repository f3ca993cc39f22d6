"""The load settings the script applies (``gaia_source.settings.dlt_defaults``) and its cut of dlt's fixed cost."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from gaia_source import gaia_source, run_pipeline
from gaia_source.emulator import answer_for
from gaia_source.settings import dlt_defaults

PROMPTS = [f"Question number {i}?" for i in range(5)]


def test_local_loads_rotate_files_and_skip_snappy(make_node, make_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**dlt_defaults("duckdb"), "DATA_WRITER__FILE_MAX_ITEMS": "2"}.items():
        monkeypatch.setenv(key, value)
    node = make_node("nexus")
    pipeline = make_pipeline()
    pipeline.run(gaia_source(base_url=node.base_url, prompts=PROMPTS).with_resources("chat_completions")
                 ).raise_on_failed_jobs()
    files = list(Path(pipeline.working_dir).glob("load/loaded/*/completed_jobs/chat_completions.*.parquet"))
    assert len(files) == 3  # 5 rows, 2 per file
    assert {pq.ParquetFile(f).metadata.row_group(0).column(0).compression for f in files} == {"UNCOMPRESSED"}
    with pipeline.sql_client() as client:
        contents = sorted(c for c, in client.execute_sql("SELECT content FROM chat_completions"))
    assert contents == sorted(answer_for(p, node.default_chat_model) for p in PROMPTS)


def test_filesystem_keeps_snappy_and_only_a_duckdb_file_loads_one_job_at_a_time() -> None:
    assert "DATA_WRITER__COMPRESSION" not in dlt_defaults("filesystem")
    assert dlt_defaults("ducklake")["DATA_WRITER__COMPRESSION"] == "none"
    assert dlt_defaults("duckdb")["LOAD__WORKERS"] == "1"
    assert all("LOAD__WORKERS" not in dlt_defaults(d) for d in ("postgres", "motherduck", "filesystem", "lancedb"))
    assert dlt_defaults("postgres")["DATA_WRITER__FILE_MAX_ITEMS"] == "122880"  # DuckDB's row group, everywhere


def test_the_script_reports_its_load_without_importing_sqlalchemy(make_node, tmp_path: Path) -> None:
    """dlt prints the destination's URL through SQLAlchemy when it is installed (the iceberg extra installs it): the
    script gives dlt its own URL class instead, and the load info still names the destination."""
    pytest.importorskip("sqlalchemy")
    node = make_node("nexus")
    out = run_cli(tmp_path, "--base-url", node.base_url, "--resources", "models,info", "--progress", "none",
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert "dlt" in imported and "sqlalchemy" not in imported
    assert "destination duckdb" in out.stdout and "gaia_pipeline.duckdb" in out.stdout


def test_vectors_load_without_float_compression_and_an_open_connection_keeps_its_settings(
    make_node, make_pipeline, tmp_path: Path
) -> None:
    """run_pipeline holds DuckDB's load settings while it loads (dense vectors skip the float compressions, which
    never pay on them), then sets them back: on a connection the user passed in too."""
    import dlt
    import duckdb

    node = make_node("nexus", dim=64)
    texts = [f"Text {i} about rivers, towers and nodes." for i in range(300)]
    pipeline = make_pipeline()
    run_pipeline(pipeline, gaia_source(base_url=node.base_url, texts=texts).with_resources("embeddings")
                 ).raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        kinds = {kind for kind, in client.execute_sql(
            "SELECT DISTINCT compression FROM pragma_storage_info('embeddings') WHERE column_name = 'embedding'")}
        [(rows, dim)] = client.execute_sql("SELECT count(*), any_value(len(embedding)) FROM embeddings")
        [(setting,)] = client.execute_sql("SELECT current_setting('disabled_compression_methods')")
    assert (rows, dim) == (300, 64)
    assert not kinds & {"ALP", "ALPRD", "Chimp", "Patas"}, kinds  # analysed and skipped no more
    assert setting == ""  # a connection opened after the run has DuckDB's defaults

    user = duckdb.connect(str(tmp_path / "mine.duckdb"))
    user.execute("SET GLOBAL disabled_compression_methods = 'fsst'")
    mine = dlt.pipeline("gaia_test_external", destination=dlt.destinations.duckdb(user), dataset_name="gaia_data",
                        pipelines_dir=str(tmp_path / "pipelines"))
    run_pipeline(mine, gaia_source(base_url=node.base_url, texts=texts[:10]).with_resources("embeddings")
                 ).raise_on_failed_jobs()
    assert user.execute("SELECT count(*) FROM gaia_data.embeddings").fetchone() == (10,)
    assert user.execute("SELECT current_setting('disabled_compression_methods')").fetchone() == ("FSST",)


def test_a_duckdb_file_another_process_holds_fails_the_run_with_a_clear_message(make_node, tmp_path: Path) -> None:
    """The load settings' connection meets the lock first: the run still ends with dlt's one-line error, not a
    traceback, and sends nothing; once the lock is gone the run loads."""
    import duckdb

    node = make_node("nexus")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    args = ["--base-url", node.base_url, "--resources", "chat_completions", "--prompts-file", "prompts.txt",
            "--progress", "none"]
    with duckdb.connect(str(tmp_path / "gaia_pipeline.duckdb")):  # another process holds the file (a notebook)
        result = run_cli(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()
    assert any(line.startswith("error: ") for line in error), result.stderr[-2000:]
    assert "Could not set lock on file" in result.stderr and node.requests_to("/v1/chat/completions") == 0
    result = run_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert node.requests_to("/v1/chat/completions") == len(PROMPTS)
