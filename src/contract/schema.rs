//! The contract as a JSON Schema (2020-12) of a message body, made from
//! the same field list the parser uses ([`crate::contract::field`]), so
//! the two cannot drift: `login-etl schema` prints it, and
//! docs/contract/login-event.schema.json is its output for the default
//! contract (a test keeps the file equal to it).
//!
//! What a schema cannot say is in the descriptions, and the corpus test
//! (tests/test_contract.py) names each such case: an `ip` that is not an
//! address (its parse), a key that appears twice (JSON parsers keep one),
//! and text a schema validator reads where the function's JSON parser
//! refuses it (a lone UTF-16 surrogate escape).
//!
//! The patterns hold under every common regex dialect (ECMA-262, Python,
//! Java, PCRE): no `$` (some match it before a final newline), `(?![\s\S])`
//! for the end of the text, and the blank characters Rust's `trim` removes
//! written out rather than `\s`, whose meaning differs among them.

use serde_json::{Value, json};

use crate::contract::field::{FIELDS, Field};
use crate::contract::policy::{Contract, MAX_EXTRA_BYTES, UnknownFields};

/// The schema's identifier.
pub const SCHEMA_ID: &str = "urn:login-etl:login-event:1";

/// A character that is not blank: one outside what `str::trim` removes
/// (Unicode `White_Space`).
const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// 1 to 3 dot-separated numbers of 1 to 3 digits, and nothing else.
const APP_VERSION: &str = "^[0-9]{1,3}(\\.[0-9]{1,3}){0,2}(?![\\s\\S])";

fn property(field: Field) -> Value {
    let mut p = json!({
        "description": field.description(),
        "type": if field.required() { json!("string") } else { json!(["string", "null"]) },
        "maxLength": field.max_chars(),
        "not": { "type": "string", "pattern": "\\u0000" },
    });
    if field.required() {
        p["pattern"] = json!(NOT_BLANK);
    }
    if field == Field::AppVersion {
        p["allOf"] = json!([{ "pattern": APP_VERSION }]);
    }
    p
}

/// The JSON Schema of a body the function accepts under `contract`.
pub fn schema(contract: &Contract) -> Value {
    let mut properties = serde_json::Map::new();
    for f in FIELDS {
        properties.insert(f.name().into(), property(f));
    }
    for name in contract.extra() {
        properties.insert(
            name.clone(),
            json!({
                "description": format!("Declared in EXTRA_FIELDS: kept in the extra column as the JSON it is, at most {MAX_EXTRA_BYTES} bytes of it, without U+0000."),
            }),
        );
    }
    let required: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.required())
        .map(|f| f.name())
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "A login event, as login-etl accepts it",
        "description": "The body of an SQS message sent to login-etl's queue: a JSON object. Each field appears once. Fields outside these are counted and never stored; with UNKNOWN_FIELDS=reject they are refused (additionalProperties false). `login-etl validate` gives the function's own verdict.",
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": contract.unknown == UnknownFields::Ignore,
    })
}

/// [`schema`] as the text `login-etl schema` prints (pretty, a final newline).
pub fn schema_text(contract: &Contract) -> String {
    let mut text = serde_json::to_string_pretty(&schema(contract)).expect("a schema serializes");
    text.push('\n');
    text
}
