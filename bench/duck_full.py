"""Job (b*) of bench/run: DuckDB producing what `aifinops replay` writes, not only the hourly rollup: read
the NDJSON, price every call with the same per-token rates (exported by `aifinops prices export`), attribute
it with the same owner map, and write the 1m, 1h and 1d rollups with replay's dimensions (owner, risk owner,
team, project, workflow, environment, identity, provider, model, service tier, price id) and its measures
(requests by kind, every token class, cost; exact decimals, DECIMAL(38,18)). The 1h and 1d rollups are
summed from the 1m one, as replay does, and the 1d rollup is capped at replay's default of 100 000 keys per
window. Not done here, unlike replay: deduplication, late flags, validation and dead letters, secret
redaction, state for exactly-once restarts, spike detection.
usage: duck_full.py EVENTS PRICES_CSV OWNERS_CSV OUT_DIR THREADS"""
import os
import sys

import duckdb

events, prices, owners, out, threads = sys.argv[1:6]
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
con.execute(f"SET threads = {int(threads)}")
con.execute("SET TimeZone = 'UTC'")
con.execute("SET preserve_insertion_order = false")
dec = "DECIMAL(38,18)"
rates = ["input", "cache_read", "cache_write", "cache_write_1h", "audio_input", "output", "reasoning", "audio_output"]
con.execute(
    f"CREATE TABLE prices AS SELECT provider, model, price_id, "
    + ", ".join(f"CAST({r} AS {dec}) AS p_{r}" for r in rates)
    + f" FROM read_csv('{prices}', all_varchar = true, header = true) WHERE tier = 'default'"
)
con.execute(f"CREATE TABLE owners AS SELECT * FROM read_csv('{owners}', all_varchar = true, header = true)")
counts = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
          "audio_input_tokens", "audio_output_tokens", "reasoning_tokens", "retrieval_calls", "attempt"]
cols = {"event_id": "VARCHAR", "timestamp": "TIMESTAMPTZ", "provider": "VARCHAR", "model": "VARCHAR",
        "api_key_id": "VARCHAR", "service_account": "VARCHAR", "team": "VARCHAR", "project": "VARCHAR",
        "workflow": "VARCHAR", "environment": "VARCHAR", "status": "VARCHAR", **{c: "BIGINT" for c in counts}}
spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"
z = lambda c: f"coalesce(e.{c}, 0)"  # noqa: E731
cost = (f"(e.input_tokens - {z('cache_read_tokens')} - {z('cache_write_tokens')} - {z('audio_input_tokens')}) * p.p_input"
        f" + {z('cache_read_tokens')} * p.p_cache_read"
        f" + ({z('cache_write_tokens')} - {z('cache_write_1h_tokens')}) * p.p_cache_write"
        f" + {z('cache_write_1h_tokens')} * p.p_cache_write_1h + {z('audio_input_tokens')} * p.p_audio_input"
        f" + (e.output_tokens - {z('reasoning_tokens')} - {z('audio_output_tokens')}) * p.p_output"
        f" + {z('reasoning_tokens')} * p.p_reasoning + {z('audio_output_tokens')} * p.p_audio_output")
failed = "coalesce(e.status, '') IN ('error', 'failure')"
retry = f"{z('attempt')} > 1"
# the 1m rollup, from the events
con.execute(
    f"""CREATE TABLE m AS SELECT time_bucket(INTERVAL 1 MINUTE, e.timestamp) AS window_start,
        coalesce(o.owner, 'unattributed') AS owner, coalesce(o.risk_owner, '') AS risk_owner,
        coalesce(e.team, '') AS team, coalesce(e.project, '') AS project, coalesce(e.workflow, '') AS workflow,
        coalesce(e.environment, '') AS environment,
        coalesce(nullif(e.api_key_id, ''), nullif(e.service_account, ''), 'unknown') AS identity,
        e.provider, e.model, 'default' AS service_tier, p.price_id,
        count(*) AS requests, count(*) FILTER (WHERE {failed}) AS error_requests,
        count(*) FILTER (WHERE {retry}) AS retry_requests, 0::BIGINT AS unpriced_requests,
        0::BIGINT AS usage_missing_requests, 0::BIGINT AS cache_hit_requests, 0::BIGINT AS reported_requests,
        sum(e.input_tokens) AS input_tokens, sum({z('cache_read_tokens')}) AS cache_read_tokens,
        sum({z('cache_write_tokens')}) AS cache_write_tokens,
        sum({z('cache_write_1h_tokens')}) AS cache_write_1h_tokens,
        sum({z('audio_input_tokens')}) AS audio_input_tokens, sum(e.output_tokens) AS output_tokens,
        sum({z('reasoning_tokens')}) AS reasoning_tokens, sum({z('audio_output_tokens')}) AS audio_output_tokens,
        sum({z('retrieval_calls')}) AS retrieval_calls,
        sum({cost})::{dec} AS cost_usd, NULL::{dec} AS reported_cost_usd,
        sum(CASE WHEN {failed} THEN {cost} ELSE 0 END)::{dec} AS failed_cost_usd,
        sum(CASE WHEN {retry} THEN {cost} ELSE 0 END)::{dec} AS retry_cost_usd
      FROM read_json('{events}', format = 'newline_delimited', columns = {spec}) e
      JOIN prices p ON p.provider = e.provider AND p.model = e.model
      LEFT JOIN owners o ON o.team = e.team
      GROUP BY ALL"""
)
dims = ["owner", "risk_owner", "team", "project", "workflow", "environment", "identity", "provider", "model",
        "service_tier", "price_id"]
measures = [r[0] for r in con.execute("DESCRIBE m").fetchall()][12:]
typed = lambda m: f"sum({m})::{dec if 'cost' in m else 'BIGINT'} AS {m}"  # noqa: E731
for label, interval in (("1m", "1 MINUTE"), ("1h", "1 HOUR"), ("1d", "1 DAY")):
    if label == "1m":
        rows = "SELECT * FROM m"
    else:
        rows = (f"SELECT time_bucket(INTERVAL {interval}, window_start) AS window_start, {', '.join(dims)}, "
                f"{', '.join(typed(m) for m in measures)} FROM m GROUP BY ALL")
    if label == "1d":
        # replay's key cap (max_keys_per_window, 100 000): the most expensive keys of a window are kept, the
        # rest folded into one row per owner with the other dimensions "__other__" (replay ranks at each
        # compaction, so which keys it keeps differs; the work is the same). Only the day window has more
        # keys than the cap on this workload, so only it is ranked here.
        order = "cost_usd DESC NULLS LAST, requests DESC, " + ", ".join(dims)
        folded = ", ".join(d if d in ("owner", "risk_owner") else f"'__other__' AS {d}" for d in dims)
        rows = (f"WITH d AS ({rows}), r AS (SELECT *, row_number() OVER (PARTITION BY window_start ORDER BY {order}) "
                f"AS rank FROM d) SELECT * EXCLUDE (rank) FROM r WHERE rank <= 100000 UNION ALL "
                f"SELECT window_start, {folded}, {', '.join(typed(m) for m in measures)} FROM r WHERE rank > 100000 "
                f"GROUP BY ALL")
    con.execute(
        f"""COPY (SELECT window_start, window_start + INTERVAL {interval} AS window_end, {', '.join(dims)},
          {', '.join(measures)}, false AS late FROM ({rows})) TO '{out}/{label}.parquet' (FORMAT parquet)"""
    )
