//! The contract as a JSON Schema (2020-12) of a message body, made from
//! the same field list the parser uses ([`crate::contract::field`]), so
//! the two cannot drift: `login-etl schema` prints it. Two are published,
//! docs/contract/login-event.schema.json (the default contract: what is
//! stored at all, a login with `user_id`) and
//! docs/contract/login-event.strict.schema.json (`CONTRACT=strict`: a
//! clean login, what producers aim for); a test keeps each equal to the
//! command's output.
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

use crate::app_version::PRE_RELEASE_WORDS;
use crate::contract::policy::MAX_EXTRA_BYTES;
use crate::contract::{Contract, Mode, UnknownFields};
use crate::contract::{FIELDS, Field};

/// The schema's identifier (the default contract).
pub const SCHEMA_ID: &str = "urn:login-etl:login-event:2";

/// The strict schema's identifier (version 1 was the only contract before
/// defects: the same rules).
pub const SCHEMA_ID_STRICT: &str = "urn:login-etl:login-event:1";

/// A character that is not blank: one outside what `str::trim` removes
/// (Unicode `White_Space`).
const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// 1 to 3 dot-separated numbers, the first of 1 to 3 digits or of 4 up to
/// 2146 (`app_version::MAX_MAJOR`), the others of 1 to 3 digits, and
/// nothing else.
const APP_VERSION: &str =
    "^([0-9]{1,3}|[01][0-9]{3}|20[0-9]{2}|21[0-3][0-9]|214[0-6])(\\.[0-9]{1,3}){0,2}(?![\\s\\S])";

/// The `app_version` texts stored as received in `app_version_text`
/// (`app_version::release_text`, of a text in which a version is found):
/// an optional `v`, 1 to 4 numbers of 1 to 8 digits (four of at most 255
/// read as an address: no version), then at most a pre-release word of
/// [`PRE_RELEASE_WORDS`] in any case with 1 to 4 digits, a build number
/// `+` and 1 to 8 digits, and one in parentheses. A tested equal of the
/// function's parser (tests/test_contract.py).
fn app_version_text_pattern() -> String {
    let octet = "(?:[0-9]{1,2}|[01][0-9]{2}|2[0-4][0-9]|25[0-5])";
    let words: Vec<String> = PRE_RELEASE_WORDS
        .iter()
        .map(|w| {
            w.chars()
                .map(|c| format!("[{c}{}]", c.to_ascii_uppercase()))
                .collect()
        })
        .collect();
    format!(
        "^(?![vV]?(?:{octet}\\.){{3}}{octet}(?![0-9.]))[vV]?[0-9]{{1,8}}(?:\\.[0-9]{{1,8}}){{0,3}}(?:[-_~]?(?:{})(?:[.-]?[0-9]{{1,4}})?)?(?:\\+[0-9]{{1,8}})?(?: ?\\([0-9]{{1,8}}\\))?(?![\\s\\S])",
        words.join("|")
    )
}

/// What a field may hold under strict: its type, length, no U+0000, not
/// blank where required, and the version's shape.
fn strict_property(field: Field) -> Value {
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
    if field == Field::Ip {
        // A forwarded-for list (`a, b`) is a defect (`ip.list`): no comma.
        p["not"] = json!({ "type": "string", "pattern": "[\\u0000,]" });
    }
    p
}

/// What a field may hold when a login is kept with its defects: anything
/// but `user_id`, which must be usable (a string as strict says, or a
/// JSON integer: its decimal text).
fn lenient_property(field: Field) -> Value {
    if field != Field::UserId {
        return json!({
            "description": format!("{} Anything else is kept as a defect of the login (stored as NULL, or as what can be derived), never a reason to reject it.", field.description()),
        });
    }
    let mut p = strict_property(field);
    p["description"] = json!(format!(
        "{} A JSON integer is stored as its decimal text (defect user_id.integer).",
        field.description()
    ));
    p["type"] = json!(["string", "integer"]);
    p["minimum"] = json!(i64::MIN);
    p["maximum"] = json!(u64::MAX);
    p
}

/// The JSON Schema of a body the function stores under `contract`.
pub fn schema(contract: &Contract) -> Value {
    let strict = contract.mode == Mode::Strict;
    let mut properties = serde_json::Map::new();
    for f in FIELDS {
        let p = if strict {
            strict_property(f)
        } else {
            lenient_property(f)
        };
        properties.insert(f.name().into(), p);
    }
    for name in contract.extra() {
        let mut p = json!({
            "description": format!("Declared in EXTRA_FIELDS: kept in the extra column as the JSON it is: one value (not an object or an array), at most {MAX_EXTRA_BYTES} bytes of JSON, without U+0000."),
        });
        if strict {
            p["type"] = json!(["string", "number", "boolean", "null"]);
            p["not"] = json!({ "type": "string", "pattern": "\\u0000" });
        }
        properties.insert(name.clone(), p);
    }
    let required: Vec<&str> = FIELDS
        .iter()
        .filter(|f| {
            if strict {
                f.required()
            } else {
                **f == Field::UserId
            }
        })
        .map(|f| f.name())
        .collect();
    let (title, description) = if strict {
        (
            "A login event, as login-etl stores it under CONTRACT=strict",
            "The body of an SQS message sent to login-etl's queue: a JSON object, each field once, every rule met (a message that breaks one is rejected to the dead-letter queue). What producers aim for. Fields outside these are counted and never stored; with UNKNOWN_FIELDS=reject they are refused (additionalProperties false). `login-etl validate --contract strict` gives the function's own verdict.",
        )
    } else {
        (
            "A login event, as login-etl stores it",
            "The body of an SQS message sent to login-etl's queue: a JSON object with a usable user_id, each field once. Everything else wrong with a login is a defect recorded on its row, never a reason to reject it; login-event.strict.schema.json is a clean login. Fields outside these are counted and never stored; with UNKNOWN_FIELDS=reject they are refused (additionalProperties false). `login-etl validate` gives the function's own verdict.",
        )
    };
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": if strict { SCHEMA_ID_STRICT } else { SCHEMA_ID },
        "title": title,
        "description": description,
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": contract.unknown == UnknownFields::Ignore,
    });
    if !strict {
        schema["$defs"] = json!({
            "app_version_text": {
                "description": "The app_version texts stored as received (app_version_text): a version as releases write it (an optional v, numbers, a pre-release word of a closed list with digits, numeric build metadata). Another text in which a version is found is withheld (NULL, defect app_version.text_withheld), its integer kept; one with no version is app_version.unparsed.",
                "type": "string",
                "pattern": app_version_text_pattern(),
            }
        });
    }
    schema
}

/// [`schema`] as the text `login-etl schema` prints (pretty, a final newline).
pub fn schema_text(contract: &Contract) -> String {
    let mut text = serde_json::to_string_pretty(&schema(contract)).expect("a schema serializes");
    text.push('\n');
    text
}
