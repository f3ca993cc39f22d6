"""Raw baseline for the chat fan-out: asyncio + httpx post every prompt (at most C in flight), rows into DuckDB.

    python bench/baselines/raw_chat.py BASE_URL PROMPTS_FILE CONCURRENCY DB_PATH MODEL

What a user writes by hand: one AsyncClient, a semaphore, one row per answer, one insert at the end. No retries, no
failure rows, no dedup, no schema. Used by bench/chat_fanout.py.
"""

import asyncio
import sys

import duckdb
import httpx
import orjson


async def fan_out(base_url: str, prompts: list, concurrency: int, model: str) -> list:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one(prompt: str) -> tuple:
            body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})
            async with gate:
                response = await client.post("/chat/completions", content=body,
                                             headers={"Content-Type": "application/json"})
            answer = orjson.loads(response.content)
            usage = answer.get("usage") or {}
            return (prompt, answer["id"], answer["model"], answer["choices"][0]["message"]["content"],
                    answer["choices"][0].get("finish_reason"), usage.get("prompt_tokens"),
                    usage.get("completion_tokens"))

        return await asyncio.gather(*(one(p) for p in prompts))


def main(base_url: str, prompts_file: str, concurrency: str, db_path: str, model: str) -> int:
    with open(prompts_file, encoding="utf-8") as fh:
        prompts = [line.rstrip("\n") for line in fh if line.strip()]
    rows = asyncio.run(fan_out(base_url, prompts, int(concurrency), model))
    with duckdb.connect(db_path) as con:
        con.execute("CREATE TABLE IF NOT EXISTS chat_completions (prompt VARCHAR, id VARCHAR, model VARCHAR, "
                    "content VARCHAR, finish_reason VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT)")
        con.executemany("INSERT INTO chat_completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        print(con.execute("SELECT count(*) FROM chat_completions").fetchall())
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
