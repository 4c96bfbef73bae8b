//! The aifinops TOML price catalog: parsing, then every entry looked up (list price and an owner's
//! negotiated layer, at several event times) and priced for edge-case token counts in every tier.
#![no_main]

use aifinops_ingest::PriceCatalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut c = PriceCatalog::default();
    if c.add_toml_str("fuzz.toml", text).is_err() {
        return;
    }
    aifinops_fuzz::price_everything(&c, data);
});
