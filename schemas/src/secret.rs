//! Secrets never leave ingest: values that look like credentials are replaced by a stable fingerprint.

use sha2::{Digest, Sha256};

/// Prefix of every fingerprint, so readers can tell a fingerprint from a key id.
pub const FINGERPRINT_PREFIX: &str = "fp:";

/// True when `value` looks like a credential rather than a key *id*: provider key prefixes
/// (`sk-`, `sk-ant-`, `AKIA…`, `ghp_`, `xox?-`, `AIza…`), bearer tokens, JWTs, and long high-entropy tokens.
pub fn looks_like_secret(value: &str) -> bool {
    let v = value.trim();
    if v.len() < 16 {
        return false;
    }
    let lower_prefixes = [
        "sk-",
        "sk_",
        "rk_",
        "pk_live",
        "sk_live",
        "ghp_",
        "gho_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "glpat-",
        "hf_",
        "aiza",
    ];
    // case-insensitive prefix test without allocating: this runs for every dimension of every event
    let starts = |p: &str| v.len() >= p.len() && v.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if lower_prefixes.iter().any(|p| starts(p)) || starts("bearer ") || starts("basic ") {
        return true;
    }
    if (v.starts_with("AKIA") || v.starts_with("ASIA"))
        && v.len() >= 20
        && v.as_bytes()[..20].iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return true;
    }
    if v.starts_with("eyJ") && v.matches('.').count() == 2 {
        return true; // JWT
    }
    // Long opaque token: >= 32 chars of [A-Za-z0-9_-+/=] mixing lower, upper and digits, no separators a human id would use.
    if v.len() >= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_+/=".contains(&b)) {
        let lowers = v.bytes().filter(|b| b.is_ascii_lowercase()).count();
        let uppers = v.bytes().filter(|b| b.is_ascii_uppercase()).count();
        let digits = v.bytes().filter(|b| b.is_ascii_digit()).count();
        // AWS secret access keys (40 chars of base64) may hold only a digit or two, but a '/' or '+'
        let symbols = v.bytes().filter(|b| b"+/".contains(b)).count();
        if lowers >= 4 && uppers >= 4 && (digits >= 4 || (v.len() >= 40 && digits + symbols >= 2)) {
            return true;
        }
    }
    false
}

/// The stable fingerprint of a secret: `fp:` + 16 hex chars of SHA-256. Same input, same fingerprint.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.trim().as_bytes());
    let mut s = String::with_capacity(FINGERPRINT_PREFIX.len() + 16);
    s.push_str(FINGERPRINT_PREFIX);
    for b in &digest[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `value` itself, or its fingerprint when it looks like a secret.
pub fn redact(value: &str) -> std::borrow::Cow<'_, str> {
    if looks_like_secret(value) { fingerprint(value).into() } else { value.into() }
}

/// A dimension's value with secrets removed: the fingerprint of a value that is a secret, and free text
/// (a tag like `"retry with key sk-…"`) with each secret-looking token inside it fingerprinted.
pub fn redact_field(value: &str) -> std::borrow::Cow<'_, str> {
    if looks_like_secret(value) {
        return fingerprint(value).into();
    }
    // free text: only values long enough to hold a token and with a separator in them are scanned
    if value.len() >= 20 && value.bytes().any(|b| b" \t\"',:;=&".contains(&b)) {
        let r = redact_text(value);
        if r != value {
            return r.into();
        }
    }
    value.into()
}

/// Replaces every secret-looking token inside free text (split on whitespace, quotes and JSON punctuation).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            out.push_str(&redact(token));
            token.clear();
        }
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() || "\"',:{}[]\\;=&".contains(c) {
            // keep "Bearer <token>" together so the scheme word does not hide the token
            if c == ' ' && token.eq_ignore_ascii_case("bearer") {
                token.push(c);
                continue;
            }
            flush(&mut token, &mut out);
            out.push(c);
        } else {
            token.push(c);
        }
        if chars.peek().is_none() {
            flush(&mut token, &mut out);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// True when a librdkafka property's value is a credential (`ssl.key.password`, `sasl.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, inline keys such as `ssl.key.pem`, ...):
/// such values are never logged or printed (see [`redact_kafka_properties`]).
pub fn is_secret_kafka_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("jaas")
        || k.contains("token")
        || k == "ssl.key.pem"
        || k == "sasl.oauthbearer.config"
        || k == "sasl.oauthbearer.assertion.private.key.pem"
        || k == "sasl.oauthbearer.assertion.private.key.passphrase"
}

/// librdkafka properties as they may be logged or debug-printed: credential values replaced by
/// `<redacted>`.
pub fn redact_kafka_properties<'a>(
    props: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> std::collections::BTreeMap<&'a str, &'a str> {
    props
        .into_iter()
        .map(|(k, v)| (k.as_str(), if is_secret_kafka_property(k) { "<redacted>" } else { v.as_str() }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_are_secrets_but_key_ids_are_not() {
        assert!(looks_like_secret("sk-proj-abcdEFGH1234ijklMNOP5678qrst"));
        assert!(looks_like_secret("sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"));
        assert!(looks_like_secret("AKIAIOSFODNN7EXAMPLE"));
        assert!(looks_like_secret("Bearer abcdefghijklmnop1234"));
        assert!(looks_like_secret("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXN0dWZm"));
        assert!(!looks_like_secret("key-search-1"));
        assert!(!looks_like_secret("svc-support-bot@prod"));
        assert!(!looks_like_secret("research-agents-nightly-workflow"));
    }

    #[test]
    fn non_ascii_after_a_key_prefix_is_not_a_secret_and_does_not_panic() {
        // found by the `decode` fuzz target: "ASIA" + multi-byte characters sliced inside a character
        assert!(!looks_like_secret("ASIA€€€€€€€€€€€€€€€€"));
        assert!(!looks_like_secret("AKIA\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}"));
        let text = "{\"k\":\"ASIA\u{1}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\"}";
        assert_eq!(redact_text(text), text);
    }

    #[test]
    fn fingerprint_is_stable_and_hides_the_value() {
        let k = "sk-proj-abcdEFGH1234ijklMNOP5678qrst";
        assert_eq!(fingerprint(k), fingerprint(k));
        assert!(fingerprint(k).starts_with("fp:"));
        assert!(looks_like_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), "an AWS secret access key");
        assert!(!looks_like_secret("MyServiceAccountForProductionWorkloads1"), "a long human id");
        assert_eq!(
            redact_field("retry with key sk-live-9fQ2mZ7xL4vB8nR1tY6wE3uI5oP0aS2dF now"),
            format!("retry with key {} now", fingerprint("sk-live-9fQ2mZ7xL4vB8nR1tY6wE3uI5oP0aS2dF"))
        );
        assert_eq!(redact_field("anthropic.claude-3-haiku-20240307-v1:0"), "anthropic.claude-3-haiku-20240307-v1:0");
        assert!(!fingerprint(k).contains("abcd"));
        assert_eq!(redact("key-search-1"), "key-search-1");
    }

    #[test]
    fn free_text_is_scrubbed() {
        let t = r#"{"api_key":"sk-proj-abcdEFGH1234ijklMNOP5678qrst","auth":"Bearer abcdefghijklmnop1234xyz"}"#;
        let r = redact_text(t);
        assert!(!r.contains("sk-proj"), "{r}");
        assert!(!r.contains("abcdefghijklmnop1234xyz"), "{r}");
        assert!(r.contains("\"api_key\""));
    }

    #[test]
    fn kafka_credentials_are_redacted() {
        let props: std::collections::BTreeMap<String, String> = [
            ("security.protocol", "sasl_ssl"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.key.password", "hunter2"),
            ("sasl.password", "s3cr3t"),
            ("sasl.username", "aifinops"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.oauthbearer.client.secret", "cs"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let shown = format!("{:?}", super::redact_kafka_properties(&props));
        for secret in ["hunter2", "s3cr3t", "BEGIN PRIVATE KEY", "\"cs\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for visible in ["sasl_ssl", "/etc/ca.pem", "aifinops"] {
            assert!(shown.contains(visible), "{visible} not in {shown}");
        }
    }
}
