//! The owner map: who pays for a call. `[[owner]]` rules with glob match lists; first match wins.
//!
//! ```toml
//! [[owner]]
//! id = "search"
//! risk_owner = "lead@example.com"
//! api_key_id = ["key-search-1", "key-search-*"]
//! team = ["search"]
//! ```
//! A rule matches a call when ANY of its lists matches the call's field of that name (lists are
//! alternatives: "this key, or anything from this team"). Rules are tried in file order.

use std::collections::HashMap;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::IngestError;

/// Attribution fields of one call, as read from the record (before fingerprinting).
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity<'a> {
    pub api_key_id: Option<&'a str>,
    pub service_account: Option<&'a str>,
    pub team: Option<&'a str>,
    pub project: Option<&'a str>,
    pub workflow: Option<&'a str>,
}

/// One owner: the id that rollups carry and the person accountable for its risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub risk_owner: String,
    /// Who approves this owner's budgets and policy exceptions (carried on its alerts).
    pub approver: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerFile {
    #[serde(default)]
    owner: Vec<OwnerRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerRule {
    id: String,
    #[serde(default)]
    risk_owner: String,
    #[serde(default)]
    approver: String,
    #[serde(default)]
    api_key_id: Vec<String>,
    #[serde(default)]
    service_account: Vec<String>,
    #[serde(default)]
    team: Vec<String>,
    #[serde(default)]
    project: Vec<String>,
    #[serde(default)]
    workflow: Vec<String>,
}

/// One glob set per attribution field; each pattern maps back to the rule that owns it.
#[derive(Debug, Clone)]
struct FieldMatcher {
    set: GlobSet,
    rule_of_pattern: Vec<usize>,
}

impl FieldMatcher {
    fn best(&self, value: Option<&str>, scratch: &mut Vec<usize>) -> Option<usize> {
        let v = value?;
        self.set.matches_into(v, scratch);
        scratch.iter().map(|&i| self.rule_of_pattern[i]).min()
    }
}

/// Values remembered per field before the memo starts over (a bound on its memory, ~100 bytes a value).
const MEMO_VALUES: usize = 1 << 16;

/// What one caller of [`OwnerMap::resolve_index`] keeps between calls: the glob matcher's scratch space and,
/// per field, the first rule each value seen matched. Keys, teams and workflows repeat from call to call,
/// so most calls look a value up instead of running every glob over it. Use one cache with one map. The
/// values are raw (a key id may be a secret): its `Debug` shows only how many it holds.
#[derive(Default)]
pub struct MatchCache {
    scratch: Vec<usize>,
    memo: [HashMap<Box<str>, Option<u32>, foldhash::fast::RandomState>; 5],
}

impl std::fmt::Debug for MatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchCache").field("values", &self.memo.each_ref().map(HashMap::len)).finish()
    }
}

impl MatchCache {
    fn best(&mut self, field: usize, m: &FieldMatcher, value: Option<&str>) -> Option<usize> {
        let v = value?;
        if m.set.is_empty() {
            return None; // no rule names this field: nothing to look up or remember
        }
        let memo = &mut self.memo[field];
        if let Some(r) = memo.get(v) {
            return r.map(|r| r as usize);
        }
        let r = m.best(Some(v), &mut self.scratch);
        if memo.len() >= MEMO_VALUES {
            memo.clear();
        }
        memo.insert(v.into(), r.map(|r| r as u32));
        r
    }
}

/// Maps a call's identity fields to its owner.
#[derive(Debug, Clone)]
pub struct OwnerMap {
    owners: Vec<Owner>,
    fields: [FieldMatcher; 5],
}

impl Default for OwnerMap {
    fn default() -> Self {
        OwnerMap::from_toml_str("<empty>", "").expect("empty owner map")
    }
}

impl OwnerMap {
    pub fn load(path: &Path) -> Result<Self, IngestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IngestError::Io { context: format!("reading owner map {}", path.display()), source: e })?;
        Self::from_toml_str(&path.display().to_string(), &text)
    }

    pub fn from_toml_str(name: &str, text: &str) -> Result<Self, IngestError> {
        let file: OwnerFile = toml::from_str(text)
            .map_err(|e| IngestError::OwnerMap { file: name.to_string(), reason: e.to_string() })?;
        let mut builders: Vec<(GlobSetBuilder, Vec<usize>)> = (0..5).map(|_| (GlobSetBuilder::new(), vec![])).collect();
        let mut owners = Vec::with_capacity(file.owner.len());
        for (idx, rule) in file.owner.iter().enumerate() {
            if rule.id.trim().is_empty() {
                return Err(IngestError::OwnerMap {
                    file: name.to_string(),
                    reason: format!("owner #{} has an empty id", idx + 1),
                });
            }
            let lists = [&rule.api_key_id, &rule.service_account, &rule.team, &rule.project, &rule.workflow];
            for (f, list) in lists.iter().enumerate() {
                for pat in list.iter() {
                    let glob = Glob::new(pat).map_err(|e| IngestError::OwnerMap {
                        file: name.to_string(),
                        reason: format!("owner {:?}: pattern {pat:?}: {e}", rule.id),
                    })?;
                    builders[f].0.add(glob);
                    builders[f].1.push(idx);
                }
            }
            owners.push(Owner {
                id: rule.id.clone(),
                risk_owner: rule.risk_owner.clone(),
                approver: rule.approver.clone(),
            });
        }
        let mut fields = Vec::with_capacity(5);
        for (b, rule_of_pattern) in builders {
            let set = b.build().map_err(|e| IngestError::OwnerMap { file: name.to_string(), reason: e.to_string() })?;
            fields.push(FieldMatcher { set, rule_of_pattern });
        }
        let fields: [FieldMatcher; 5] = fields.try_into().expect("five fields");
        Ok(OwnerMap { owners, fields })
    }

    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// The first rule (in file order) that any field matches, or `None` (unattributed).
    pub fn resolve(&self, id: &Identity<'_>, cache: &mut MatchCache) -> Option<&Owner> {
        self.resolve_index(id, cache).map(|i| &self.owners[i])
    }

    /// The index of the first matching rule (see [`OwnerMap::owner`]).
    pub fn resolve_index(&self, id: &Identity<'_>, cache: &mut MatchCache) -> Option<usize> {
        let values = [id.api_key_id, id.service_account, id.team, id.project, id.workflow];
        let mut best: Option<usize> = None;
        for (f, (m, v)) in self.fields.iter().zip(values).enumerate() {
            if let Some(r) = cache.best(f, m, v) {
                best = Some(best.map_or(r, |b| b.min(r)));
                if r == 0 {
                    break;
                }
            }
        }
        best
    }

    /// The first rule of owner `id` (several rules may name one owner).
    pub fn by_id(&self, id: &str) -> Option<&Owner> {
        self.owners.iter().find(|o| o.id == id)
    }

    /// The owner of rule `i`.
    pub fn owner(&self, i: usize) -> &Owner {
        &self.owners[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
        [[owner]]
        id = "search"
        risk_owner = "lead@example.com"
        api_key_id = ["key-search-1", "key-search-*"]
        team = ["search"]

        [[owner]]
        id = "agents"
        risk_owner = "ml@example.com"
        workflow = ["agent-*"]
        service_account = ["svc-agent-?"]

        [[owner]]
        id = "catch-team-x"
        team = ["x*"]
    "#;

    #[test]
    fn first_matching_rule_wins_across_fields() {
        let m = OwnerMap::from_toml_str("o.toml", MAP).unwrap();
        let mut s = MatchCache::default();
        let mut cache = MatchCache::default();
        let mut r = |id: Identity| m.resolve(&id, &mut cache).map(|o| o.id.clone());
        assert_eq!(r(Identity { api_key_id: Some("key-search-7"), ..Default::default() }).as_deref(), Some("search"));
        assert_eq!(r(Identity { team: Some("search"), ..Default::default() }).as_deref(), Some("search"));
        assert_eq!(r(Identity { workflow: Some("agent-nightly"), ..Default::default() }).as_deref(), Some("agents"));
        assert_eq!(
            r(Identity { service_account: Some("svc-agent-1"), ..Default::default() }).as_deref(),
            Some("agents")
        );
        // workflow says agents but the key says search: search is the earlier rule
        assert_eq!(
            r(Identity { api_key_id: Some("key-search-1"), workflow: Some("agent-x"), ..Default::default() })
                .as_deref(),
            Some("search")
        );
        assert_eq!(r(Identity { team: Some("xylophone"), ..Default::default() }).as_deref(), Some("catch-team-x"));
        assert!(m.resolve(&Identity { api_key_id: Some("key-nobody"), ..Default::default() }, &mut s).is_none());
        assert_eq!(m.owners()[0].risk_owner, "lead@example.com");
    }

    #[test]
    fn the_match_memo_answers_as_the_globs_do_past_its_bound() {
        let m = OwnerMap::from_toml_str("o.toml", MAP).unwrap();
        let mut cache = MatchCache::default();
        let values: Vec<String> = (0..MEMO_VALUES + 5_000)
            .map(|i| match i % 4 {
                0 => format!("key-search-{i}"),
                1 => format!("x{i}"),
                2 => format!("agent-{i}"),
                _ => format!("nobody-{i}"),
            })
            .collect();
        let mut attributed = 0;
        for round in 0..2 {
            for v in values.iter().step_by(if round == 0 { 1 } else { 7 }) {
                let ids = [
                    Identity { api_key_id: Some(v), ..Default::default() },
                    Identity { team: Some(v), workflow: Some(v), ..Default::default() },
                ];
                for id in &ids {
                    let fresh = m.resolve_index(id, &mut MatchCache::default());
                    assert_eq!(m.resolve_index(id, &mut cache), fresh, "{id:?}");
                    attributed += usize::from(fresh.is_some());
                }
            }
            assert!(cache.memo.iter().all(|f| f.len() <= MEMO_VALUES));
        }
        // three values in four match a rule (key-search-*, x*, agent-*), the fourth none
        assert!(attributed > values.len() / 2, "{attributed}");
        let a = Identity { api_key_id: Some("key-search-3"), team: Some("xy"), ..Default::default() };
        assert_eq!(m.resolve(&a, &mut cache).map(|o| o.id.as_str()), Some("search"));
        assert_eq!(m.resolve(&a, &mut cache).map(|o| o.id.as_str()), Some("search"));
        // key ids may be secrets: the memo's Debug names counts, not values
        let shown = format!("{cache:?}");
        assert!(!shown.contains("key-search") && shown.contains("values"), "{shown}");
    }

    #[test]
    fn fields_no_rule_names_are_not_looked_up_or_remembered() {
        let m = OwnerMap::from_toml_str("o.toml", "[[owner]]\nid = \"t\"\nteam = [\"team-1\"]\n").unwrap();
        let mut cache = MatchCache::default();
        for i in 0..100 {
            let key = format!("key-{i}");
            let team = if i % 2 == 0 { "team-1" } else { "team-2" };
            let id = Identity { api_key_id: Some(&key), team: Some(team), workflow: Some("w"), ..Default::default() };
            let want = (i % 2 == 0).then_some(0);
            assert_eq!(m.resolve_index(&id, &mut cache), want);
        }
        // only the team field has rules: only its two values are remembered
        assert_eq!(cache.memo.each_ref().map(HashMap::len), [0, 0, 2, 0, 0]);
    }

    #[test]
    fn errors_name_the_file_and_rule() {
        let e = OwnerMap::from_toml_str("o.toml", "[[owner]]\nid = \"a\"\nteam = [\"[\"]\n").unwrap_err().to_string();
        assert!(e.contains("o.toml") && e.contains("\"a\""), "{e}");
        let e = OwnerMap::from_toml_str("o.toml", "[[owner]]\nid = \"a\"\nteams = [\"x\"]\n").unwrap_err().to_string();
        assert!(e.contains("teams"), "{e}");
    }
}
