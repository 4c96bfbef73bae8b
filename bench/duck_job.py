"""Job (b) of bench/run: DuckDB doing what `aifinops replay` does for the hourly rollup: read the NDJSON,
price every call with the same per-token rates (exported by `aifinops prices export`), attribute it with the
same owner map, GROUP BY hour/owner/model and write Parquet. Exact decimals: DECIMAL(38,18).
usage: duck_job.py EVENTS PRICES_CSV OWNERS_CSV OUT_PARQUET THREADS"""
import sys

import duckdb

events, prices, owners, out, threads = sys.argv[1:6]
con = duckdb.connect()
con.execute(f"SET threads = {int(threads)}")
con.execute("SET TimeZone = 'UTC'")
con.execute("SET preserve_insertion_order = false")
dec = "DECIMAL(38,18)"
con.execute(
    f"""CREATE TABLE prices AS SELECT provider, model,
        CAST(input AS {dec}) AS p_input, CAST(cache_read AS {dec}) AS p_cache_read,
        CAST(cache_write AS {dec}) AS p_cache_write, CAST(cache_write_1h AS {dec}) AS p_cache_write_1h,
        CAST(output AS {dec}) AS p_output, CAST(reasoning AS {dec}) AS p_reasoning,
        TRY_CAST(long_context_above AS BIGINT) AS long_context_above
      FROM read_csv('{prices}', all_varchar = true, header = true)"""
)
con.execute(f"CREATE TABLE owners AS SELECT * FROM read_csv('{owners}', all_varchar = true, header = true)")
cols = {
    "event_id": "VARCHAR", "timestamp": "TIMESTAMPTZ", "provider": "VARCHAR", "model": "VARCHAR",
    "input_tokens": "BIGINT", "output_tokens": "BIGINT", "cache_read_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT", "cache_write_1h_tokens": "BIGINT", "reasoning_tokens": "BIGINT",
    "team": "VARCHAR",
}
spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"
con.execute(
    f"""COPY (
      SELECT date_trunc('hour', e.timestamp) AS hour, coalesce(o.owner, 'unattributed') AS owner, e.model,
        count(*) AS requests,
        sum(e.input_tokens) AS input_tokens, sum(e.output_tokens) AS output_tokens,
        sum(coalesce(e.cache_read_tokens, 0)) AS cache_read_tokens,
        sum(coalesce(e.cache_write_tokens, 0)) AS cache_write_tokens,
        sum(coalesce(e.reasoning_tokens, 0)) AS reasoning_tokens,
        sum(
          (e.input_tokens - coalesce(e.cache_read_tokens, 0) - coalesce(e.cache_write_tokens, 0)) * p.p_input
          + coalesce(e.cache_read_tokens, 0) * p.p_cache_read
          + (coalesce(e.cache_write_tokens, 0) - coalesce(e.cache_write_1h_tokens, 0)) * p.p_cache_write
          + coalesce(e.cache_write_1h_tokens, 0) * p.p_cache_write_1h
          + (e.output_tokens - coalesce(e.reasoning_tokens, 0)) * p.p_output
          + coalesce(e.reasoning_tokens, 0) * p.p_reasoning
        )::{dec} AS cost_usd,
        -- the rates are those for requests of any size: a long-context request would be priced wrong
        count(*) FILTER (WHERE e.input_tokens > p.long_context_above) AS long_context_requests
      FROM read_json('{events}', format = 'newline_delimited', columns = {spec}) e
      JOIN prices p ON p.provider = e.provider AND p.model = e.model
      LEFT JOIN owners o ON o.team = e.team
      GROUP BY ALL
    ) TO '{out}' (FORMAT parquet)"""
)
