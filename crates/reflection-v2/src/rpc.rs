//! JSON-RPC 2.0 framing as genkit-cli 1.43 speaks it: one object per WebSocket message, no
//! batches, ids echoed exactly (the CLI's are strings, and `2` does not answer `"2"`).

use flows::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Valid JSON that is not a JSON-RPC 2.0 request object (a batch, no method, ...).
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Params missing or of the wrong shape.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// An action failed, or could not run: `data` is its Genkit `Status` (as the JS runtime does).
pub(crate) const ACTION_ERROR: i64 = -32000;

/// One message from the CLI.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A call that wants an answer.
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    /// A call that wants none.
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// The answer to one of our requests (`register`): its result, or its error object.
    Response {
        id: Value,
        outcome: Result<Value, Value>,
    },
}

/// A JSON-RPC error: its code, message and `data` (a Genkit `Status`-shaped object, whose
/// `code` and `message` the CLI prints).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) data: Value,
    /// The Genkit status in `data`: what the call is counted and logged as.
    pub(crate) status: StatusCode,
}

impl RpcError {
    /// An error of this layer, with a Genkit status in `data`.
    pub(crate) fn new(code: i64, status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        RpcError {
            code,
            data: json!({ "code": status, "message": message }),
            message,
            status,
        }
    }

    /// A flow's error: `data` is its Genkit `Status`, trace id and all.
    pub(crate) fn of_flow(err: &flows::FlowError) -> Self {
        RpcError {
            code: ACTION_ERROR,
            message: err.message.clone(),
            data: err.to_status(),
            status: err.code,
        }
    }

    pub(crate) fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(INVALID_PARAMS, StatusCode::InvalidArgument, message)
    }
}

/// A message that could not be taken, and the id to answer it under (`null` when it had
/// none that could be read).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) id: Value,
    pub(crate) error: RpcError,
}

/// Reads one message.
///
/// # Errors
/// What to answer, when the message is not JSON (`PARSE_ERROR`) or not a JSON-RPC 2.0 object
/// (`INVALID_REQUEST`; a batch too: the CLI never sends one).
pub(crate) fn parse(message: &[u8]) -> Result<Incoming, Refused> {
    let refused = |id: Value, code, message: String| Refused {
        id,
        error: RpcError::new(code, StatusCode::InvalidArgument, message),
    };
    let value: Value = serde_json::from_slice(message)
        .map_err(|err| refused(Value::Null, PARSE_ERROR, format!("Parse error: {err}")))?;
    let Value::Object(mut object) = value else {
        let what = if value.is_array() {
            "batches are not supported; send one JSON-RPC object per message"
        } else {
            "a message must be a JSON-RPC 2.0 object"
        };
        return Err(refused(Value::Null, INVALID_REQUEST, what.to_owned()));
    };
    let id = object.remove("id");
    let answer_to = id.clone().unwrap_or(Value::Null);
    if !matches!(
        &id,
        None | Some(Value::String(_) | Value::Number(_) | Value::Null)
    ) {
        return Err(refused(
            Value::Null,
            INVALID_REQUEST,
            "id must be a string or a number".to_owned(),
        ));
    }
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(refused(
            answer_to,
            INVALID_REQUEST,
            r#"jsonrpc must be "2.0""#.to_owned(),
        ));
    }
    // `null` reads as absent: lenient where it costs nothing.
    let params = object.remove("params").filter(|p| !p.is_null());
    if let Some(method) = object.remove("method") {
        let Value::String(method) = method else {
            return Err(refused(
                answer_to,
                INVALID_REQUEST,
                "method must be a string".to_owned(),
            ));
        };
        if !matches!(params, None | Some(Value::Object(_) | Value::Array(_))) {
            return Err(refused(
                answer_to,
                INVALID_REQUEST,
                "params must be an object or an array".to_owned(),
            ));
        }
        return Ok(match id {
            Some(id) => Incoming::Request { id, method, params },
            None => Incoming::Notification { method, params },
        });
    }
    let outcome = match (object.remove("result"), object.remove("error")) {
        (Some(result), None) => Ok(result),
        (None, Some(error)) => Err(error),
        _ => {
            return Err(refused(
                answer_to,
                INVALID_REQUEST,
                "a message must have a method, or be an answer with a result or an error"
                    .to_owned(),
            ));
        }
    };
    match id {
        Some(id) => Ok(Incoming::Response { id, outcome }),
        None => Err(refused(
            Value::Null,
            INVALID_REQUEST,
            "an answer must have the id of its request".to_owned(),
        )),
    }
}

/// The id of a message too big to be parsed whole, read without keeping the rest (serde skips
/// every other field), so its refusal reaches the call that waits for it.
pub(crate) fn id_of(message: &[u8]) -> Value {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Value,
    }
    serde_json::from_slice::<IdOnly>(message)
        .map(|m| m.id)
        .ok()
        .filter(|id| id.is_string() || id.is_number())
        .unwrap_or(Value::Null)
}

/// A method's params as `T`; absent params read as `{}`.
///
/// # Errors
/// `INVALID_PARAMS`, naming the field and what was wrong with it.
pub(crate) fn params<T: DeserializeOwned>(
    method: &str,
    params: Option<Value>,
) -> Result<T, RpcError> {
    let params = params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(RpcError::invalid_params(format!(
            "{method}: params must be an object"
        )));
    }
    serde_path_to_error::deserialize(params).map_err(|err| {
        let path = err.path().to_string();
        let place = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        RpcError::invalid_params(format!("{method}: invalid params{place}: {}", err.inner()))
    })
}

pub(crate) fn response(id: &Value, result: Value) -> String {
    json!({ "jsonrpc": "2.0", "result": result, "id": id }).to_string()
}

pub(crate) fn error_response(id: &Value, error: &RpcError) -> String {
    json!({
        "jsonrpc": "2.0",
        "error": { "code": error.code, "message": error.message, "data": error.data },
        "id": id,
    })
    .to_string()
}

pub(crate) fn notification(method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "method": method, "params": params }).to_string()
}

pub(crate) fn request(id: &str, method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> (Value, i64, String) {
        let refused = parse(message.as_bytes()).unwrap_err();
        (refused.id, refused.error.code, refused.error.message)
    }

    #[test]
    fn requests_notifications_and_answers_are_told_apart() {
        let request = parse(br#"{"jsonrpc":"2.0","method":"listActions","id":"1"}"#).unwrap();
        assert!(
            matches!(&request, Incoming::Request { id, method, params: None } if id == "1" && method == "listActions")
        );
        let note = parse(br#"{"jsonrpc":"2.0","method":"configure","params":{}}"#).unwrap();
        assert!(matches!(note, Incoming::Notification { .. }));
        let answer = parse(br#"{"jsonrpc":"2.0","result":{"a":1},"id":"reg-1"}"#).unwrap();
        assert!(matches!(answer, Incoming::Response { outcome: Ok(_), .. }));
        let failed = parse(br#"{"jsonrpc":"2.0","error":{"code":1},"id":"reg-1"}"#).unwrap();
        assert!(matches!(
            failed,
            Incoming::Response {
                outcome: Err(_),
                ..
            }
        ));
    }

    #[test]
    fn malformed_messages_are_refused_with_their_id_when_it_can_be_read() {
        let (id, code, message) = refusal("{not json");
        assert_eq!((id, code), (Value::Null, PARSE_ERROR));
        assert!(message.starts_with("Parse error"), "{message}");
        assert_eq!(refusal("[1,2]").1, INVALID_REQUEST);
        assert_eq!(refusal("7").1, INVALID_REQUEST);
        assert_eq!(
            refusal(r#"{"method":"listActions","id":"9"}"#),
            (
                json!("9"),
                INVALID_REQUEST,
                r#"jsonrpc must be "2.0""#.to_owned()
            )
        );
        assert_eq!(
            refusal(r#"{"jsonrpc":"2.0","method":5,"id":3}"#).0,
            json!(3),
            "a numeric id is echoed as a number"
        );
        assert_eq!(refusal(r#"{"jsonrpc":"2.0","id":{"x":1}}"#).0, Value::Null);
        assert_eq!(
            refusal(r#"{"jsonrpc":"2.0","method":"runAction","params":"x","id":"1"}"#).1,
            INVALID_REQUEST
        );
        assert_eq!(refusal(r#"{"jsonrpc":"2.0","id":"1"}"#).1, INVALID_REQUEST);
    }

    #[test]
    fn the_id_of_an_oversized_message_is_read_alone() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","params":{{"input":"{}"}},"id":"42"}}"#,
            "x".repeat(10_000)
        );
        assert_eq!(id_of(big.as_bytes()), json!("42"));
        assert_eq!(id_of(b"{broken"), Value::Null);
        assert_eq!(id_of(br#"{"id":[1]}"#), Value::Null);
    }

    #[test]
    fn params_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            key: String,
        }
        let err = params::<P>("runAction", Some(json!({"key": 5}))).unwrap_err();
        assert_eq!(err.code, INVALID_PARAMS);
        assert!(err.message.contains("at key"), "{}", err.message);
        let err = params::<P>("runAction", None).unwrap_err();
        assert!(
            err.message.contains("missing field `key`"),
            "{}",
            err.message
        );
        let err = params::<P>("runAction", Some(json!([1]))).unwrap_err();
        assert!(err.message.contains("must be an object"), "{}", err.message);
        assert_eq!(err.data["code"], 3);
    }
}
