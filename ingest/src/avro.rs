//! Avro usage events: one Kafka message value in the Confluent wire format or in Avro single-object
//! encoding, decoded with its writer schema and resolved (Avro schema resolution) to the reader schema
//! `usage_event.avsc`, handed on as a canonical usage event JSON object.
//!
//! Writer schemas come from a Confluent Schema Registry (`GET {url}/schemas/ids/{id}`, cached by id), or
//! from local `.avsc` files whose id is in the file name. Single-object messages are matched by the
//! fingerprint of their writer schema among the known schemas: the built-in `usage_event.avsc`, the local
//! files, and every schema fetched from the registry so far.
//!
//! Resolution follows the Avro rules field by field (by name): writer fields the reader does not know are
//! skipped, reader fields the writer lacks take their default (null: omitted), `int` is read as `long`,
//! `bytes` as `string`, a writer's nullable field as the reader's, and enum symbols by name. Two
//! conversions go beyond the rules, both exact: a `timestamp` in micro- or nanoseconds becomes
//! milliseconds (rounded down), and a `cost_usd` written as a decimal logical type or a number becomes its
//! decimal string. Record and enum names are not compared: producers name their records as they like.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aifinops_schemas::avro::{self as shared, Frame};
use apache_avro::GenericSingleObjectReader;
use apache_avro::schema::{RecordField, RecordSchema, ResolvedSchema, Schema, SchemaKind};
use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

use crate::IngestError;
use crate::decode::Rejection;

/// Where the writer schemas of Confluent-framed messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    /// A Confluent Schema Registry (`http://host:8081`); schemas are fetched by id and cached.
    Registry { url: String },
    /// Local `.avsc` files (a directory stands for the `*.avsc` files in it). The schema id of each is
    /// taken from the file name: `<id>.avsc` or `<anything>-<id>.avsc`.
    Local { files: Vec<PathBuf> },
    /// No schema source: only single-object messages written with the built-in `usage_event.avsc`.
    None,
}

/// How long a request to the schema registry may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "the registry has no schema with this id" is remembered before asking again.
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(30);
/// How long after a failed request the registry is considered down (no request is sent meanwhile).
const REGISTRY_DOWN_TTL: Duration = Duration::from_secs(5);
/// The largest registry answer read.
const MAX_REGISTRY_RESPONSE: u64 = 8 << 20;
/// Beyond this many remembered failures, expired ones are dropped.
const MAX_REMEMBERED_FAILURES: usize = 4096;

/// Decodes Avro usage events into canonical usage event JSON objects (see the module docs).
///
/// `decode` takes `&mut self` (it caches schemas and registry failures): one decoder per decoding thread.
pub struct AvroDecoder {
    /// The named types of the reader schema `usage_event.avsc`, for resolution.
    reader_names: ResolvedSchema<'static>,
    by_id: HashMap<u32, Arc<Writer>>,
    by_fingerprint: HashMap<[u8; 8], Arc<Writer>>,
    /// Ids the registry did not know (or could not give as Avro), until when that is believed.
    failed_ids: HashMap<u32, (Instant, Rejection)>,
    registry: Option<Registry>,
    /// Where schema ids are looked up, for error messages.
    lookup: String,
}

struct Registry {
    url: String,
    agent: ureq::Agent,
    /// Set after a failed request: no request is sent before the instant, the rejection is repeated.
    down: Option<(Instant, Rejection)>,
}

/// A writer schema, ready to decode bodies written with it (or why it cannot be read as a usage event).
struct Writer {
    /// "schema id 7 (registry http://…)", "schema id 2 (local file schemas/2.avsc)", "built-in usage_event.avsc".
    origin: String,
    /// CRC-64-AVRO of the writer schema (none when the text did not parse).
    fingerprint: Option<[u8; 8]>,
    usable: Result<Usable, String>,
}

struct Usable {
    /// Decodes a body with the writer schema (an empty header: the framing is stripped before).
    decoder: GenericSingleObjectReader,
    /// The writer's record fields, in writer order.
    fields: Vec<RecordField>,
    /// For each reader field, the index of the writer field of the same name (or alias).
    mapping: Vec<Option<usize>>,
}

fn reject(kind: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection { kind, reason: reason.into() }
}

/// The fields of the reader schema `usage_event.avsc`.
fn reader_fields() -> &'static [RecordField] {
    record_fields(shared::usage_event_avro_schema())
}

fn record_fields(schema: &Schema) -> &[RecordField] {
    match schema {
        Schema::Record(RecordSchema { fields, .. }) => fields,
        _ => &[],
    }
}

impl AvroDecoder {
    /// A decoder for the given schema source. Local schema files are read and parsed now; an unreadable
    /// file, an invalid schema, a file name without an id or two files with the same id are errors
    /// naming the file. A writer schema that cannot be read as a usage event is not an error here (its
    /// records are rejected as `avro_schema_incompatible`), only a warning.
    pub fn new(source: SchemaSource) -> Result<Self, IngestError> {
        let reader_names = ResolvedSchema::new(shared::usage_event_avro_schema())
            .map_err(|e| invalid("built-in usage_event.avsc", e.to_string()))?;
        let mut decoder = AvroDecoder {
            reader_names,
            by_id: HashMap::new(),
            by_fingerprint: HashMap::new(),
            failed_ids: HashMap::new(),
            registry: None,
            lookup: "no schema source is configured (neither a schema registry nor local schema files)".into(),
        };
        let builtin = decoder.prepare("built-in usage_event.avsc".into(), shared::usage_event_avro_schema().clone());
        decoder.register(None, builtin);
        match source {
            SchemaSource::None => {}
            SchemaSource::Registry { url } => {
                let url = url.trim_end_matches('/').to_string();
                let tls = cfg!(feature = "registry-tls");
                if !(url.starts_with("http://") || tls && url.starts_with("https://")) {
                    let supported = if tls {
                        "http:// and https:// URLs"
                    } else {
                        "http:// URLs (https:// needs aifinops-ingest built with the `registry-tls` feature)"
                    };
                    return Err(IngestError::Io {
                        context: format!("schema registry URL {url:?}"),
                        source: std::io::Error::new(std::io::ErrorKind::Unsupported, format!("only {supported}")),
                    });
                }
                let config = ureq::Agent::config_builder()
                    .timeout_global(Some(REGISTRY_TIMEOUT))
                    .http_status_as_error(false)
                    .user_agent(concat!("aifinops/", env!("CARGO_PKG_VERSION")))
                    .build();
                decoder.lookup = format!("the schema registry {url}");
                decoder.registry = Some(Registry { url, agent: ureq::Agent::new_with_config(config), down: None });
            }
            SchemaSource::Local { files } => {
                let mut origins: BTreeMap<u32, PathBuf> = BTreeMap::new();
                for path in expand(&files)? {
                    let id = id_from_file_name(&path)?;
                    if let Some(other) = origins.get(&id) {
                        return Err(invalid(
                            &path,
                            format!("schema id {id} is also the id of {} (ids must be unique)", other.display()),
                        ));
                    }
                    let text = std::fs::read_to_string(&path).map_err(|source| IngestError::Io {
                        context: format!("reading Avro schema file {}", path.display()),
                        source,
                    })?;
                    let schema = Schema::parse_str(&text)
                        .map_err(|e| invalid(&path, format!("not a valid Avro schema: {e}")))?;
                    let writer = decoder.prepare(format!("schema id {id} (local file {})", path.display()), schema);
                    if let Err(why) = &writer.usable {
                        tracing::warn!(file = %path.display(), "Avro schema cannot be read as a usage event: {why}");
                    }
                    decoder.register(Some(id), writer);
                    origins.insert(id, path);
                }
                let ids: Vec<String> = origins.keys().take(20).map(u32::to_string).collect();
                let more = if origins.len() > 20 { ", …" } else { "" };
                let dirs: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                decoder.lookup = format!("the local schema files ({}; ids {}{more})", dirs.join(", "), ids.join(", "));
            }
        }
        Ok(decoder)
    }

    /// Decodes one Kafka message value in Confluent wire format or single-object encoding into a
    /// canonical usage event JSON object (field names and semantics of `schemas/usage_event.schema.json`;
    /// `timestamp` as epoch milliseconds; `cost_usd` as a decimal string; absent or null optional fields
    /// omitted). Nothing is validated beyond the Avro types (counts, both-or-neither token totals … are the
    /// caller's checks).
    ///
    /// Rejection kinds: `avro_framing` (neither framing), `avro_schema_unknown` (the schema id or
    /// fingerprint is not known), `avro_schema_incompatible` (the writer schema or this record's value
    /// cannot be resolved to `usage_event.avsc`; the field is named), `avro_decode` (truncated or corrupt
    /// body, or bytes after the record), and `avro_registry_unavailable`: the schema registry could not be
    /// asked, the record itself may be fine and should be retried later, not dead-lettered as bad data.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Json, Rejection> {
        let frame = shared::unframe(payload).map_err(|e| reject("avro_framing", e.to_string()))?;
        let (writer, body) = match frame {
            Frame::Confluent { schema_id, body } => (self.writer_by_id(schema_id)?, body),
            Frame::SingleObject { fingerprint, body } => (self.writer_by_fingerprint(fingerprint)?, body),
        };
        let usable = match &writer.usable {
            Ok(usable) => usable,
            Err(why) => return Err(reject("avro_schema_incompatible", format!("writer {}: {why}", writer.origin))),
        };
        let mut input = WatchEof { rest: body, hit_eof: false };
        let value = usable.decoder.read_value(&mut input);
        // apache-avro reads a union index, a string or a boolean at the end of the input as null: a body
        // cut short there would decode "successfully". Any read past the end means the body is truncated.
        if input.hit_eof {
            return Err(reject(
                "avro_decode",
                format!(
                    "truncated body: the {}-byte body ends inside the record (writer {})",
                    body.len(),
                    writer.origin
                ),
            ));
        }
        let value = value.map_err(|e| {
            reject("avro_decode", format!("corrupt body (writer {}): {}", writer.origin, short(&e.to_string())))
        })?;
        if !input.rest.is_empty() {
            return Err(reject(
                "avro_decode",
                format!(
                    "{} trailing bytes after the record (the record ends at byte {} of the {}-byte body; writer {})",
                    input.rest.len(),
                    body.len() - input.rest.len(),
                    body.len(),
                    writer.origin
                ),
            ));
        }
        let Value::Record(values) = value else {
            return Err(reject("avro_decode", format!("writer {} did not decode to a record", writer.origin)));
        };
        self.canonical(&writer.origin, usable, values)
    }

    /// Resolves the writer's record to the reader's fields and converts it to canonical JSON.
    fn canonical(&self, origin: &str, usable: &Usable, values: Vec<(String, Value)>) -> Result<Json, Rejection> {
        let mut values: Vec<Option<Value>> = values.into_iter().map(|(_, v)| Some(v)).collect();
        let mut out = Map::new();
        for (field, writer_index) in reader_fields().iter().zip(&usable.mapping) {
            let Some(i) = *writer_index else {
                // The writer does not have the field: the reader's default (required fields were checked
                // when the writer schema was loaded).
                if let Some(default) = field.default.as_ref().filter(|d| !d.is_null()) {
                    out.insert(field.name.clone(), default.clone());
                }
                continue;
            };
            let value = values.get_mut(i).and_then(Option::take).unwrap_or(Value::Null);
            let writer_schema = &usable.fields[i].schema;
            if let Some(json) = self.field(field, writer_schema, value).map_err(|why| {
                reject("avro_schema_incompatible", format!("field `{}`: {why} (writer {origin})", field.name))
            })? {
                out.insert(field.name.clone(), json);
            }
        }
        Ok(Json::Object(out))
    }

    /// One field: the writer's value resolved to the reader's field schema, as JSON (`None`: omitted).
    fn field(&self, field: &RecordField, writer_schema: &Schema, value: Value) -> Result<Option<Json>, String> {
        // The writer's branch of a union, and the value in it.
        let (writer_schema, value) = match value {
            Value::Union(i, inner) => match writer_schema {
                Schema::Union(u) => (u.variants().get(i as usize).unwrap_or(writer_schema), *inner),
                _ => (writer_schema, *inner),
            },
            v => (writer_schema, v),
        };
        if value == Value::Null {
            return match &field.schema {
                Schema::Union(u) if u.variants().iter().any(|v| matches!(v, Schema::Null)) => Ok(None),
                reader => Err(format!("the writer's value is null, the reader's {} is not nullable", describe(reader))),
            };
        }
        match (field.name.as_str(), &value) {
            ("timestamp", Value::TimestampMicros(us)) => return Ok(Some(Json::from(us.div_euclid(1_000)))),
            ("timestamp", Value::TimestampNanos(ns)) => return Ok(Some(Json::from(ns.div_euclid(1_000_000)))),
            ("cost_usd", _) => {
                if let Some(text) = decimal_text(writer_schema, &value)? {
                    return Ok(Some(Json::String(text)));
                }
            }
            _ => {}
        }
        let kind = value_kind(&value);
        let symbol = match &value {
            Value::Enum(_, s) => Some(s.clone()),
            _ => None,
        };
        // The first non-null branch of the reader's union the value resolves to (apache-avro's own union
        // resolution matches branches by exact type, without the promotions int -> long, bytes -> string).
        let branches: Vec<&Schema> = match &field.schema {
            Schema::Union(u) => u.variants().iter().filter(|b| !matches!(b, Schema::Null)).collect(),
            reader => vec![reader],
        };
        let mut value = Some(value);
        for (k, branch) in branches.iter().enumerate() {
            let attempt = if k + 1 < branches.len() { value.clone() } else { value.take() };
            if let Some(Ok(resolved)) = attempt.map(|v| v.resolve_with_names(branch, self.reader_names.get_names())) {
                return Ok(to_json(resolved));
            }
        }
        Err(match symbol {
            Some(s) => format!("the writer's symbol {s:?} is not one of the reader's {}", describe(&field.schema)),
            // The value itself is not shown: it may be a credential.
            None => format!("the writer's {kind} value cannot be read as the reader's {}", describe(&field.schema)),
        })
    }

    /// Makes a writer schema known by its id (if any) and its fingerprint (the first one keeps it).
    fn register(&mut self, id: Option<u32>, writer: Writer) -> Arc<Writer> {
        let writer = Arc::new(writer);
        if let Some(fp) = writer.fingerprint {
            self.by_fingerprint.entry(fp).or_insert_with(|| writer.clone());
        }
        if let Some(id) = id {
            self.by_id.insert(id, writer.clone());
        }
        writer
    }

    fn writer_by_fingerprint(&self, fingerprint: [u8; 8]) -> Result<Arc<Writer>, Rejection> {
        self.by_fingerprint.get(&fingerprint).cloned().ok_or_else(|| {
            reject(
                "avro_schema_unknown",
                format!(
                    "single-object message with schema fingerprint {:016x} (CRC-64-AVRO): none of the {} known \
                     schemas has it (built-in usage_event.avsc, {}, and the schemas fetched so far)",
                    u64::from_le_bytes(fingerprint),
                    self.by_fingerprint.len(),
                    self.lookup
                ),
            )
        })
    }

    fn writer_by_id(&mut self, id: u32) -> Result<Arc<Writer>, Rejection> {
        if let Some(w) = self.by_id.get(&id) {
            return Ok(w.clone());
        }
        let now = Instant::now();
        if let Some((until, rejection)) = self.failed_ids.get(&id) {
            if now < *until {
                return Err(rejection.clone());
            }
            self.failed_ids.remove(&id);
        }
        let Some(registry) = self.registry.as_mut() else {
            return Err(reject(
                "avro_schema_unknown",
                format!("schema id {id} is not known: looked in {}", self.lookup),
            ));
        };
        if let Some((until, rejection)) = &registry.down {
            if now < *until {
                return Err(rejection.clone());
            }
            registry.down = None;
        }
        match registry.fetch(id) {
            Ok(text) => {
                let origin = format!("schema id {id} (registry {})", registry.url);
                let writer = match Schema::parse_str(&text) {
                    Ok(schema) => self.prepare(origin, schema),
                    Err(e) => Writer {
                        origin,
                        fingerprint: None,
                        usable: Err(format!("not a valid Avro schema: {}", short(&e.to_string()))),
                    },
                };
                Ok(self.register(Some(id), writer))
            }
            Err(rejection) if rejection.kind == "avro_registry_unavailable" => {
                registry.down = Some((now + REGISTRY_DOWN_TTL, rejection.clone()));
                Err(rejection)
            }
            Err(rejection) => {
                if self.failed_ids.len() >= MAX_REMEMBERED_FAILURES {
                    self.failed_ids.retain(|_, (until, _)| now < *until);
                }
                self.failed_ids.insert(id, (now + UNKNOWN_ID_TTL, rejection.clone()));
                Err(rejection)
            }
        }
    }

    /// Checks a writer schema against the reader's and prepares its decoder.
    fn prepare(&self, origin: String, schema: Schema) -> Writer {
        let fingerprint = Some(shared::fingerprint(&schema));
        let usable = (|| {
            let Schema::Record(RecordSchema { fields, .. }) = &schema else {
                return Err(format!("the writer schema is a {}, not a record", describe(&schema)));
            };
            let fields = fields.clone();
            let reader_fields = reader_fields();
            let mapping: Vec<Option<usize>> = reader_fields
                .iter()
                .map(|r| {
                    std::iter::once(&r.name)
                        .chain(&r.aliases)
                        .find_map(|name| fields.iter().position(|w| &w.name == name))
                })
                .collect();
            let missing: Vec<&str> = reader_fields
                .iter()
                .zip(&mapping)
                .filter(|(r, m)| m.is_none() && r.default.is_none())
                .map(|(r, _)| r.name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "the writer schema has no field {}, which usage_event.avsc requires (no default)",
                    missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            let decoder = GenericSingleObjectReader::builder()
                .schema(schema)
                .header(Vec::new())
                .build()
                .map_err(|e| format!("unusable writer schema: {}", short(&e.to_string())))?;
            Ok(Usable { decoder, fields, mapping })
        })();
        Writer { origin, fingerprint, usable }
    }
}

impl Registry {
    /// `GET {url}/schemas/ids/{id}`: the schema text, or a rejection (`avro_schema_unknown`,
    /// `avro_schema_incompatible` for a non-Avro schema, `avro_registry_unavailable`).
    fn fetch(&self, id: u32) -> Result<String, Rejection> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let unavailable = |what: String| {
            reject(
                "avro_registry_unavailable",
                format!(
                    "schema registry unavailable: GET {url}: {what}; the record was not decoded (not a data \
                     error: retry it when the registry answers)"
                ),
            )
        };
        let mut response = self.agent.get(&url).call().map_err(|e| unavailable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_REGISTRY_RESPONSE)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| unavailable(format!("reading the HTTP {status} answer: {e}")))?;
        match status {
            200 => {}
            404 => {
                return Err(reject(
                    "avro_schema_unknown",
                    format!(
                        "schema id {id} is not known: the schema registry {} answered 404 {}",
                        self.url,
                        short(&body)
                    ),
                ));
            }
            _ => return Err(unavailable(format!("HTTP {status} {}", short(&body)))),
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            schema: String,
            #[serde(default, rename = "schemaType")]
            schema_type: Option<String>,
        }
        let answer: Answer = serde_json::from_str(&body)
            .map_err(|e| unavailable(format!("unexpected answer ({e}): {}", short(&body))))?;
        match answer.schema_type.as_deref() {
            None | Some("AVRO") => Ok(answer.schema),
            Some(other) => Err(reject(
                "avro_schema_incompatible",
                format!("schema id {id} in the schema registry {} is a {other} schema, not Avro", self.url),
            )),
        }
    }
}

/// Reads the body and remembers whether anything tried to read past its end.
struct WatchEof<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl Read for WatchEof<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.hit_eof = true;
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// An invalid schema file (or the built-in schema), as an ingest error naming it.
fn invalid(path: impl AsRef<Path>, reason: String) -> IngestError {
    IngestError::Io {
        context: format!("Avro schema file {}", path.as_ref().display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    }
}

/// The schema files: each file as given, each directory as its `*.avsc` files (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let io =
            |source| IngestError::Io { context: format!("listing Avro schema directory {}", path.display()), source };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let p = entry.map_err(io)?.path();
            if p.extension().is_some_and(|e| e == "avsc") && !p.is_dir() {
                found.push(p);
            }
        }
        if found.is_empty() {
            return Err(invalid(path, "the directory has no .avsc file".into()));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// The schema id in a file name: `<id>.avsc` or `<anything>-<id>.avsc`.
fn id_from_file_name(path: &Path) -> Result<u32, IngestError> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let digits = stem.rsplit_once('-').map_or(stem, |(_, id)| id);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(path, "no schema id in the file name: name it `<id>.avsc` or `<name>-<id>.avsc`".into()));
    }
    digits.parse().map_err(|_| invalid(path, format!("schema id {digits} in the file name is larger than 2^32 - 1")))
}

/// Long texts (a registry's answer, a library's error) cut for a rejection reason.
fn short(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A schema as people write it: `long`, `null | string`, `enum [ok, error]`, `map of string`.
fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => u.variants().iter().map(describe).collect::<Vec<_>>().join(" | "),
        Schema::Enum(e) => format!("enum [{}]", e.symbols.join(", ")),
        Schema::Map(m) => format!("map of {}", describe(&m.types)),
        Schema::Array(a) => format!("array of {}", describe(&a.items)),
        Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos => "timestamp-nanos".into(),
        other => format!("{:?}", SchemaKind::from(other)).to_lowercase(),
    }
}

fn value_kind(value: &Value) -> String {
    format!("{:?}", SchemaKind::from(value)).to_lowercase()
}

/// A value resolved to the reader schema as JSON; `None` for null (the field is omitted).
fn to_json(value: Value) -> Option<Json> {
    Some(match value {
        Value::Null => return None,
        Value::Union(_, inner) => return to_json(*inner),
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(n) => Json::from(n),
        Value::Long(n) | Value::TimestampMillis(n) => Json::from(n),
        Value::Float(x) => return serde_json::Number::from_f64(f64::from(x)).map(Json::Number),
        Value::Double(x) => return serde_json::Number::from_f64(x).map(Json::Number),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(String::from_utf8_lossy(&b).into_owned()),
        Value::Map(m) => Json::Object(m.into_iter().map(|(k, v)| (k, to_json(v).unwrap_or(Json::Null))).collect()),
        Value::Array(a) => Json::Array(a.into_iter().map(|v| to_json(v).unwrap_or(Json::Null)).collect()),
        Value::Record(r) => Json::Object(r.into_iter().filter_map(|(k, v)| Some((k, to_json(v)?))).collect()),
        // The reader schema (usage_event.avsc) has no other types.
        _ => return None,
    })
}

/// `cost_usd` written as a decimal logical type or a number: its exact decimal text. `None`: not one of
/// those (strings and bytes go through the ordinary resolution).
fn decimal_text(writer_schema: &Schema, value: &Value) -> Result<Option<String>, String> {
    Ok(Some(match value {
        Value::Decimal(d) => {
            let Schema::Decimal(schema) = writer_schema else {
                return Err("a decimal whose writer schema does not give its scale".into());
            };
            let bytes = Vec::<u8>::try_from(d).map_err(|e| short(&e.to_string()))?;
            if bytes.len() > 64 {
                return Err(format!("a {}-byte decimal is too large for a cost", bytes.len()));
            }
            decimal_string(&bytes, schema.scale)
        }
        Value::BigDecimal(d) => d.to_plain_string(),
        Value::Double(x) if x.is_finite() => x.to_string(),
        Value::Float(x) if x.is_finite() => x.to_string(),
        Value::Double(_) | Value::Float(_) => return Err("the writer's number is not finite".into()),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        _ => return Ok(None),
    }))
}

/// The decimal text of a big-endian two's-complement unscaled integer with `scale` fraction digits.
fn decimal_string(unscaled: &[u8], scale: usize) -> String {
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = unscaled.to_vec();
    if negative {
        // Two's complement: invert and add one.
        let mut carry = true;
        for b in magnitude.iter_mut().rev() {
            let (sum, overflow) = (!*b).overflowing_add(u8::from(carry));
            *b = sum;
            carry = overflow;
        }
    }
    let mut digits = Vec::new(); // least significant first
    while magnitude.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for b in magnitude.iter_mut() {
            let current = (remainder << 8) | u32::from(*b);
            *b = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut out = String::with_capacity(digits.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(int).unwrap_or_default());
    if scale > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(frac).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifinops_schemas::avro::AvroFraming;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fixtures() -> PathBuf {
        // the checkout the tests run in (cargo sets it at run time; a test binary built from another checkout
        // with the same target directory has that one's path compiled in)
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("tests/fixtures/avro")
    }

    fn local() -> AvroDecoder {
        AvroDecoder::new(SchemaSource::Local { files: vec![fixtures()] }).unwrap()
    }

    fn fixture(file: &str) -> Schema {
        Schema::parse_str(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap()
    }

    /// The Avro body of a record given as (field, value) pairs; unions get the value in their first
    /// non-null branch, fields not given are null.
    fn body(schema: &Schema, values: &[(&str, Value)]) -> Vec<u8> {
        let fields = record_fields(schema);
        for (name, _) in values {
            assert!(fields.iter().any(|f| f.name == *name), "{name} is not a field of the schema");
        }
        let record = fields
            .iter()
            .map(|f| {
                let given = values.iter().find(|(n, _)| *n == f.name).map(|(_, v)| v.clone());
                let v = match (&f.schema, given) {
                    (Schema::Union(u), Some(v)) => {
                        let i = u.variants().iter().position(|b| !matches!(b, Schema::Null)).unwrap();
                        Value::Union(i as u32, Box::new(v))
                    }
                    (Schema::Union(_), None) => Value::Union(0, Box::new(Value::Null)),
                    (_, Some(v)) => v,
                    (_, None) => panic!("required field {} not given", f.name),
                };
                (f.name.clone(), v)
            })
            .collect();
        GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(Value::Record(record)).unwrap()
    }

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn required(event_id: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("event_id", s(event_id)),
            ("timestamp", Value::TimestampMillis(1_764_460_800_000)),
            ("provider", s("openai")),
            ("model", s("gpt-4o")),
        ]
    }

    fn confluent(id: u32, schema: &Schema, values: &[(&str, Value)]) -> Vec<u8> {
        shared::frame(AvroFraming::Confluent { schema_id: id }, schema, &body(schema, values))
    }

    fn full_event() -> Vec<(&'static str, Value)> {
        vec![
            ("event_id", s("req-1")),
            ("timestamp", Value::TimestampMillis(1_764_460_800_000)),
            ("provider", s("anthropic")),
            ("model", s("claude-sonnet-4-5")),
            ("input_tokens", Value::Long(1200)),
            ("output_tokens", Value::Long(300)),
            ("cache_read_tokens", Value::Long(100)),
            ("cache_write_tokens", Value::Long(200)),
            ("cache_write_1h_tokens", Value::Long(50)),
            ("reasoning_tokens", Value::Long(20)),
            ("audio_input_tokens", Value::Long(7)),
            ("audio_output_tokens", Value::Long(3)),
            ("retrieval_calls", Value::Long(1)),
            ("service_tier", Value::Enum(1, "batch".into())),
            ("status", Value::Enum(1, "error".into())),
            ("cache_hit", Value::Boolean(true)),
            ("attempt", Value::Int(2)),
            ("trace_id", s("t-1")),
            ("api_key_id", s("key-1")),
            ("service_account", s("svc-search")),
            ("end_user", s("u-1")),
            ("team", s("search")),
            ("project", s("ranking")),
            ("workflow", s("rerank")),
            ("environment", s("prod")),
            ("tags", Value::Map([("region".to_string(), s("eu"))].into())),
            ("cost_usd", s("0.0123")),
        ]
    }

    fn full_event_json() -> Json {
        json!({
            "event_id": "req-1", "timestamp": 1_764_460_800_000i64, "provider": "anthropic",
            "model": "claude-sonnet-4-5", "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 100,
            "cache_write_tokens": 200, "cache_write_1h_tokens": 50, "reasoning_tokens": 20,
            "audio_input_tokens": 7, "audio_output_tokens": 3, "retrieval_calls": 1, "service_tier": "batch",
            "status": "error", "cache_hit": true, "attempt": 2, "trace_id": "t-1", "api_key_id": "key-1",
            "service_account": "svc-search", "end_user": "u-1", "team": "search", "project": "ranking",
            "workflow": "rerank", "environment": "prod", "tags": {"region": "eu"}, "cost_usd": "0.0123"
        })
    }

    fn kind(r: Result<Json, Rejection>) -> Rejection {
        r.expect_err("expected a rejection")
    }

    #[test]
    fn confluent_framing_with_a_local_schema_file() {
        let mut d = local();
        let msg = confluent(1, &fixture("1.avsc"), &full_event());
        assert_eq!(d.decode(&msg).unwrap(), full_event_json());
        // Usage missing: both token totals absent, nothing invented.
        let msg = confluent(1, &fixture("1.avsc"), &required("req-2"));
        assert_eq!(
            d.decode(&msg).unwrap(),
            json!({"event_id": "req-2", "timestamp": 1_764_460_800_000i64, "provider": "openai", "model": "gpt-4o"})
        );
    }

    #[test]
    fn an_older_writer_schema_resolves_to_the_reader_schema() {
        let mut d = local();
        let old = fixture("2.avsc");
        let mut values = required("req-3");
        values.extend([
            ("input_tokens", Value::Int(10)),
            ("output_tokens", Value::Long(5)),
            ("latency_ms", Value::Long(1234)),
            ("team", s("search")),
        ]);
        values.push(("service_tier", Value::Enum(2, "flex".into())));
        assert_eq!(
            d.decode(&confluent(2, &old, &values)).unwrap(),
            json!({"event_id": "req-3", "timestamp": 1_764_460_800_000i64, "provider": "openai", "model": "gpt-4o",
                   "input_tokens": 10, "output_tokens": 5, "service_tier": "flex", "team": "search"})
        );
        // A symbol the reader's enum does not have: this record cannot be read, and the field is named.
        *values.last_mut().unwrap() = ("service_tier", Value::Enum(4, "scale".into()));
        let r = kind(d.decode(&confluent(2, &old, &values)));
        assert_eq!(r.kind, "avro_schema_incompatible");
        assert!(r.reason.contains("`service_tier`") && r.reason.contains("\"scale\""), "{}", r.reason);
    }

    #[test]
    fn decimal_cost_and_microsecond_timestamps_are_converted_exactly() {
        let mut d = local();
        let schema = fixture("gateway-cost-3.avsc");
        let values = [
            ("event_id", s("req-4")),
            ("timestamp", Value::TimestampMicros(1_764_460_800_123_999)),
            ("provider", s("openai")),
            ("model", s("gpt-4o")),
            ("input_tokens", Value::Long(1)),
            ("output_tokens", Value::Long(2)),
            ("cost_usd", Value::Decimal(apache_avro::Decimal::from(12_345_678i32.to_be_bytes()))),
        ];
        let out = d.decode(&confluent(3, &schema, &values)).unwrap();
        assert_eq!(out["cost_usd"], "0.012345678");
        assert_eq!(out["timestamp"], 1_764_460_800_123i64);
    }

    #[test]
    fn decimal_strings_are_exact() {
        assert_eq!(decimal_string(&[0x00], 0), "0");
        assert_eq!(decimal_string(&[], 2), "0.00");
        assert_eq!(decimal_string(&[0xFF], 2), "-0.01");
        assert_eq!(decimal_string(&[0x80], 0), "-128");
        assert_eq!(decimal_string(&[0x30, 0x39], 2), "123.45");
        assert_eq!(decimal_string(&[0x30, 0x39], 7), "0.0012345");
        let big = 123_456_789_012_345_678_901_234_567_890i128;
        assert_eq!(decimal_string(&big.to_be_bytes(), 18), "123456789012.345678901234567890");
        assert_eq!(decimal_string(&(-big).to_be_bytes(), 18), "-123456789012.345678901234567890");
    }

    #[test]
    fn single_object_encoding() {
        // The built-in schema is known without any schema source.
        let mut d = AvroDecoder::new(SchemaSource::None).unwrap();
        let builtin = shared::usage_event_avro_schema();
        let msg = shared::frame(AvroFraming::SingleObject, builtin, &body(builtin, &full_event()));
        assert_eq!(d.decode(&msg).unwrap(), full_event_json());
        // Another writer schema: unknown without it, resolved with it among the local files.
        let old = fixture("2.avsc");
        let mut values = required("req-5");
        values.extend([
            ("input_tokens", Value::Int(10)),
            ("output_tokens", Value::Long(5)),
            ("latency_ms", Value::Long(9)),
        ]);
        let msg = shared::frame(AvroFraming::SingleObject, &old, &body(&old, &values));
        let r = kind(d.decode(&msg));
        assert_eq!(r.kind, "avro_schema_unknown");
        assert!(r.reason.contains(&format!("{:016x}", u64::from_le_bytes(shared::fingerprint(&old)))), "{}", r.reason);
        assert_eq!(local().decode(&msg).unwrap()["input_tokens"], 10);
    }

    #[test]
    fn unknown_schema_id_names_the_id_and_where_it_looked() {
        let msg = confluent(99, &fixture("1.avsc"), &required("req-6"));
        let r = kind(local().decode(&msg));
        assert_eq!(r.kind, "avro_schema_unknown");
        assert!(r.reason.contains("schema id 99") && r.reason.contains("fixtures/avro"), "{}", r.reason);
        assert!(r.reason.contains("ids 1, 2, 3"), "{}", r.reason);
        let r = kind(AvroDecoder::new(SchemaSource::None).unwrap().decode(&msg));
        assert_eq!(r.kind, "avro_schema_unknown");
        assert!(r.reason.contains("no schema source"), "{}", r.reason);
    }

    #[test]
    fn json_on_an_avro_topic() {
        let r = kind(local().decode(br#"{"event_id":"a","timestamp":0}"#));
        assert_eq!(r.kind, "avro_framing");
        assert!(r.reason.contains("0x7b ('{')") && r.reason.contains("JSON on an Avro topic?"), "{}", r.reason);
        assert_eq!(kind(local().decode(b"")).kind, "avro_framing");
        assert_eq!(kind(local().decode(&[0, 0, 1])).kind, "avro_framing");
    }

    #[test]
    fn every_truncation_of_the_body_is_rejected() {
        let mut d = local();
        let msg = confluent(1, &fixture("1.avsc"), &full_event());
        for cut in shared::CONFLUENT_HEADER_LEN..msg.len() {
            let r = kind(d.decode(&msg[..cut]));
            assert_eq!(r.kind, "avro_decode", "cut at {cut}: {}", r.reason);
        }
        // Also a record whose optional fields are all null: only the union indexes follow the required ones.
        let msg = confluent(1, &fixture("1.avsc"), &required("req-7"));
        for cut in shared::CONFLUENT_HEADER_LEN..msg.len() {
            assert_eq!(kind(d.decode(&msg[..cut])).kind, "avro_decode", "cut at {cut}");
        }
        assert!(d.decode(&msg).is_ok());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut msg = confluent(1, &fixture("1.avsc"), &required("req-8"));
        msg.push(0);
        let r = kind(local().decode(&msg));
        assert_eq!(r.kind, "avro_decode");
        assert!(r.reason.contains("1 trailing bytes"), "{}", r.reason);
    }

    #[test]
    fn incompatible_writer_schemas_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let no_timestamp = r#"{"type": "record", "name": "E", "fields": [
            {"name": "event_id", "type": "string"}, {"name": "provider", "type": "string"},
            {"name": "model", "type": "string"}]}"#;
        let string_tokens = r#"{"type": "record", "name": "E", "fields": [
            {"name": "event_id", "type": "string"}, {"name": "timestamp", "type": "long"},
            {"name": "provider", "type": "string"}, {"name": "model", "type": "string"},
            {"name": "input_tokens", "type": ["null", "string"], "default": null}]}"#;
        std::fs::write(dir.path().join("4.avsc"), no_timestamp).unwrap();
        std::fs::write(dir.path().join("string-tokens-5.avsc"), string_tokens).unwrap();
        let mut d = AvroDecoder::new(SchemaSource::Local { files: vec![dir.path().into()] }).unwrap();

        let schema = Schema::parse_str(no_timestamp).unwrap();
        let msg = confluent(4, &schema, &[("event_id", s("a")), ("provider", s("p")), ("model", s("m"))]);
        let r = kind(d.decode(&msg));
        assert_eq!(r.kind, "avro_schema_incompatible");
        assert!(r.reason.contains("`timestamp`") && r.reason.contains("4.avsc"), "{}", r.reason);

        let schema = Schema::parse_str(string_tokens).unwrap();
        let mut values =
            vec![("event_id", s("a")), ("timestamp", Value::Long(5)), ("provider", s("p")), ("model", s("m"))];
        assert_eq!(d.decode(&confluent(5, &schema, &values)).unwrap()["timestamp"], 5);
        values.push(("input_tokens", s("sk-secret")));
        let r = kind(d.decode(&confluent(5, &schema, &values)));
        assert_eq!(r.kind, "avro_schema_incompatible");
        assert!(r.reason.contains("`input_tokens`") && r.reason.contains("string"), "{}", r.reason);
        assert!(!r.reason.contains("sk-secret"), "the value is not shown: {}", r.reason);
    }

    #[test]
    fn bad_schema_files_are_errors_naming_the_file() {
        let err = |files: Vec<PathBuf>| AvroDecoder::new(SchemaSource::Local { files }).err().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("7.avsc");
        assert!(err(vec![missing.clone()]).contains(&missing.display().to_string()));
        let unnamed = dir.path().join("usage.avsc");
        std::fs::write(&unnamed, shared::USAGE_EVENT_AVSC).unwrap();
        let e = err(vec![unnamed.clone()]);
        assert!(e.contains("usage.avsc") && e.contains("no schema id"), "{e}");
        let broken = dir.path().join("8.avsc");
        std::fs::write(&broken, "{not json").unwrap();
        let e = err(vec![broken]);
        assert!(e.contains("8.avsc") && e.contains("not a valid Avro schema"), "{e}");
        let (a, b) = (dir.path().join("a-9.avsc"), dir.path().join("9.avsc"));
        std::fs::write(&a, shared::USAGE_EVENT_AVSC).unwrap();
        std::fs::write(&b, shared::USAGE_EVENT_AVSC).unwrap();
        let e = err(vec![a, b]);
        assert!(e.contains("9.avsc") && e.contains("schema id 9 is also the id of"), "{e}");
    }

    /// A schema registry on 127.0.0.1 answering `GET /schemas/ids/{id}` from `answers` (else 404), for at
    /// most `max` requests. Returns its URL and the count of requests served.
    fn registry(answers: HashMap<u32, (u16, String)>, max: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max) {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let path = request.split(' ').nth(1).unwrap_or_default();
                let answer = path.strip_prefix("/schemas/ids/").and_then(|id| answers.get(&id.parse::<u32>().ok()?));
                let (status, body) = answer
                    .cloned()
                    .unwrap_or_else(|| (404, r#"{"error_code":40403,"message":"Schema 8 not found"}"#.to_string()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, hits)
    }

    #[test]
    fn schema_registry_lookups_are_cached() {
        let old_text = std::fs::read_to_string(fixtures().join("2.avsc")).unwrap();
        let answers = HashMap::from([
            (7, (200, json!({"schema": old_text}).to_string())),
            (9, (200, json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}).to_string())),
        ]);
        let (url, hits) = registry(answers, 10);
        let mut d = AvroDecoder::new(SchemaSource::Registry { url }).unwrap();
        let old = fixture("2.avsc");
        let mut values = required("req-9");
        values.extend([
            ("input_tokens", Value::Int(10)),
            ("output_tokens", Value::Long(5)),
            ("latency_ms", Value::Long(9)),
        ]);

        // Single-object with a schema not fetched yet: unknown (the registry cannot be asked by fingerprint).
        let single = shared::frame(AvroFraming::SingleObject, &old, &body(&old, &values));
        assert_eq!(kind(d.decode(&single)).kind, "avro_schema_unknown");
        assert_eq!(hits.load(Ordering::SeqCst), 0);

        let msg = confluent(7, &old, &values);
        assert_eq!(d.decode(&msg).unwrap()["output_tokens"], 5);
        assert_eq!(d.decode(&msg).unwrap()["input_tokens"], 10);
        assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once, then cached");
        assert_eq!(d.decode(&single).unwrap()["event_id"], "req-9", "a fetched schema is known by fingerprint");

        let unknown = confluent(8, &old, &values);
        for _ in 0..3 {
            let r = kind(d.decode(&unknown));
            assert_eq!(r.kind, "avro_schema_unknown");
            assert!(r.reason.contains("schema id 8") && r.reason.contains("404"), "{}", r.reason);
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2, "a failure is remembered");

        let r = kind(d.decode(&confluent(9, &old, &values)));
        assert_eq!(r.kind, "avro_schema_incompatible");
        assert!(r.reason.contains("PROTOBUF"), "{}", r.reason);
    }

    #[test]
    fn a_registry_that_is_down_is_not_a_data_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut d = AvroDecoder::new(SchemaSource::Registry { url: format!("http://127.0.0.1:{port}") }).unwrap();
        let msg = confluent(7, &fixture("1.avsc"), &required("req-10"));
        for _ in 0..2 {
            let r = kind(d.decode(&msg));
            assert_eq!(r.kind, "avro_registry_unavailable");
            assert!(r.reason.contains("schema registry unavailable") && r.reason.contains("retry"), "{}", r.reason);
            assert!(r.reason.contains(&format!("127.0.0.1:{port}/schemas/ids/7")), "{}", r.reason);
        }
        // Single-object messages of known schemas do not need the registry.
        let builtin = shared::usage_event_avro_schema();
        let single = shared::frame(AvroFraming::SingleObject, builtin, &body(builtin, &required("req-11")));
        assert!(d.decode(&single).is_ok());
    }

    #[test]
    fn registry_urls_must_be_http() {
        let e = AvroDecoder::new(SchemaSource::Registry { url: "registry:8081".into() }).err().unwrap().to_string();
        assert!(e.contains("registry:8081") && e.contains("only http://"), "{e}");
        let https = AvroDecoder::new(SchemaSource::Registry { url: "https://registry:8081".into() });
        assert_eq!(https.is_ok(), cfg!(feature = "registry-tls"));
    }

    #[test]
    fn the_decoder_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<AvroDecoder>();
    }
}
