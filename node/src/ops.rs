//! The text form of operations used by `dtx txn`: `write KEY VALUE`, `update KEY VALUE`,
//! `delete KEY`, `read KEY`, `read-for-update KEY`, `call TARGET ACTION JSON`.

use dtx_protocol::{Key, Operation, Value};

/// Why an operation's text does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad operation {text:?}: expected 'write KEY VALUE', 'update KEY VALUE', 'delete KEY', 'read KEY', 'read-for-update KEY' or 'call TARGET ACTION JSON'")]
pub struct ParseOperationError {
    /// The text given.
    pub text: String,
}

/// Parses one operation; the value is the rest of the text after the key.
pub fn parse_operation(text: &str) -> Result<Operation, ParseOperationError> {
    let error = || ParseOperationError {
        text: text.to_string(),
    };
    let mut words = text.trim().splitn(3, char::is_whitespace);
    let verb = words.next().unwrap_or_default();
    let key = words
        .next()
        .filter(|key| !key.is_empty())
        .ok_or_else(error)?;
    let value = words.next().map(str::trim);
    let key = Key::new(key);
    match (verb, value) {
        ("write" | "put", Some(value)) => Ok(Operation::Write {
            key,
            value: Value::new(value.as_bytes().to_vec()),
        }),
        ("update", Some(value)) => Ok(Operation::Update {
            key,
            value: Value::new(value.as_bytes().to_vec()),
        }),
        ("delete", None) => Ok(Operation::Delete { key }),
        ("read" | "get", None) => Ok(Operation::Read {
            key,
            expected: None,
        }),
        ("read-for-update", None) => Ok(Operation::ReadForUpdate { key }),
        ("call", Some(rest)) => {
            // The service's action, then its arguments: JSON, checked here so that a typo
            // fails before anything is sent (the service never sees text that is not JSON).
            let (action, args) = rest.split_once(char::is_whitespace).ok_or_else(error)?;
            let args: serde_json::Value = serde_json::from_str(args.trim()).map_err(|_| error())?;
            Ok(Operation::Call {
                target: key,
                action: action.to_string(),
                args: Value::new(args.to_string()),
            })
        }
        _ => Err(error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_and_bad_ones_are_named() {
        assert!(matches!(
            parse_operation("write a 1 2"),
            Ok(Operation::Write { value, .. }) if value.0 == b"1 2"
        ));
        assert!(matches!(
            parse_operation("read c"),
            Ok(Operation::Read { .. })
        ));
        assert!(matches!(
            parse_operation("read-for-update c"),
            Ok(Operation::ReadForUpdate { .. })
        ));
        assert!(parse_operation("read-for-update").is_err());
        assert!(matches!(
            parse_operation("delete d"),
            Ok(Operation::Delete { .. })
        ));
        assert!(parse_operation("update b").is_err());
        assert!(parse_operation("frobnicate x")
            .unwrap_err()
            .to_string()
            .contains("frobnicate"));
        assert!(parse_operation("").is_err());
        assert!(matches!(
            parse_operation(r#"call flights/LH400 reserve {"seats": 2}"#),
            Ok(Operation::Call { target, action, args })
                if target.as_str() == "flights/LH400" && action == "reserve"
                    && args.0 == br#"{"seats":2}"#
        ));
        assert!(parse_operation("call flights/LH400 reserve {seats").is_err());
        assert!(parse_operation("call flights/LH400 reserve").is_err());
    }
}
