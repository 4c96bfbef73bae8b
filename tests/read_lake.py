"""Reads an aifinops lake with DuckDB and pyarrow (as users do) and prints totals as JSON."""
import json
import sys

import duckdb
import pyarrow.dataset as ds

lake = sys.argv[1]
con = duckdb.connect()
glob = f"{lake}/rollups/**/*.parquet"
req, cost = con.execute(
    f"SELECT sum(requests), CAST(sum(cost_usd) AS VARCHAR) FROM read_parquet('{glob}', hive_partitioning=true) WHERE \"window\" = '1h'"
).fetchone()
windows = [r[0] for r in con.execute(
    f"SELECT DISTINCT \"window\" FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY 1"
).fetchall()]
ctype = con.execute(f"SELECT typeof(cost_usd) FROM read_parquet('{glob}', hive_partitioning=true) LIMIT 1").fetchone()[0]

t = ds.dataset(f"{lake}/rollups", format="parquet", partitioning="hive").to_table(filter=ds.field("window") == "1h")
pa_req = t.column("requests").to_pylist()
pa_cost = sum(v for v in t.column("cost_usd").to_pylist() if v is not None)
print(json.dumps({
    "duckdb": {"requests": int(req), "cost_usd": cost, "windows": windows, "cost_type": ctype},
    "pyarrow": {"requests": int(sum(pa_req)), "cost_usd": str(pa_cost)},
}))
