//! The owner map (attribution): TOML parsing and glob compilation, then resolution of identities made
//! of the input's own strings and of fixed ones. Invariants: no panic; a resolved index is an owner.
#![no_main]

use aifinops_ingest::OwnerMap;
use aifinops_ingest::owners::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // the first line is also an identity to resolve: every field set to it
    let probe = text.lines().next().unwrap_or("");
    let map = match OwnerMap::from_toml_str("fuzz owners", text) {
        Ok(m) => m,
        Err(_) => {
            // and the probe against a fixed map
            let map = OwnerMap::from_toml_str("owners", aifinops_fuzz::OWNERS).expect("fixed owners");
            resolve(&map, probe);
            return;
        }
    };
    resolve(&map, probe);
    for o in map.owners() {
        assert!(map.by_id(&o.id).is_some());
    }
});

fn resolve(map: &OwnerMap, probe: &str) {
    let mut cache = aifinops_ingest::owners::MatchCache::default();
    let ids = [
        Identity { api_key_id: Some(probe), ..Default::default() },
        Identity { service_account: Some(probe), team: Some(probe), ..Default::default() },
        Identity { project: Some(probe), workflow: Some(probe), ..Default::default() },
        Identity {
            api_key_id: Some("key-search-1"),
            service_account: Some("svc-support"),
            team: Some(""),
            project: None,
            workflow: Some("agent-x"),
        },
        Identity::default(),
    ];
    for id in &ids {
        // the memo answers as a fresh match does, the first time and again
        let fresh = map.resolve_index(id, &mut aifinops_ingest::owners::MatchCache::default());
        assert_eq!(map.resolve_index(id, &mut cache), fresh);
        if let Some(i) = map.resolve_index(id, &mut cache) {
            let o = map.owner(i);
            assert_eq!(map.resolve(id, &mut cache).map(|r| &r.id), Some(&o.id));
        }
    }
}
