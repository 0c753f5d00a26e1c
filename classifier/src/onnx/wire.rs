//! Just enough of the protobuf wire format to copy a message field by field.
//!
//! Protobuf messages are sequences of `(tag, value)` fields, and a repeated field may be
//! spread over the message: appending encoded fields to a message's bytes adds elements. So a
//! model can be extended without decoding (and re-encoding) the megabytes of weights it holds.

use crate::error::{ClassifierError, Result};

pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const FIXED32: u8 = 5;

/// One field of a message, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    pub(crate) number: u32,
    pub(crate) wire_type: u8,
    /// The whole field: tag and value, to copy as is.
    pub(crate) raw: &'a [u8],
    /// For length-delimited fields, the content; otherwise the value's bytes.
    pub(crate) payload: &'a [u8],
}

fn read_varint(bytes: &[u8], pos: &mut usize, at: &str) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*pos) else {
            return Err(ClassifierError::onnx("truncated varint", format!("{at}, byte {}", *pos)));
        };
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ClassifierError::onnx("varint longer than 10 bytes", format!("{at}, byte {}", *pos)))
}

/// Splits a message into its fields; `at` names the message in errors.
pub(crate) fn fields<'a>(bytes: &'a [u8], at: &str) -> Result<Vec<Field<'a>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let tag = read_varint(bytes, &mut pos, at)?;
        let (number, wire_type) = ((tag >> 3) as u32, (tag & 7) as u8);
        if number == 0 {
            return Err(ClassifierError::onnx("field number 0", format!("{at}, byte {start}")));
        }
        let value_start = pos;
        let (payload_start, end) = match wire_type {
            VARINT => {
                read_varint(bytes, &mut pos, at)?;
                (value_start, pos)
            }
            FIXED64 => (value_start, value_start + 8),
            FIXED32 => (value_start, value_start + 4),
            LEN => {
                let len = read_varint(bytes, &mut pos, at)?;
                let end = usize::try_from(len).ok().and_then(|len| pos.checked_add(len));
                (pos, end.unwrap_or(usize::MAX))
            }
            other => {
                return Err(ClassifierError::onnx(
                    format!("wire type {other} of field {number} (groups are not used by ONNX)"),
                    format!("{at}, byte {start}"),
                ));
            }
        };
        if end > bytes.len() {
            return Err(ClassifierError::onnx(
                format!("field {number} runs past the end ({end} > {} bytes)", bytes.len()),
                format!("{at}, byte {start}"),
            ));
        }
        out.push(Field { number, wire_type, raw: &bytes[start..end], payload: &bytes[payload_start..end] });
        pos = end;
    }
    Ok(out)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-delimited field.
pub(crate) fn put_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | u64::from(LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_rebuilds() {
        let mut msg = Vec::new();
        put_varint(&mut msg, 1 << 3); // field 1, varint
        put_varint(&mut msg, 300);
        put_len_field(&mut msg, 7, b"graph bytes");
        msg.extend_from_slice(&[(3 << 3) | 5, 1, 2, 3, 4]); // field 3, fixed32
        let f = fields(&msg, "test").unwrap();
        assert_eq!(f.iter().map(|f| (f.number, f.wire_type)).collect::<Vec<_>>(), [(1, 0), (7, 2), (3, 5)]);
        assert_eq!(f[1].payload, b"graph bytes");
        assert_eq!(f.iter().flat_map(|f| f.raw.iter().copied()).collect::<Vec<_>>(), msg);
        let truncated = &msg[..msg.len() - 2];
        let err = fields(truncated, "test").unwrap_err().to_string();
        assert!(err.contains("runs past the end"), "{err}");
        assert!(fields(&[0x0b], "test").unwrap_err().to_string().contains("wire type 3"));
    }
}
