//! Avro in the Confluent wire format, for the validate stage (requests) and the reply's
//! checks and encoding: byte 0 is 0, bytes 1-4 the schema id (big-endian), then the Avro
//! binary body. Pure: the schema comes from [`super::registry`].

use apache_avro::types::Value;

use super::registry::AvroSchema;

pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroError {
    #[error("not in the Confluent wire format: it must start with byte 0 and a 4-byte schema id")]
    NotWireFormat,
    #[error("the body does not decode with schema {id}: {error}")]
    Decode { id: u32, error: String },
    #[error("{0} bytes follow the record that schema {1} decodes")]
    Trailing(usize, u32),
    #[error("the record has no JSON form: {0}")]
    NotJson(String),
    #[error("the JSON does not fit schema {id}: {error}")]
    Encode { id: u32, error: String },
}

/// The schema id of a message in the wire format.
pub fn schema_id(payload: &[u8]) -> Result<u32, AvroError> {
    match payload {
        [MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(AvroError::NotWireFormat),
    }
}

/// Decodes the record that follows the wire-format header; all bytes must belong to it.
pub fn decode(schema: &AvroSchema, payload: &[u8]) -> Result<Value, AvroError> {
    let mut body = payload.get(HEADER_LEN..).ok_or(AvroError::NotWireFormat)?;
    let value =
        apache_avro::from_avro_datum_schemata(&schema.schema, schema.schemata(), &mut body, None)
            .map_err(|e| AvroError::Decode {
            id: schema.id,
            error: e.to_string(),
        })?;
    if !body.is_empty() {
        return Err(AvroError::Trailing(body.len(), schema.id));
    }
    Ok(value)
}

/// A decoded record as plain JSON, as a REST service expects it: records and maps become
/// objects, unions their value (no `{"type": value}` wrapper), enums their symbol, bytes and
/// fixed arrays of numbers.
pub fn to_json(value: Value) -> Result<Vec<u8>, AvroError> {
    let json = serde_json::Value::try_from(value).map_err(|e| AvroError::NotJson(e.to_string()))?;
    serde_json::to_vec(&json).map_err(|e| AvroError::NotJson(e.to_string()))
}

/// Plain JSON (as [`to_json`] writes it) encoded with `schema`, in the wire format.
pub fn encode(schema: &AvroSchema, json: &[u8]) -> Result<Vec<u8>, AvroError> {
    let encode_error = |error: String| AvroError::Encode {
        id: schema.id,
        error,
    };
    let json: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| encode_error(format!("not JSON: {e}")))?;
    let value = apache_avro::to_value(json).map_err(|e| encode_error(e.to_string()))?;
    let value = value
        .resolve_schemata(&schema.schema, schema.schemata())
        .map_err(|e| encode_error(e.to_string()))?;
    let body = apache_avro::to_avro_datum_schemata(&schema.schema, schema.schemata(), value)
        .map_err(|e| encode_error(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema.id.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    fn order(id: u32) -> AvroSchema {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Order", "fields": [
                {"name": "id", "type": "string"},
                {"name": "qty", "type": "int"},
                {"name": "note", "type": ["null", "string"], "default": null}
            ]}"#,
        )
        .unwrap();
        AvroSchema {
            id,
            schema,
            references: Vec::new(),
        }
    }

    #[test]
    fn the_wire_format_header_carries_the_schema_id() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Ok(258));
        assert_eq!(schema_id(&[1, 0, 0, 1, 2]), Err(AvroError::NotWireFormat));
        assert_eq!(schema_id(&[0, 0, 1]), Err(AvroError::NotWireFormat));
        assert_eq!(schema_id(b"{\"id\": 1}"), Err(AvroError::NotWireFormat));
    }

    #[test]
    fn json_round_trips_through_the_wire_format() {
        let schema = order(7);
        let wire = encode(&schema, br#"{"id": "a-1", "qty": 3, "note": "gift"}"#).unwrap();
        // Header, then Avro: string "a-1" (zigzag length 3 = 6), int 3 (= 6), union branch 1.
        assert_eq!(&wire[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&wire[5..10], &[6, b'a', b'-', b'1', 6]);
        let json: serde_json::Value =
            serde_json::from_slice(&to_json(decode(&schema, &wire).unwrap()).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "a-1", "qty": 3, "note": "gift"})
        );
    }

    #[test]
    fn bodies_that_do_not_fit_are_refused() {
        let schema = order(7);
        // A string length that runs past the end.
        assert!(matches!(
            decode(&schema, &[0, 0, 0, 0, 7, 40, b'a']),
            Err(AvroError::Decode { id: 7, .. })
        ));
        let mut wire = encode(&schema, br#"{"id": "a", "qty": 1}"#).unwrap();
        wire.push(0);
        assert_eq!(decode(&schema, &wire), Err(AvroError::Trailing(1, 7)));
        assert!(matches!(
            encode(&schema, br#"{"id": "a", "qty": "many"}"#),
            Err(AvroError::Encode { id: 7, .. })
        ));
        assert!(matches!(
            encode(&schema, b"not json"),
            Err(AvroError::Encode { .. })
        ));
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;
    use apache_avro::Schema;

    #[test]
    fn named_types_of_references_resolve() {
        let address = r#"{"type": "record", "name": "Address", "namespace": "acme", "fields": [{"name": "city", "type": "string"}]}"#;
        let order = r#"{"type": "record", "name": "Order", "namespace": "acme", "fields": [{"name": "id", "type": "string"}, {"name": "ship_to", "type": "acme.Address"}]}"#;
        let (schema, references) = Schema::parse_str_with_list(order, [address]).unwrap();
        let schema = AvroSchema {
            id: 3,
            schema,
            references,
        };
        let wire = encode(&schema, br#"{"id": "o", "ship_to": {"city": "Oslo"}}"#).unwrap();
        let json = to_json(decode(&schema, &wire).unwrap()).unwrap();
        assert_eq!(json, br#"{"id":"o","ship_to":{"city":"Oslo"}}"#);
    }
}
