//! The text form of operations used by `dtx txn`: `write KEY VALUE`, `update KEY VALUE`,
//! `delete KEY`, `read KEY`.

use dtx_protocol::{Key, Operation, Value};

/// Why an operation's text does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad operation {text:?}: expected 'write KEY VALUE', 'update KEY VALUE', 'delete KEY' or 'read KEY'")]
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
            parse_operation("delete d"),
            Ok(Operation::Delete { .. })
        ));
        assert!(parse_operation("update b").is_err());
        assert!(parse_operation("frobnicate x")
            .unwrap_err()
            .to_string()
            .contains("frobnicate"));
        assert!(parse_operation("").is_err());
    }
}
