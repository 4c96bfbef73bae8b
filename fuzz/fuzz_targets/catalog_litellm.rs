//! LiteLLM's model_prices_and_context_window.json: parsing, then every entry looked up and priced for
//! edge-case token counts in every tier (as catalog_toml).
#![no_main]

use aifinops_ingest::PriceCatalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut c = PriceCatalog::default();
    if c.add_litellm_json("fuzz.json", text).is_err() {
        return;
    }
    aifinops_fuzz::price_everything(&c, data);
});
