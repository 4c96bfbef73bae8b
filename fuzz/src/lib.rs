//! Shared setup of the fuzz targets: the Avro schema files, an owner map, a catalog and token counts.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use aifinops_ingest::avro::{AvroDecoder, SchemaSource};
use aifinops_ingest::catalog::{Tier, Tokens};
use aifinops_ingest::{Decoder, OwnerMap, PriceCatalog, RawPolicy};

/// A writer schema that differs from `usage_event.avsc` in every way resolution handles: field order,
/// `int` counts, a non-nullable total, micro-second timestamps, an enum with a symbol the reader lacks, a
/// decimal cost, fields the reader does not know.
pub const EVOLVED_AVSC: &str = r#"{"type":"record","name":"Evolved","namespace":"x","fields":[
 {"name":"model","type":"string"},
 {"name":"event_id","type":"string"},
 {"name":"provider","type":"string"},
 {"name":"timestamp","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"input_tokens","type":["null","int"]},
 {"name":"output_tokens","type":"long"},
 {"name":"service_tier","type":["null",{"type":"enum","name":"Tier","symbols":["default","batch","flex","priority","gold"]}]},
 {"name":"cost_usd","type":["null",{"type":"bytes","logicalType":"decimal","precision":38,"scale":18}]},
 {"name":"tags","type":{"type":"map","values":"string"}},
 {"name":"extra","type":{"type":"array","items":"string"}},
 {"name":"cache_hit","type":"boolean"}
]}"#;

/// The owner map of the tests (three owners by key, service account and workflow globs).
pub const OWNERS: &str = r#"
[[owner]]
id = "search"
risk_owner = "search-lead@example.com"
api_key_id = ["key-search-*"]
team = ["search"]

[[owner]]
id = "support"
risk_owner = "support@example.com"
service_account = ["svc-support"]

[[owner]]
id = "agents"
risk_owner = "ml@example.com"
workflow = ["agent-*", "{a,b}[0-9]*"]
"#;

/// A directory with the local Avro schema files: 1 = usage_event.avsc, 2 = [`EVOLVED_AVSC`].
pub fn schema_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aifinops-fuzz-avsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("1.avsc"), aifinops_schemas::avro::USAGE_EVENT_AVSC).expect("write 1.avsc");
        std::fs::write(dir.join("2.avsc"), EVOLVED_AVSC).expect("write 2.avsc");
        dir
    })
}

pub fn avro_decoder() -> AvroDecoder {
    AvroDecoder::new(SchemaSource::Local { files: vec![schema_dir().clone()] }).expect("fuzz schemas load")
}

/// A decoder with the built-in catalog, the owner map and Avro, like the pipeline's.
pub fn decoder() -> Decoder {
    static CATALOG: OnceLock<Arc<PriceCatalog>> = OnceLock::new();
    let catalog = CATALOG.get_or_init(|| Arc::new(PriceCatalog::builtin())).clone();
    let owners = Arc::new(OwnerMap::from_toml_str("fuzz owners", OWNERS).expect("owners"));
    Decoder::new(catalog, owners, 1 << 20, RawPolicy::Redacted).with_avro(avro_decoder())
}

pub const TIERS: [Tier; 4] = [Tier::Default, Tier::Batch, Tier::Flex, Tier::Priority];

/// Token counts at the edges the decoder lets through (every part inside its total, at most 2^53).
pub fn token_sets(seed: &[u8]) -> Vec<Tokens> {
    const MAX: i64 = 1 << 53;
    let n = |i: usize| -> i64 {
        let b: [u8; 8] = std::array::from_fn(|k| seed.get(i * 8 + k).copied().unwrap_or(0));
        (u64::from_le_bytes(b) % (MAX as u64 + 1)) as i64
    };
    let (a, b) = (n(0), n(1));
    let fuzzed = Tokens {
        input: a,
        cache_read: a / 2,
        cache_write: a / 4,
        cache_write_1h: a / 8,
        audio_input: a / 8,
        output: b,
        reasoning: b / 2,
        audio_output: b / 4,
        web_search: n(2) % 1_000,
    };
    vec![
        Tokens::default(),
        Tokens { input: 1_000, output: 100, cache_read: 400, ..Default::default() },
        Tokens { input: 300_000, output: 1, cache_write: 200_000, cache_write_1h: 100_000, ..Default::default() },
        Tokens { input: MAX, output: MAX, cache_read: MAX / 2, reasoning: MAX, web_search: 1, ..Default::default() },
        fuzzed,
    ]
}

/// Looks up every entry of a catalog (as listed, by provider and without, for no owner and for an owner
/// at several event times) and prices edge-case token counts in every tier. Nothing may panic; a cost,
/// when there is one, is what `cost` says again (lookups are pure).
pub fn price_everything(c: &PriceCatalog, seed: &[u8]) {
    let tokens = token_sets(seed);
    for name in c.model_names().into_iter().take(32) {
        let (provider, model) = name.split_once('/').unwrap_or(("", name.as_str()));
        for owner in ["", "search"] {
            for ts in [0, 1_764_460_800_000, i64::MAX] {
                let Some(p) = c.lookup_for(owner, provider, model, ts) else { continue };
                for t in &tokens {
                    for tier in TIERS {
                        let cost = p.cost(t, tier);
                        assert_eq!(cost, p.cost(t, tier));
                        let _ = p.cost_at_base_rates(t, tier);
                        let _ = p.long_context_tier(t);
                    }
                }
            }
        }
    }
    let _ = aifinops_ingest::catalog::model_candidates(std::str::from_utf8(seed).unwrap_or(""));
}
