//! A fast reader of the common shape of canonical records: one flat JSON object whose strings have no
//! escapes, whose counts are integer literals and whose timestamp is an RFC 3339 string or epoch
//! milliseconds. It fills the same [`Wire`](crate::decode) fields serde would, or gives up (`None`) on
//! anything else — escapes, nesting, `null`, fractions, negative numbers, duplicate known keys, keys of
//! other formats, trailing bytes — and the record takes the serde path, which is the reference: this
//! reader never accepts a record differently, it only skips serde's per-field dispatch on the records it
//! is sure about. (About a fifth of replay's instructions went to serde_json on the benchmark workload.)

use std::borrow::Cow;

use crate::decode::{Count, Ts, count_from_f64};

/// Fields of a canonical record, as [`crate::decode`]'s `Wire` holds them (the ones this reader fills).
#[derive(Default)]
pub(crate) struct Flat<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub timestamp: Option<Ts>,
    pub provider: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    pub counts: [Option<Count>; 10],
    pub strs: [Option<Cow<'a, str>>; 10],
    pub cache_hit: Option<bool>,
}

/// Count fields, in the order of [`Flat::counts`].
#[cfg(test)]
const COUNT_FIELDS: [&str; 10] = [
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "reasoning_tokens",
    "retrieval_calls",
    "attempt",
];

/// Keys the serde path treats specially (borrowed raw values, nested tags, or another format's marker):
/// their records take that path.
const SERDE_ONLY: [&str; 19] = [
    "step",
    "cost_usd",
    "tags",
    "response",
    "specversion",
    "resourceSpans",
    "call_type",
    "prompt_tokens",
    "response_cost",
    "spend",
    "ai",
    "ai_org",
    "tokens_in",
    "schemaType",
    "usage",
    "usageMetadata",
    "custom_llm_provider",
    "request_id",
    "startTime",
];

struct P<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
}

impl<'a> P<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }
    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }
    /// A string without escapes or control characters (the opening quote is next).
    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = &self.b[start..];
        let n = special(rest)?;
        if rest[n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        // the payload is valid UTF-8 and quotes are ASCII: a char boundary
        Some(&self.s[start..start + n])
    }
    /// An unsigned integer literal without fraction or exponent.
    #[inline]
    fn uint(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.b.get(self.i) {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }
    /// Skips a scalar value (for keys the record does not use); `None` on anything nested or unusual.
    fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.b.get(self.i)? {
            b'"' => self.str().map(|_| ()),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(l).then(|| self.i += l.len())
    }
    /// A JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.i;
            while matches!(p.b.get(p.i), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - s
        };
        let s = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b[s] == b'0') {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

/// Reads `payload` if it has the common canonical shape (see the module docs); `None` = use serde.
pub(crate) fn read(payload: &[u8]) -> Option<Flat<'_>> {
    let s = std::str::from_utf8(payload).ok()?;
    let mut p = P { b: payload, s, i: 0 };
    let mut f = Flat::default();
    p.eat(b'{')?;
    p.ws();
    if p.b.get(p.i) == Some(&b'}') {
        p.i += 1;
    } else {
        loop {
            let key = p.str()?;
            p.eat(b':')?;
            match key {
                "event_id" => set(&mut f.event_id, Cow::Borrowed(p.str()?))?,
                "provider" => set(&mut f.provider, Cow::Borrowed(p.str()?))?,
                "model" => set(&mut f.model, Cow::Borrowed(p.str()?))?,
                "timestamp" => {
                    p.ws();
                    let ts = if p.b.get(p.i) == Some(&b'"') {
                        let t = p.str()?;
                        rfc3339_ms(t).map_or_else(|| ts_of_str(t), Ts::Ms)
                    } else {
                        let v = p.uint()?;
                        i64::try_from(v).map(Ts::Ms).unwrap_or(Ts::Bad("epoch milliseconds out of range"))
                    };
                    set(&mut f.timestamp, ts)?;
                }
                "cache_hit" => {
                    p.ws();
                    let v = if p.lit(b"true").is_some() {
                        true
                    } else {
                        p.lit(b"false")?;
                        false
                    };
                    set(&mut f.cache_hit, v)?;
                }
                k => match slot(k) {
                    Slot::Count(i) => {
                        let v = p.uint()?;
                        set(&mut f.counts[i], count_from_f64(v as f64, Some(v)))?;
                    }
                    Slot::Str(i) => set(&mut f.strs[i], Cow::Borrowed(p.str()?))?,
                    Slot::Serde => return None,
                    Slot::Unknown => p.skip()?,
                },
            }
            p.ws();
            match p.b.get(p.i)? {
                b',' => p.i += 1,
                b'}' => {
                    p.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    p.ws();
    (p.i == payload.len()).then_some(f)
}

enum Slot {
    Count(usize),
    Str(usize),
    Serde,
    Unknown,
}

/// Where a key's value goes (a `match` on strings compiles to a switch on the length, then compares).
#[inline]
fn slot(k: &str) -> Slot {
    match k {
        "input_tokens" => Slot::Count(0),
        "output_tokens" => Slot::Count(1),
        "cache_read_tokens" => Slot::Count(2),
        "cache_write_tokens" => Slot::Count(3),
        "cache_write_1h_tokens" => Slot::Count(4),
        "audio_input_tokens" => Slot::Count(5),
        "audio_output_tokens" => Slot::Count(6),
        "reasoning_tokens" => Slot::Count(7),
        "retrieval_calls" => Slot::Count(8),
        "attempt" => Slot::Count(9),
        "service_tier" => Slot::Str(0),
        "status" => Slot::Str(1),
        "trace_id" => Slot::Str(2),
        "api_key_id" => Slot::Str(3),
        "service_account" => Slot::Str(4),
        "end_user" => Slot::Str(5),
        "team" => Slot::Str(6),
        "project" => Slot::Str(7),
        "workflow" => Slot::Str(8),
        "environment" => Slot::Str(9),
        k if SERDE_ONLY.contains(&k) => Slot::Serde,
        _ => Slot::Unknown,
    }
}

/// Index of the first `"`, `\` or control character, 8 bytes at a time.
#[inline]
fn special(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
        let hit = zero(w ^ (LO * u64::from(b'"')))
            | zero(w ^ (LO * u64::from(b'\\')))
            | (w.wrapping_sub(LO * 0x20) & !w & HI);
        if hit != 0 {
            // the first flagged byte is exact (borrows only run from lower flagged bytes upward)
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| i + p)
}

/// Sets a field once: a duplicate key is serde's to judge.
#[inline]
fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// What the serde path makes of a timestamp string.
fn ts_of_str(v: &str) -> Ts {
    match chrono::DateTime::parse_from_rfc3339(v) {
        Ok(d) => Ts::Ms(d.timestamp_millis()),
        Err(_) => Ts::Bad("not an RFC 3339 timestamp"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` exactly (the form gateways write) as epoch milliseconds; `None` for any
/// other form (chrono reads those).
fn rfc3339_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if !(b.len() == 20 || b.len() == 24) || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.len() == 24 {
        if b[19] != b'.' {
            return None;
        }
        num(20..23)?
    } else {
        0
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > dim[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // days from the civil date (H. Hinnant's algorithm)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_its_slot() {
        for (i, k) in COUNT_FIELDS.iter().enumerate() {
            assert!(matches!(slot(k), Slot::Count(j) if j == i), "{k}");
        }
        // the optional strings of `Flat::strs`: the canonical string fields after event_id, provider, model
        for (i, k) in crate::formats::CANONICAL_STRINGS[3..].iter().enumerate() {
            assert!(matches!(slot(k), Slot::Str(j) if j == i), "{k}");
        }
    }

    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for n in 0..40 {
            for c in [b'"', b'\\', 0x00, 0x1f] {
                let mut v = vec![b'a'; 40];
                v[n] = c;
                assert_eq!(special(&v), Some(n));
            }
            // bytes above 0x7f (UTF-8) and 0x20.. are not special
            let v = vec![0xc3u8; n];
            assert_eq!(special(&v), None);
        }
    }

    #[test]
    fn timestamps_match_chrono() {
        for t in [
            "2026-11-01T00:00:00.000Z",
            "2026-11-01T23:59:59.999Z",
            "2000-02-29T12:34:56.789Z",
            "2199-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2024-03-01T00:00:00.001Z",
        ] {
            assert_eq!(
                Some(rfc3339_ms(t).unwrap()),
                Some(chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()),
                "{t}"
            );
        }
        for t in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01 00:00:00Z",
            "2026-11-01T00:00:60Z",
        ] {
            assert_eq!(rfc3339_ms(t), None, "{t}");
        }
    }

    #[test]
    fn gives_up_on_anything_unusual() {
        let ok = r#"{"event_id":"a","timestamp":"2026-11-01T00:00:00.000Z","provider":"openai","model":"gpt-4o","input_tokens":10,"output_tokens":2,"team":"t","x":[1]}"#;
        assert!(read(ok.as_bytes()).is_none(), "nested unknown value");
        for bad in [
            r#"{"event_id":"a\"b","input_tokens":1}"#,
            r#"{"event_id":"a","input_tokens":1,"input_tokens":2}"#,
            r#"{"event_id":"a","input_tokens":1.0}"#,
            r#"{"event_id":"a","input_tokens":-1}"#,
            r#"{"event_id":"a","input_tokens":01}"#,
            r#"{"event_id":null,"input_tokens":1}"#,
            r#"{"event_id":"a","usage":{}}"#,
            r#"{"event_id":"a","cost_usd":"0.1"}"#,
            r#"{"event_id":"a"} x"#,
            r#"{"event_id":"a",}"#,
        ] {
            assert!(read(bad.as_bytes()).is_none(), "{bad}");
        }
        let f = read(
            br#" {"event_id":"a","timestamp":1764496800000,"x":1.5e3,"y":"z","cache_hit":true,"input_tokens":7} "#,
        )
        .unwrap();
        assert_eq!(f.event_id.as_deref(), Some("a"));
        assert_eq!(f.timestamp, Some(Ts::Ms(1_764_496_800_000)));
        assert_eq!(f.counts[0], Some(Count::Ok(7)));
        assert_eq!(f.cache_hit, Some(true));
    }
}
