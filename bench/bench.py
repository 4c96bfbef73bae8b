"""The benchmark driver of bench/run (see bench/README.md). Generates the workload, runs every job on the
same data pinned to the same cores, measures wall time, CPU time and peak RSS of each job's process
(os.wait4), cross-checks the totals of a, b, c and e exactly, and prints the table."""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/o4-mini", "anthropic/claude-sonnet-4-5",
          "anthropic/claude-haiku-4-5", "gemini/gemini-2.5-flash"]
DAY = "2026-11-01"
RSS_RUNS = 3


def log(msg):
    print(f"== [{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def broker_cpu():
    """CPU seconds the broker process (Tansu) has used so far; None without --broker-pid."""
    if not ARGS.broker_pid:
        return None
    f = open(f"/proc/{ARGS.broker_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_stages(log_path):
    """Where `aifinops run`'s main loop spent its time, from its summary line: receive, process, commit (s)."""
    import re
    m = re.search(r"receiving and decoding ([0-9.]+)s, processing ([0-9.]+)s, committing ([0-9.]+)s",
                  open(log_path, errors="replace").read())
    return tuple(float(x) for x in m.groups()) if m else None


def measure(name, cmd, cpus, env=None, stdout=None, broker=False):
    """Runs cmd pinned to `cpus` (taskset list) under `aifinops-bench measure`; returns wall s, CPU s
    (user+sys), peak RSS MiB (wait4) and the sampled peaks of anonymous and file-backed memory. The job is
    spawned by that small process, not by this one: a child's peak RSS counts the memory of the process that
    spawned it (Linux keeps its high-water mark across exec), and this one holds hundreds of MiB once DuckDB
    has cross-checked the lakes."""
    out = os.path.join(ARGS.work, f"{name}.measure.json")
    full = ["taskset", "-c", cpus, ARGS.bench_bin, "measure", "--out", out, "--"] + cmd
    log(f"{name}: {' '.join(cmd)} (cpus {cpus})")
    err = open(os.path.join(ARGS.work, f"{name}.log"), "w")
    b0 = broker_cpu() if broker else None
    code = subprocess.run(full, stdout=stdout or err, stderr=err, env=env).returncode
    b1 = broker_cpu() if broker else None
    err.close()
    if code != 0:
        sys.stdout.write(open(os.path.join(ARGS.work, f"{name}.log")).read()[-4000:])
        raise SystemExit(f"{name} failed with exit code {code}")
    m = json.load(open(out))
    r = {"name": name, "wall": m["wall"], "cpu": m["cpu"], "rss": m["rss_kib"] / 1024,
         "anon": m["anon_kib"] / 1024, "file": m["file_kib"] / 1024,
         "broker_cpu": None if b0 is None or b1 is None else b1 - b0}
    log(f"{name}: {r['wall']:.2f}s wall, {r['cpu']:.2f}s CPU, {r['rss']:.0f} MiB peak RSS "
        f"(sampled peaks: {r['anon']:.0f} MiB anonymous, {r['file']:.0f} MiB file-backed)")
    return r


def gen(n, out, owners_out=None):
    cmd = [ARGS.aifinops, "gen", "--events", str(n), "--teams", str(ARGS.teams), "--keys", str(ARGS.keys),
           "--day", DAY, "--out", out]
    if owners_out:
        cmd += ["--owners-out", owners_out]
    subprocess.run(cmd, check=True)


def replay(name, events, cpus, config=None):
    lake = os.path.join(ARGS.work, f"lake-{name}")
    shutil.rmtree(lake, ignore_errors=True)
    extra = ["--config", config] if config else []
    r = measure(name, [ARGS.aifinops, "replay"] + extra + ["--lake", lake, "--owners", OWNERS, events], cpus)
    return r, lake


def lake_hourly(lake):
    return (f"SELECT epoch_ms(window_start) AS hour, owner, model, sum(requests) AS requests, "
            f"sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
            f"sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, "
            f"sum(reasoning_tokens) AS reasoning_tokens, sum(cost_usd) AS cost_usd "
            f"FROM read_parquet('{lake}/rollups/window=1h/**/*.parquet', hive_partitioning = false) "
            f"GROUP BY ALL")


def check(sources):
    """Every source's (hour, owner, model) rows must equal the first's exactly; returns the totals."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    measures = ["requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "cost_usd"]
    for name, sql in sources:
        con.execute(f"CREATE TABLE \"{name}\" AS SELECT hour, owner, model, "
                    + ", ".join(f"CAST({m} AS {'DECIMAL(38,18)' if m == 'cost_usd' else 'HUGEINT'}) AS {m}"
                                for m in measures) + f" FROM ({sql})")
    ref = sources[0][0]
    totals = {}
    ok = True
    for name, _ in sources:
        t = con.execute(f"SELECT count(*), " + ", ".join(f"sum({m})" for m in measures) + f" FROM \"{name}\"").fetchone()
        totals[name] = t
        diff = con.execute(
            f"SELECT count(*) FROM \"{ref}\" a FULL OUTER JOIN \"{name}\" b USING (hour, owner, model) WHERE "
            + " OR ".join(f"a.{m} IS DISTINCT FROM b.{m}" for m in measures)).fetchone()[0]
        log(f"check {name}: {t[0]} (hour, owner, model) rows, {t[1]} requests, {t[2]} input tokens, "
            f"{t[3]} output tokens, cost {t[7]} USD; rows differing from {ref}: {diff}")
        ok = ok and diff == 0
    return ok, totals


def main():
    global ARGS, OWNERS
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--teams", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--scale", default="1000000,5000000,10000000", help="event counts of the RSS runs of replay ('' = none)")
    ap.add_argument("--work", default="/var/tmp/aifinops-bench")
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--aifinops", required=True)
    ap.add_argument("--bench-bin", required=True)
    ap.add_argument("--table-out")
    ap.add_argument("--broker-pid", type=int, help="the broker's process, to report its CPU during c, d and e")
    ARGS = ap.parse_args()
    os.makedirs(ARGS.work, exist_ok=True)
    n = ARGS.events
    one, alls = "0", f"0-{ARGS.cores - 1}"
    events = os.path.join(ARGS.work, f"events-{n}.ndjson")
    OWNERS = os.path.join(ARGS.work, "owners.toml")
    log(f"1. workload: {n} events, {ARGS.teams} teams, {ARGS.keys} keys -> {events}")
    gen(n, events, OWNERS)
    nbytes = os.path.getsize(events)
    prices = os.path.join(ARGS.work, "prices.csv")
    with open(prices, "w") as f:
        subprocess.run([ARGS.aifinops, "prices", "export", "--at", DAY] + MODELS, check=True, stdout=f)
    owners_csv = os.path.join(ARGS.work, "owners.csv")
    with open(OWNERS, "rb") as f, open(owners_csv, "w", newline="") as o:
        w = csv.writer(o)
        w.writerow(["team", "owner", "risk_owner"])
        for rule in tomllib.load(f)["owner"]:
            for t in rule.get("team", []):
                w.writerow([t, rule["id"], rule.get("risk_owner", "")])
    topic = f"bench-{n}-{int(time.time())}"
    log(f"   producing into topic {topic} ({ARGS.partitions} partitions) on {ARGS.brokers}")
    subprocess.run([ARGS.bench_bin, "produce", "--brokers", ARGS.brokers, "--topic", topic,
                    "--partitions", str(ARGS.partitions), events], check=True)
    subprocess.run([ARGS.bench_bin, "produce", "--brokers", ARGS.brokers, "--topic", f"{topic}-alerts",
                    "--partitions", "1", "/dev/null"], check=True)

    log("2. the jobs")
    res = {}
    res["a1"], lake_a = replay("a1", events, one)
    res["a"], _ = replay("a", events, alls)
    # DuckDB's window only: the hourly rollup, without the 1m and 1d rollups and the spike detector (what the
    # rest of a's work costs)
    hourly = os.path.join(ARGS.work, "hourly.toml")
    with open(hourly, "w") as f:
        f.write('[pipeline]\nwindows = ["1h"]\n[spike]\nenabled = false\n')
    res["h1"], lake_h = replay("h1", events, one, hourly)
    # the floor of a on one core: its first stage (read + decode) and its last (write the rollups it wrote)
    # alone, timed inside one process (bench/src/main.rs `stages`)
    for key, lake in (("fa", lake_a), ("fh", lake_h)):
        out = os.path.join(ARGS.work, f"{key}.json")
        with open(out, "w") as f:
            measure(key, [ARGS.bench_bin, "stages", "--owners", OWNERS, "--lake", lake,
                          "--scratch", os.path.join(ARGS.work, "scratch"), events], one, stdout=f)
        res[key] = json.load(open(out))
    for key, threads, cpus in (("b1", 1, one), ("b", ARGS.cores, alls)):
        out = os.path.join(ARGS.work, f"duck-{key}.parquet")
        res[key] = measure(key, [sys.executable, os.path.join(HERE, "duck_job.py"), events, prices, owners_csv,
                                 out, str(threads)], cpus)
    # b*: DuckDB writing what a writes (1m, 1h, 1d rollups with all of replay's dimensions and measures)
    for key, threads, cpus in (("B1", 1, one), ("B", ARGS.cores, alls)):
        out = os.path.join(ARGS.work, f"duck-{key}")
        shutil.rmtree(out, ignore_errors=True)
        res[key] = measure(key, [sys.executable, os.path.join(HERE, "duck_full.py"), events, prices, owners_csv,
                                 out, str(threads)], cpus)
    cfg = os.path.join(ARGS.work, "run.toml")
    # c and d twice, alternately: one read of the topic can take up to ~25 % longer than the next on this
    # broker, for either job, and one slow read of either decided c/d (bench/README.md). Each
    # job's faster run is its figure; both are printed. Each run of c writes a fresh lake, in a fresh group,
    # and both lakes are cross-checked.
    runs = {"c": [], "d": []}
    lakes_c = [os.path.join(ARGS.work, f"lake-c{i}") for i in (1, 2)]
    for i, lake_c in enumerate(lakes_c, 1):
        shutil.rmtree(lake_c, ignore_errors=True)
        with open(cfg, "w") as f:
            f.write(f'[lake]\ndir = "{lake_c}"\n[owners]\nfile = "{OWNERS}"\n'
                    f'[kafka]\nbrokers = "{ARGS.brokers}"\ntopics = ["{topic}"]\ngroup = "bench-c{i}-{topic}"\n'
                    f'alert_topic = "{topic}-alerts"\ndead_letter_topic = ""\nsession_timeout = "6s"\n'
                    f'max_poll_interval = "30s"\n[pipeline]\nidle_timeout = "120s"\n')
        r = measure(f"c{i}", [ARGS.aifinops, "run", "-c", cfg, "--until-caught-up"], alls, broker=True)
        r["stages"] = run_stages(os.path.join(ARGS.work, f"c{i}.log"))
        runs["c"].append(r)
        with open(os.path.join(ARGS.work, f"d{i}.out"), "w") as f:
            runs["d"].append(measure(f"d{i}", [ARGS.bench_bin, "consume", "--brokers", ARGS.brokers, "--topic", topic,
                                               "--group", f"bench-d{i}-{topic}", "--expect", str(n)], alls, stdout=f,
                                     broker=True))
    for k in ("c", "d"):
        res[k] = dict(min(runs[k], key=lambda r: r["wall"]), runs=runs[k])
    py_out = os.path.join(ARGS.work, "py-e.csv")
    res["e"] = measure("e", [sys.executable, os.path.join(HERE, "py_consumer.py"), ARGS.brokers, topic,
                             f"bench-e-{topic}", str(n), prices, owners_csv, py_out], alls, broker=True)

    log("3. cross-check (requests, tokens and exact Decimal cost per hour, owner and model)")
    ok, totals = check([
        ("b: duckdb", f"SELECT epoch_ms(hour) AS hour, owner, model, * EXCLUDE (hour, owner, model, long_context_requests) "
                      f"FROM read_parquet('{ARGS.work}/duck-b1.parquet')"),
        ("b: duckdb all threads", f"SELECT epoch_ms(hour) AS hour, owner, model, * EXCLUDE (hour, owner, model, "
                                  f"long_context_requests) FROM read_parquet('{ARGS.work}/duck-b.parquet')"),
        ("b*: duckdb, a's rollups", f"SELECT epoch_ms(window_start) AS hour, owner, model, sum(requests) AS requests, "
                                    f"sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
                                    f"sum(cache_read_tokens) AS cache_read_tokens, "
                                    f"sum(cache_write_tokens) AS cache_write_tokens, "
                                    f"sum(reasoning_tokens) AS reasoning_tokens, sum(cost_usd) AS cost_usd "
                                    f"FROM read_parquet('{ARGS.work}/duck-B1/1h.parquet') GROUP BY ALL"),
        ("a: aifinops replay", lake_hourly(lake_a)),
        ("a, 1h only", lake_hourly(lake_h)),
        ("c: aifinops run", lake_hourly(lakes_c[0])),
        ("c: aifinops run, second run", lake_hourly(lakes_c[1])),
        ("e: python consumer", f"SELECT epoch_ms(CAST(hour AS TIMESTAMPTZ)) AS hour, owner, model, "
                               f"* EXCLUDE (hour, owner, model) FROM read_csv('{py_out}', all_varchar = true)"),
    ])
    # b* and a wrote the same 1m and 1h rollups: every row, every column (the 1d rollups differ in which keys
    # the cap kept, see duck_full.py)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for w in ("1m", "1h"):
        ours = f"SELECT * FROM read_parquet('{lake_a}/rollups/window={w}/**/*.parquet', hive_partitioning = false)"
        theirs = f"SELECT * FROM read_parquet('{ARGS.work}/duck-B1/{w}.parquet')"
        n_ours, n_theirs = (con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0] for q in (ours, theirs))
        diff = sum(con.execute(f"SELECT count(*) FROM ({x} EXCEPT ALL {y})").fetchone()[0]
                   for x, y in ((ours, theirs), (theirs, ours)))
        log(f"check {w} rollups of a ({n_ours} rows) and b* ({n_theirs} rows), all columns: {diff} rows differ")
        ok = ok and diff == 0 and n_ours > 0
    lc = con.execute(f"SELECT sum(long_context_requests) FROM read_parquet('{ARGS.work}/duck-b1.parquet')").fetchone()[0]
    if lc:
        ok = False
        log(f"check: {lc} requests reach a long-context tier: the exported base rates do not price them")

    # disk: the lakes and the workload are not needed any more (the 10M run needs ~5 GB)
    for lake in (lake_a, lake_h, *lakes_c, os.path.join(ARGS.work, "lake-a"), os.path.join(ARGS.work, "duck-B1"),
                 os.path.join(ARGS.work, "duck-B")):
        shutil.rmtree(lake, ignore_errors=True)
    os.remove(events)

    scale = {}
    for s in [int(x) for x in ARGS.scale.split(",") if x]:
        f = os.path.join(ARGS.work, f"events-{s}.ndjson")
        log(f"4. replay at {s} events (peak RSS, {RSS_RUNS} runs)")
        gen(s, f)
        runs = []
        for i in range(RSS_RUNS):
            r, lake = replay(f"a-{s}-{i}", f, alls)
            shutil.rmtree(lake, ignore_errors=True)
            runs.append(r)
        # the peak RSS of one run moves with the two threads' timing (an outlier ~15 % above the rest turns
        # up now and then): the median run, with the range
        runs.sort(key=lambda r: r["rss"])
        scale[s] = dict(runs[len(runs) // 2], lo=runs[0]["rss"], hi=runs[-1]["rss"])
        os.remove(f)

    mb = nbytes / 1e6
    load = open("/proc/loadavg").read().split()[:3]
    lines = [f"{n:,} events, {mb:.0f} MB NDJSON ({nbytes / n:.0f} B/event), {ARGS.teams} teams, {ARGS.keys} keys; "
             f"{ARGS.cores} cores ({os.uname().machine}), topic of {ARGS.partitions} partitions on Tansu (sqlite); "
             f"load average at the end {' '.join(load)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "",
             "| job | cores | events/s | MB/s | CPU s / M events | peak RSS MiB | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    names = {"a1": "a. aifinops replay", "a": "a. aifinops replay", "h1": "a. replay, 1h rollup only",
             "b1": "b. DuckDB, 1 thread",
             "b": f"b. DuckDB, {ARGS.cores} threads",
             "B1": "b*. DuckDB writing a's rollups, 1 thread", "B": f"b*. DuckDB writing a's rollups, {ARGS.cores} threads",
             "c": "c. aifinops run (Kafka)",
             "d": "d. rdkafka consume-and-discard", "e": "e. Python consumer (confluent-kafka)"}
    for k in ("a1", "a", "h1", "b1", "b", "B1", "B", "c", "d", "e"):
        r = res[k]
        cores = "1" if k in ("a1", "h1", "b1", "B1") else str(ARGS.cores)
        lines.append(f"| {names[k]} | {cores} | {n / r['wall']:,.0f} | {mb / r['wall']:.1f} | "
                     f"{r['cpu'] / n * 1e6:.2f} | {r['rss']:.0f} | {r['wall']:.2f} |")
    dec, wa, wh = res["fa"]["decode"], res["fa"]["write"], res["fh"]["write"]
    for label, st, rows in (("f. floor: read + decode only", dec, None),
                            ("g. floor: write a's rollups only", wa, wa["rows"]),
                            ("g. floor: write the 1h-only rollups only", wh, wh["rows"])):
        what = f" ({rows:,} rows)" if rows else ""
        lines.append(f"| {label}{what} | 1 | {n / st['wall']:,.0f} | {mb / st['wall']:.1f} | "
                     f"{st['cpu'] / n * 1e6:.2f} | – | {st['wall']:.2f} |")
    ratio = lambda x, y: res[y]["wall"] / res[x]["wall"]  # throughput of x over y
    walls = lambda k: " / ".join("%.1f" % r["wall"] for r in res[k]["runs"])
    lines += ["",
              f"- a/b, 1 core: **{ratio('a1', 'b1'):.2f}x** DuckDB single-thread (target >= 1.0)",
              f"- a/b, {ARGS.cores} cores: **{ratio('a', 'b'):.2f}x** DuckDB all threads (target >= 1.0)",
              f"- a/b with the 1h rollup only (DuckDB's window), 1 core: **{ratio('h1', 'b1'):.2f}x**",
              f"- a/b*, the same rollups written by both: **{ratio('a1', 'B1'):.2f}x** DuckDB single-thread, "
              f"**{ratio('a', 'B'):.2f}x** DuckDB all threads; peak RSS {res['a1']['rss']:.0f} vs "
              f"{res['B1']['rss']:.0f} MiB",
              f"- floor of a, 1 core (f + g, nothing between them): {(dec['cpu'] + wa['cpu']) / n * 1e6:.2f} CPU s / M "
              f"events = {(dec['cpu'] + wa['cpu']) / res['b1']['cpu']:.2f}x DuckDB's whole job; a/b could reach at most "
              f"**{res['b1']['wall'] / (dec['wall'] + wa['wall']):.2f}x** (1h rollup only: "
              f"{(dec['cpu'] + wh['cpu']) / n * 1e6:.2f} CPU s / M, at most "
              f"**{res['b1']['wall'] / (dec['wall'] + wh['wall']):.2f}x**)",
              f"- c/d: **{ratio('c', 'd'):.2f}x** raw consume-and-discard (target >= 0.9); each the faster of two "
              f"alternating runs, wall s: c {walls('c')}, d {walls('d')}",
              f"- c/e: **{ratio('c', 'e'):.2f}x** the Python consumer (target >= 20)"]
    if all(r.get("broker_cpu") is not None for r in res["c"]["runs"] + res["d"]["runs"] + [res["e"]]):
        busy = lambda r: f"{r['broker_cpu']:.1f} s ({r['broker_cpu'] / r['wall'] * 100:.0f} % of a core)"
        lines.append("- the broker's (Tansu's) CPU while each Kafka job ran: "
                     + ", ".join(f"{k}{i + 1} {busy(r)}" for k in ("c", "d") for i, r in enumerate(res[k]["runs"]))
                     + f", e {busy(res['e'])}")
    st = [r["stages"] for r in res["c"]["runs"]]
    if all(st):
        lines.append("- c's main loop (its summary line), s: " + "; ".join(
            f"run {i + 1}: receiving and decoding {a:.1f}, processing {b:.1f}, committing {c:.1f}"
            for i, (a, b, c) in enumerate(st)))
    if scale:
        rss = ", ".join(f"{s:,} events: {r['rss']:.0f} MiB ({r['lo']:.0f}–{r['hi']:.0f}; {s / r['wall']:,.0f} events/s)"
                        for s, r in scale.items())
        lines.append(f"- replay peak RSS, median of {RSS_RUNS} runs (range): {rss}")
        split = ", ".join(f"{s:,}: {r['anon']:.0f} + {r['file']:.0f}" for s, r in scale.items())
        lines.append(f"- of which, in the median run, anonymous memory (heap) + file-backed pages (the binary's "
                     f"code) at their sampled peaks, MiB: {split}")
    lines.append(f"- cross-check of a, b, b*, c, e (per hour, owner and model: requests, tokens, exact cost) and of "
                 f"a's and b*'s 1m and 1h rollups (every row and column): "
                 f"**{'PASS' if ok else 'FAIL'}**")
    table = "\n".join(lines)
    print("\n" + table)
    if ARGS.table_out:
        open(ARGS.table_out, "w").write(table + "\n")
    if not ok:
        raise SystemExit("the cross-check failed: the jobs do not agree")


if __name__ == "__main__":
    main()
