"""Job (e) of bench/run: a straightforward Python consumer doing the hourly rollup from the topic:
confluent-kafka + json + a dict per (hour, owner, model); costs as exact integers of 10^-18 USD (the same
per-token rates as aifinops, from `aifinops prices export`), written as a CSV with Decimal strings.
usage: py_consumer.py BROKERS TOPIC GROUP EXPECTED PRICES_CSV OWNERS_CSV OUT_CSV"""
import csv
import json
import sys
from decimal import Decimal

from confluent_kafka import Consumer

brokers, topic, group, expected, prices_csv, owners_csv, out = sys.argv[1:8]
expected = int(expected)
UNIT = 10**18
rates = {}
for r in csv.DictReader(open(prices_csv)):
    rates[(r["provider"], r["model"])] = tuple(
        int(Decimal(r[c]) * UNIT) for c in ("input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")
    )
owners = {r["team"]: r["owner"] for r in csv.DictReader(open(owners_csv))}

c = Consumer({
    "bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest",
    "enable.auto.commit": False, "session.timeout.ms": 6000,
})
c.subscribe([topic])
agg = {}
n = 0
while n < expected:
    for m in c.consume(num_messages=10000, timeout=1.0):
        if m.error():
            raise SystemExit(f"consume: {m.error()}")
        e = json.loads(m.value())
        n += 1
        inp, out_t = e["input_tokens"], e["output_tokens"]
        cr, cw = e.get("cache_read_tokens", 0), e.get("cache_write_tokens", 0)
        cw1h, rs = e.get("cache_write_1h_tokens", 0), e.get("reasoning_tokens", 0)
        p_in, p_cr, p_cw, p_cw1h, p_out, p_rs = rates[(e["provider"], e["model"])]
        cost = (inp - cr - cw) * p_in + cr * p_cr + (cw - cw1h) * p_cw + cw1h * p_cw1h + (out_t - rs) * p_out + rs * p_rs
        key = (e["timestamp"][:13], owners.get(e.get("team"), "unattributed"), e["model"])
        a = agg.get(key)
        if a is None:
            agg[key] = [1, inp, out_t, cr, cw, rs, cost]
        else:
            a[0] += 1
            a[1] += inp
            a[2] += out_t
            a[3] += cr
            a[4] += cw
            a[5] += rs
            a[6] += cost
c.close()
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["hour", "owner", "model", "requests", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "reasoning_tokens", "cost_usd"])
    for (hour, owner, model), a in agg.items():
        w.writerow([hour + ":00:00Z", owner, model, *a[:6], str(Decimal(a[6]).scaleb(-18))])
