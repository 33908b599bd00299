//! A valid example value from a JSON Schema, to prefill a flow's run form.
//!
//! Covers what `schemars` emits for Rust types (draft-07 and 2020-12): `$ref` into
//! `definitions`/`$defs`, `type` (also as a list), `const`, `enum`, `default`, `examples`,
//! `oneOf`/`anyOf` (first branch), `allOf` (merged), object properties, arrays with
//! `minItems`, and numeric bounds. It is a form's starting point, not a validator: anything it
//! does not understand becomes `null`.

use serde_json::{Map, Value, json};

/// How deep `$ref`s and nesting may go before the generator gives up (recursive types).
const MAX_DEPTH: usize = 12;

/// A value that fits `schema`, the root of a JSON Schema document.
///
/// Prefers the schema's own `default`, `examples` or `const`; otherwise builds one: strings
/// are `"Alice"` where the property name suggests a name and `"example"` elsewhere, numbers
/// are 1 clamped into `minimum..=maximum`, arrays have `max(minItems, 1)` items, objects have
/// every declared property.
pub fn example_from_schema(schema: &Value) -> Value {
    Generator { root: schema }.example(schema, "", 0)
}

struct Generator<'a> {
    root: &'a Value,
}

impl<'a> Generator<'a> {
    fn example(&self, schema: &'a Value, key: &str, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        let schema = match schema {
            // `true` accepts anything; `false` nothing: null is as good as it gets.
            Value::Bool(_) => return Value::Null,
            Value::Object(map) => map,
            _ => return Value::Null,
        };
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(value) = schema.get("default") {
            return value.clone();
        }
        if let Some(first) = schema
            .get("examples")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return first.clone();
        }
        if let Some(first) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return first.clone();
        }
        if let Some(target) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            return self.example(target, key, depth + 1);
        }
        for combinator in ["oneOf", "anyOf"] {
            if let Some(branches) = schema.get(combinator).and_then(Value::as_array) {
                // Prefer a branch that is not plain null (`Option<T>` is `anyOf [T, null]`).
                let branch = branches
                    .iter()
                    .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .or_else(|| branches.first());
                if let Some(branch) = branch {
                    return self.example(branch, key, depth + 1);
                }
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            return self.merge_all_of(parts, key, depth);
        }

        match type_of(schema) {
            Some("null") => Value::Null,
            Some("boolean") => Value::Bool(true),
            Some("integer") => json!(clamp(schema, 1.0).round() as i64),
            Some("number") => json!(clamp(schema, 1.0)),
            Some("string") => json!(string_for(schema, key)),
            Some("array") => self.array(schema, key, depth),
            Some("object") => self.object(schema, depth),
            _ => Value::Null,
        }
    }

    fn array(&self, schema: &'a Map<String, Value>, key: &str, depth: usize) -> Value {
        let count = schema
            .get("minItems")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 16);
        match schema.get("items") {
            // A tuple (`items` as a list, or draft 2020-12 `prefixItems`).
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| self.example(item, key, depth + 1))
                .collect(),
            Some(item) => (0..count)
                .map(|_| self.example(item, key, depth + 1))
                .collect(),
            None => match schema.get("prefixItems").and_then(Value::as_array) {
                Some(items) => items
                    .iter()
                    .map(|item| self.example(item, key, depth + 1))
                    .collect(),
                None => Value::Array(Vec::new()),
            },
        }
    }

    fn object(&self, schema: &'a Map<String, Value>, depth: usize) -> Value {
        let mut object = Map::new();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                object.insert(name.clone(), self.example(property, name, depth + 1));
            }
        }
        Value::Object(object)
    }

    /// `allOf`: objects are merged; otherwise the first part's example stands.
    fn merge_all_of(&self, parts: &'a [Value], key: &str, depth: usize) -> Value {
        let mut merged: Option<Value> = None;
        for part in parts {
            let value = self.example(part, key, depth + 1);
            merged = Some(match (merged, value) {
                (Some(Value::Object(mut a)), Value::Object(b)) => {
                    a.extend(b);
                    Value::Object(a)
                }
                (Some(previous), _) => previous,
                (None, value) => value,
            });
        }
        merged.unwrap_or(Value::Null)
    }

    /// Local references only: `#/definitions/X`, `#/$defs/X`, or any JSON pointer.
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.root.pointer(pointer)
    }
}

/// The type to build: the first non-null one of a list, or what the keywords imply.
fn type_of(schema: &Map<String, Value>) -> Option<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Array(types)) => {
            let types: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            types
                .iter()
                .find(|t| **t != "null")
                .or_else(|| types.first())
                .copied()
        }
        _ if schema.contains_key("properties") => Some("object"),
        _ if schema.contains_key("items") => Some("array"),
        _ => None,
    }
}

/// `preferred`, moved into the schema's bounds (exclusive bounds are stepped over by one).
fn clamp(schema: &Map<String, Value>, preferred: f64) -> f64 {
    let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
    let mut value = preferred;
    if let Some(min) = bound("minimum") {
        value = value.max(min);
    }
    if let Some(min) = bound("exclusiveMinimum") {
        value = value.max(min + 1.0);
    }
    if let Some(max) = bound("maximum") {
        value = value.min(max);
    }
    if let Some(max) = bound("exclusiveMaximum") {
        value = value.min(max - 1.0);
    }
    value
}

fn string_for(schema: &Map<String, Value>, key: &str) -> String {
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    let mut text = match format {
        "date-time" => "2026-01-01T00:00:00Z".to_owned(),
        "date" => "2026-01-01".to_owned(),
        "time" => "12:00:00".to_owned(),
        "email" => "alice@example.com".to_owned(),
        "uri" | "url" => "https://example.com/".to_owned(),
        "uuid" => "00000000-0000-4000-8000-000000000000".to_owned(),
        _ if key.is_empty() || key.to_ascii_lowercase().contains("name") => "Alice".to_owned(),
        _ => "example".to_owned(),
    };
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        while (text.chars().count() as u64) < min {
            text.push('x');
        }
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        text = text.chars().take(max as usize).collect();
    }
    text
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;
    use schemars::generate::SchemaSettings;
    use serde::Deserialize;

    use super::*;

    fn schema<T: JsonSchema>() -> Value {
        SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value()
    }

    /// The example deserializes into the type the schema came from.
    fn round_trips<T: JsonSchema + for<'de> Deserialize<'de>>() -> Value {
        let example = example_from_schema(&schema::<T>());
        if let Err(err) = serde_json::from_value::<T>(example.clone()) {
            panic!("example {example} does not fit: {err}");
        }
        example
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Stream {
        name: String,
        #[serde(default = "hundred")]
        interval_ms: u64,
    }

    fn hundred() -> u64 {
        100
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Pace {
        Relaxed,
        Balanced,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Trip {
        destination: String,
        days: u8,
        travelers: Vec<String>,
        pace: Pace,
        budget: Option<f32>,
        nested: Vec<Leg>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Leg {
        from: String,
        stops: Option<Vec<u16>>,
        kind: Kind,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Kind {
        Train { seat: u32 },
        Walk,
    }

    #[test]
    fn a_plain_string_is_a_name() {
        assert_eq!(round_trips::<String>(), json!("Alice"));
    }

    #[test]
    fn defaults_are_used_and_names_look_like_names() {
        assert_eq!(
            round_trips::<Stream>(),
            json!({"name": "Alice", "interval_ms": 100})
        );
    }

    #[test]
    fn refs_enums_options_and_arrays_give_a_valid_value() {
        let example = round_trips::<Trip>();
        assert_eq!(example["days"], 1, "1 is inside 0..=255 and a sane count");
        assert_eq!(example["pace"], "relaxed");
        assert_eq!(example["travelers"], json!(["example"]));
        assert_eq!(example["nested"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn scalars_and_bounds() {
        round_trips::<bool>();
        round_trips::<i64>();
        round_trips::<f64>();
        round_trips::<Vec<(String, u8)>>();
        round_trips::<std::collections::BTreeMap<String, u32>>();
        let bounded = json!({"type": "integer", "minimum": 5, "maximum": 9});
        assert_eq!(example_from_schema(&bounded), json!(5));
        let short = json!({"type": "string", "minLength": 10});
        assert_eq!(example_from_schema(&short), json!("Alicexxxxx"));
        let listed = json!({"type": ["null", "number"], "exclusiveMaximum": 0});
        assert_eq!(example_from_schema(&listed), json!(-1.0));
    }

    #[test]
    fn unknown_or_recursive_schemas_stop() {
        assert_eq!(example_from_schema(&json!(true)), Value::Null);
        assert_eq!(example_from_schema(&json!({})), Value::Null);
        let recursive = json!({"$ref": "#"});
        assert_eq!(example_from_schema(&recursive), Value::Null);
    }
}
