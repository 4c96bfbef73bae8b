//! A mixed-format day: one NDJSON file with records in eleven gateway/SDK formats (detected per record),
//! replayed into a lake whose totals must equal totals computed here by hand from each format's own
//! inclusion rules, to the last 10^-18 USD. Plus `prices check`.

mod common;

use common::*;
use serde_json::json;

const DAY: i64 = 1_793_577_600_000; // 2026-11-02T00:00:00Z

/// Rates in 10^-18 USD per token (the test catalog below, per 1M tokens / 10^6).
const GPT4O: [i128; 3] = [2_500_000_000_000, 1_250_000_000_000, 10_000_000_000_000]; // in, cache read, out
const SONNET: [i128; 5] =
    [3_000_000_000_000, 300_000_000_000, 3_750_000_000_000, 6_000_000_000_000, 15_000_000_000_000];
const SEARCH: i128 = 10_000_000_000_000_000; // $0.01 per web search
const FLASH: [i128; 3] = [300_000_000_000, 75_000_000_000, 2_500_000_000_000];

const CATALOG: &str = r#"
[[model]]
name = "gpt-4o"
input_per_mtok = "2.50"
cache_read_per_mtok = "1.25"
output_per_mtok = "10.00"

[[model]]
name = "claude-sonnet-4-5"
input_per_mtok = "3.00"
cache_read_per_mtok = "0.30"
cache_write_per_mtok = "3.75"
cache_write_1h_per_mtok = "6.00"
output_per_mtok = "15.00"
web_search_per_call = "0.01"

[[model]]
name = "gemini-2.5-flash"
input_per_mtok = "0.30"
cache_read_per_mtok = "0.075"
output_per_mtok = "2.50"
"#;

#[derive(Default, Debug, PartialEq)]
struct Totals {
    requests: i64,
    input: i64,
    cache_read: i64,
    cache_write: i64,
    cache_write_1h: i64,
    output: i64,
    reasoning: i64,
    searches: i64,
    cache_hits: i64,
    cost: i128,
}

fn rfc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One record per call, cycling through the formats; the expected canonical counts and cost of each are
/// worked out from the format's documented inclusion rules, independently of the adapters.
fn mixed_day(n: usize) -> (Vec<String>, Totals, (i128, i128)) {
    let mut lines = Vec::new();
    let mut t = Totals::default();
    // LiteLLM reports its own cost ($0.01 per call here): (ours, theirs) for the drift alert
    let mut litellm = (0i128, 0i128);
    for i in 0..n {
        let ts = DAY + i as i64 * 40_000;
        let a = 1_000 + (i as i64 * 37) % 5_000; // uncached input as the provider counts it
        let r = (i as i64 * 11) % 800; // cache read
        let w = (i as i64 * 7) % 300; // cache write
        let o = 100 + i as i64 % 400; // visible output
        let th = i as i64 % 50; // reasoning / thoughts
        let id = format!("call-{i}");
        let key = format!("key-{}", i % 7);
        // (record, input, cache_read, cache_write, cache_write_1h, output, reasoning, searches, cost)
        let (rec, inp, cr, cw, cw1h, out, rs, ws, cost, hit) = match i % 11 {
            0 => (
                json!({"event_id": id, "timestamp": ts, "provider": "openai", "model": "gpt-4o", "input_tokens": a + r,
                       "cache_read_tokens": r, "output_tokens": o, "api_key_id": key, "team": "search"}),
                a + r,
                r,
                0,
                0,
                o,
                0,
                0,
                a as i128 * GPT4O[0] + r as i128 * GPT4O[1] + o as i128 * GPT4O[2],
                false,
            ),
            1 => (
                // LiteLLM folds Anthropic's cache counts into prompt_tokens
                json!({"id": id, "call_type": "acompletion", "startTime": ts as f64 / 1000.0, "model": "claude-sonnet-4-5-20250929",
                       "custom_llm_provider": "anthropic", "prompt_tokens": a + r + w, "completion_tokens": o, "status": "success",
                       "response_cost": 0.01, "request_tags": ["workflow:triage"],
                       "metadata": {"user_api_key_alias": key, "user_api_key_team_alias": "support",
                                    "usage_object": {"prompt_tokens": a + r + w, "completion_tokens": o,
                                                     "prompt_tokens_details": {"cached_tokens": r}, "cache_creation_input_tokens": w}}}),
                a + r + w,
                r,
                w,
                0,
                o,
                0,
                0,
                a as i128 * SONNET[0] + r as i128 * SONNET[1] + w as i128 * SONNET[2] + o as i128 * SONNET[4],
                false,
            ),
            2 => (
                // OTel semconv: cache counts are inside input_tokens
                json!({"trace_id": format!("{i:032x}"), "span_id": format!("{i:016x}"), "start_time": rfc(ts),
                       "gen_ai.provider.name": "openai", "gen_ai.response.model": "gpt-4o-2024-08-06",
                       "gen_ai.usage.input_tokens": a + r, "gen_ai.usage.cache_read.input_tokens": r,
                       "gen_ai.usage.output_tokens": o, "aifinops.api_key_id": key, "service.name": "agent"}),
                a + r,
                r,
                0,
                0,
                o,
                0,
                0,
                a as i128 * GPT4O[0] + r as i128 * GPT4O[1] + o as i128 * GPT4O[2],
                false,
            ),
            3 => (
                json!({"event_id": id, "timestamp": rfc(ts), "api_key_id": key, "team": "search",
                       "response": {"id": "chatcmpl-x", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                                    "usage": {"prompt_tokens": a + r, "completion_tokens": o + th,
                                              "prompt_tokens_details": {"cached_tokens": r},
                                              "completion_tokens_details": {"reasoning_tokens": th}}}}),
                a + r,
                r,
                0,
                0,
                o + th,
                th,
                0,
                a as i128 * GPT4O[0] + r as i128 * GPT4O[1] + (o + th) as i128 * GPT4O[2],
                false,
            ),
            4 => {
                // Anthropic adds cache counts on top of input_tokens; part of the writes are 1-hour
                let h = w / 2;
                let s = i as i64 % 3;
                (
                    json!({"event_id": id, "timestamp": rfc(ts), "api_key_id": key, "team": "legal",
                           "response": {"id": "msg_x", "type": "message", "model": "claude-sonnet-4-5-20250929",
                                        "usage": {"input_tokens": a, "cache_read_input_tokens": r, "cache_creation_input_tokens": w,
                                                  "cache_creation": {"ephemeral_5m_input_tokens": w - h, "ephemeral_1h_input_tokens": h},
                                                  "output_tokens": o, "server_tool_use": {"web_search_requests": s}}}}),
                    a + r + w,
                    r,
                    w,
                    h,
                    o,
                    0,
                    s,
                    a as i128 * SONNET[0]
                        + r as i128 * SONNET[1]
                        + (w - h) as i128 * SONNET[2]
                        + h as i128 * SONNET[3]
                        + o as i128 * SONNET[4]
                        + s as i128 * SEARCH,
                    false,
                )
            }
            5 => (
                // Gemini: cached inside the prompt, thoughts outside candidates
                json!({"timestamp": rfc(ts), "api_key_id": key, "team": "search",
                       "response": {"responseId": id, "modelVersion": "gemini-2.5-flash",
                                    "usageMetadata": {"promptTokenCount": a + r, "cachedContentTokenCount": r,
                                                      "candidatesTokenCount": o, "thoughtsTokenCount": th}}}),
                a + r,
                r,
                0,
                0,
                o + th,
                th,
                0,
                a as i128 * FLASH[0] + r as i128 * FLASH[1] + (o + th) as i128 * FLASH[2],
                false,
            ),
            6 => (
                // Bedrock invocation log: cache counts separate from inputTokenCount
                json!({"schemaType": "ModelInvocationLog", "timestamp": rfc(ts), "requestId": id, "accountId": "1",
                       "identity": {"arn": format!("arn:aws:sts::1:assumed-role/{key}")},
                       "modelId": "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                       "input": {"inputTokenCount": a, "cacheReadInputTokenCount": r, "cacheWriteInputTokenCount": w},
                       "output": {"outputTokenCount": o}, "requestMetadata": {"team": "legal"}}),
                a + r + w,
                r,
                w,
                0,
                o,
                0,
                0,
                a as i128 * SONNET[0] + r as i128 * SONNET[1] + w as i128 * SONNET[2] + o as i128 * SONNET[4],
                false,
            ),
            7 => {
                // Portkey: cost in cents; a cache HIT is served by Portkey (no provider cost)
                let hit = i % 4 == 3;
                (
                    json!({"id": id, "created_at": rfc(ts), "ai_org": "openai", "ai_model": "gpt-4o", "req_units": a,
                           "res_units": o, "cost": 0.5, "is_success": 1, "cache_status": if hit { "HIT" } else { "MISS" },
                           "metadata": {"team": "search", "api_key_id": key}}),
                    a,
                    0,
                    0,
                    0,
                    o,
                    0,
                    0,
                    if hit { 0 } else { a as i128 * GPT4O[0] + o as i128 * GPT4O[2] },
                    hit,
                )
            }
            8 => (
                json!({"id": id, "created_at": rfc(ts), "provider": "google-ai-studio", "model": "gemini-2.5-flash",
                       "tokens_in": a, "tokens_out": o, "cost": 0.001, "cached": false, "success": true,
                       "metadata": format!("{{\"team\": \"search\", \"api_key_id\": \"{key}\"}}")}),
                a,
                0,
                0,
                0,
                o,
                0,
                0,
                a as i128 * FLASH[0] + o as i128 * FLASH[2],
                false,
            ),
            9 => (
                json!({"request": {"id": id}, "started_at": ts, "latencies": {"proxy": 10}, "consumer": {"username": key},
                       "ai": {"proxy": {"usage": {"prompt_tokens": a + r, "completion_tokens": o,
                                                  "prompt_tokens_details": {"cached_tokens": r}},
                                        "meta": {"provider_name": "openai", "response_model": "gpt-4o"}}}}),
                a + r,
                r,
                0,
                0,
                o,
                0,
                0,
                a as i128 * GPT4O[0] + r as i128 * GPT4O[1] + o as i128 * GPT4O[2],
                false,
            ),
            _ => (
                json!({"specversion": "1.0", "id": id, "source": "//gw", "type": "dev.aifinops.usage.v1", "time": rfc(ts),
                       "data": {"event_id": id, "timestamp": rfc(ts), "provider": "openai", "model": "gpt-4o",
                                "input_tokens": a, "output_tokens": o, "api_key_id": key}}),
                a,
                0,
                0,
                0,
                o,
                0,
                0,
                a as i128 * GPT4O[0] + o as i128 * GPT4O[2],
                false,
            ),
        };
        lines.push(serde_json::to_string(&rec).unwrap());
        if i % 11 == 1 && ts < DAY + 86_400_000 {
            // (the last hour of calls falls on the next day, whose small drift stays under the $1 floor)
            litellm.0 += cost;
            litellm.1 += 10_000_000_000_000_000;
        }
        t.requests += 1;
        t.input += inp;
        t.cache_read += cr;
        t.cache_write += cw;
        t.cache_write_1h += cw1h;
        t.output += out;
        t.reasoning += rs;
        t.searches += ws;
        t.cache_hits += hit as i64;
        t.cost += cost;
    }
    (lines, t, litellm)
}

#[test]
fn a_mixed_format_day_is_priced_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, want, litellm) = mixed_day(2_200);
    let input = dir.path().join("mixed.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("prices.toml"), CATALOG).unwrap();
    let cfg = dir.path().join("aifinops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[lake]\ndir = {:?}\n[prices]\nbuiltin = false\nfiles = [{:?}]\n",
            dir.path().join("lake"),
            dir.path().join("prices.toml")
        ),
    )
    .unwrap();
    let out = aifinops(&["replay", "--config", cfg.to_str().unwrap(), input.to_str().unwrap()]);
    ok(&out);
    let rows = query(
        &dir.path().join("lake"),
        "SELECT sum(requests) AS requests, sum(input_tokens) AS input, sum(cache_read_tokens) AS cache_read, \
         sum(cache_write_tokens) AS cache_write, sum(cache_write_1h_tokens) AS cache_write_1h, \
         sum(output_tokens) AS output, sum(reasoning_tokens) AS reasoning, sum(retrieval_calls) AS searches, \
         sum(cache_hit_requests) AS cache_hits, sum(unpriced_requests) AS unpriced, \
         CAST(sum(cost_usd) AS VARCHAR) AS cost FROM rollups WHERE \"window\" = '1d'",
    );
    let r = &rows[0];
    let n = |k: &str| r[k].as_i64().unwrap_or_else(|| panic!("{k} in {r:?}"));
    let got = Totals {
        requests: n("requests"),
        input: n("input"),
        cache_read: n("cache_read"),
        cache_write: n("cache_write"),
        cache_write_1h: n("cache_write_1h"),
        output: n("output"),
        reasoning: n("reasoning"),
        searches: n("searches"),
        cache_hits: n("cache_hits"),
        cost: aifinops_schemas::money::parse_usd("cost", r["cost"].as_str().unwrap()).unwrap(),
    };
    assert_eq!(n("unpriced"), 0, "every format's model priced");
    assert_eq!(got, want, "lake totals vs hand-computed totals (cost in 10^-18 USD)");
    // nothing was dead-lettered
    let dl = query(&dir.path().join("lake"), "SELECT count(*) AS n FROM dead_letters");
    assert_eq!(dl.first().and_then(|r| r["n"].as_i64()).unwrap_or(0), 0, "{dl:?}");

    // reconciliation: LiteLLM's reported cost for its calls differs from the catalog price of the same calls
    let drift = query(&dir.path().join("lake"), "SELECT data FROM alerts WHERE type = 'aifinops.cost.drift'");
    assert_eq!(drift.len(), 1, "{drift:?}");
    let d: serde_json::Value = serde_json::from_str(drift[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["model"], "claude-sonnet-4-5-20250929");
    let diff = aifinops_schemas::money::parse_usd("d", d["diff_usd"].as_str().unwrap()).unwrap();
    assert_eq!(diff, litellm.0 - litellm.1, "{d}");

    // each row says which catalog entry priced it
    let ids = query(
        &dir.path().join("lake"),
        "SELECT DISTINCT price_id FROM rollups WHERE \"window\" = '1d' ORDER BY price_id",
    );
    let ids: Vec<&str> = ids.iter().filter_map(|r| r["price_id"].as_str()).collect();
    assert!(ids.iter().any(|i| i.starts_with("claude-sonnet-4-5@list#")), "{ids:?}");
    assert!(ids.contains(&"gateway-cache-hit"), "{ids:?}");
}

#[test]
fn prices_check_lists_models_the_catalog_cannot_price() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, _, _) = mixed_day(22);
    lines.push(
        json!({"event_id": "x1", "timestamp": DAY, "provider": "acme", "model": "acme-llm-9", "input_tokens": 10, "output_tokens": 5})
            .to_string(),
    );
    let input = dir.path().join("traffic.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("prices.toml"), CATALOG).unwrap();
    let prices = dir.path().join("prices.toml");
    let out =
        aifinops(&["prices", "check", "--no-builtin", "--catalog", prices.to_str().unwrap(), input.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("acme-llm-9"), "{stdout}");
    assert!(stdout.contains("23 calls read, 22 priced, 1 unpriced, 0 without usage"), "{stdout}");
    assert!(!stdout.contains("gpt-4o "), "{stdout}");
    // with the model added, the check passes
    let extra = dir.path().join("acme.toml");
    std::fs::write(&extra, "[[model]]\nname = \"acme-llm-9\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"2\"\n")
        .unwrap();
    let out = aifinops(&[
        "prices",
        "check",
        "--no-builtin",
        "--catalog",
        prices.to_str().unwrap(),
        "--catalog",
        extra.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_retrying_agent_loop_raises_one_retry_storm_alert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prices.toml"), CATALOG).unwrap();
    // one hour: a healthy workflow, and an agent loop where most calls fail and are retried
    let mut lines = Vec::new();
    let (mut cost, mut failed, mut retry) = (0i128, 0i128, 0i128);
    for i in 0..400i64 {
        let ts = DAY + 10 * 3_600_000 + i * 8_000;
        // each agent run (trace) of the loop: an answer step that succeeds, a plan step that fails, and the
        // plan step again: a retry, marked either by `attempt` or only by its repeated trace_id + step
        let (workflow, status, attempt, step) = match i % 4 {
            0 => ("rag", "ok", None, "answer"),
            1 => ("loop", "ok", None, "answer"),
            2 => ("loop", "error", None, "plan"),
            _ if i % 8 == 3 => ("loop", "error", Some(2 + i % 3), "plan"),
            _ => ("loop", "error", None, "plan"),
        };
        let c = 2_000 * GPT4O[0] + 500 * GPT4O[2];
        if workflow == "loop" {
            cost += c;
            failed += if status == "error" { c } else { 0 };
            retry += if i % 4 == 3 { c } else { 0 };
        }
        let mut ev = json!({"event_id": format!("r{i}"), "timestamp": ts, "provider": "openai", "model": "gpt-4o", "input_tokens": 2000,
               "output_tokens": 500, "status": status, "workflow": workflow, "api_key_id": "k",
               "trace_id": if workflow == "rag" { format!("rag-{i}") } else { format!("trace-{}", i / 4) }, "step": step});
        if let Some(a) = attempt {
            ev["attempt"] = json!(a);
        }
        if i % 40 == 7 {
            ev["step"] = json!(7); // an integer step works the same
            lines.push(json!({"event_id": format!("r{}-first", i), "timestamp": ts - 1, "provider": "openai", "model": "gpt-4o",
                "input_tokens": 2000, "output_tokens": 500, "status": "error", "workflow": "loop", "api_key_id": "k",
                "trace_id": format!("trace-{}", i / 4), "step": 7}).to_string());
            cost += c;
            failed += c;
        }
        lines.push(ev.to_string());
        if i % 50 == 11 {
            lines.push(lines.last().unwrap().clone()); // a redelivery: a duplicate, not another retry
        }
    }
    let input = dir.path().join("loop.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let cfg = dir.path().join("aifinops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[lake]\ndir = {:?}\n[prices]\nbuiltin = false\nfiles = [{:?}]\n[retry_storm]\nmin_usd = \"0.5\"\n",
            dir.path().join("lake"),
            dir.path().join("prices.toml")
        ),
    )
    .unwrap();
    ok(&aifinops(&["replay", "--config", cfg.to_str().unwrap(), input.to_str().unwrap()]));
    let alerts = query(&dir.path().join("lake"), "SELECT data FROM alerts WHERE type = 'aifinops.retry.storm'");
    assert_eq!(alerts.len(), 1, "only the looping workflow: {alerts:?}");
    let d: serde_json::Value = serde_json::from_str(alerts[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["workflow"], "loop");
    let usd = |k: &str| aifinops_schemas::money::parse_usd(k, d[k].as_str().unwrap()).unwrap();
    assert_eq!((usd("cost_usd"), usd("failed_cost_usd"), usd("retry_cost_usd")), (cost, failed, retry));
    // the rollups carry the same parts of the cost, summable per owner and workflow
    let r = query(
        &dir.path().join("lake"),
        "SELECT CAST(sum(failed_cost_usd) AS VARCHAR) AS f, CAST(sum(retry_cost_usd) AS VARCHAR) AS r FROM rollups \
         WHERE \"window\" = '1d' AND workflow = 'loop'",
    );
    let p = |k: &str| aifinops_schemas::money::parse_usd(k, r[0][k].as_str().unwrap()).unwrap();
    assert_eq!((p("f"), p("r")), (failed, retry));
}
