//! Bodies that are JSON or bytes.
//!
//! A request body, a response and a stream item are JSON, or, with a peer
//! that announced the `binary` capability, bytes carried in a WebSocket
//! binary frame (`docs/PROTOCOL.md` 5.13; the layout is in [`crate::binary`]).
//! Which one a typed value travels as follows from its `Serialize`: a value
//! that serializes as bytes — [`Bytes`], `serde_bytes::ByteBuf` — goes as
//! bytes, anything else as JSON. A `Vec<u8>` serializes as a JSON array of
//! numbers; wrap it in [`Bytes`] (`Bytes::from(vec)`, no copy) to send it
//! as bytes.
//!
//! On the receiving side a binary body reads as the JSON array of its bytes
//! for any type that does not ask for bytes, so a peer sees the same value
//! whether the body came as bytes or, from a peer without the capability, as
//! that array: `Bytes` and `Vec<u8>` decode from either.

use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize, Serializer};
use serde_json::value::RawValue;

pub use bytes::Bytes;

/// A body as it arrived, or as it goes out: JSON text, or bytes.
///
/// ```
/// use agent_protocol::{Body, Bytes};
/// let bin = Body::encode(&Bytes::from_static(b"\x00\xff")).unwrap();
/// assert!(bin.is_binary());
/// assert_eq!(bin.decode::<Bytes>().unwrap(), Bytes::from_static(b"\x00\xff"));
/// // Read as anything else, bytes are the JSON array of their values.
/// assert_eq!(bin.decode::<Vec<u8>>().unwrap(), vec![0, 255]);
/// assert_eq!(bin.into_json().get(), "[0,255]");
///
/// let json = Body::encode(&serde_json::json!({"x": 1})).unwrap();
/// assert_eq!(json.as_json().map(|r| r.get()), Some(r#"{"x":1}"#));
/// ```
#[derive(Debug, Clone)]
pub enum Body {
    /// A JSON value, as text.
    Json(Box<RawValue>),
    /// Bytes, sent in a binary frame to a peer with the `binary`
    /// capability and as a JSON array of numbers to one without.
    Bytes(Bytes),
}

/// A borrowed [`Body`]: what a handler reads, straight from the message.
#[derive(Debug, Clone, Copy)]
pub enum BodyRef<'a> {
    /// A JSON value, as text.
    Json(&'a RawValue),
    /// Bytes.
    Bytes(&'a Bytes),
}

impl Body {
    /// Serializes `value`: as [`Body::Bytes`] when it serializes as bytes,
    /// as JSON otherwise.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Body, serde_json::Error> {
        let mut bytes = Vec::new();
        if append_bytes(value, &mut bytes) {
            return Ok(Body::Bytes(Bytes::from(bytes)));
        }
        serde_json::value::to_raw_value(value).map(Body::Json)
    }

    /// Deserializes the body as `T` (see the [module docs](self) for how
    /// bytes read as other types).
    pub fn decode<T: de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.as_ref().decode()
    }

    /// True for bytes.
    pub fn is_binary(&self) -> bool {
        matches!(self, Body::Bytes(_))
    }

    /// The JSON text, for a JSON body.
    pub fn as_json(&self) -> Option<&RawValue> {
        match self {
            Body::Json(raw) => Some(raw),
            Body::Bytes(_) => None,
        }
    }

    /// The bytes, for a binary body.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Body::Json(_) => None,
            Body::Bytes(bytes) => Some(bytes),
        }
    }

    /// The body as JSON: bytes become the array of their values.
    pub fn into_json(self) -> Box<RawValue> {
        match self {
            Body::Json(raw) => raw,
            Body::Bytes(bytes) => bytes_as_json(&bytes),
        }
    }

    /// A borrowed view.
    pub fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Json(raw) => BodyRef::Json(raw),
            Body::Bytes(bytes) => BodyRef::Bytes(bytes),
        }
    }

    /// JSON `null`.
    pub fn null() -> Body {
        Body::Json(crate::codec::null_body())
    }

    /// True for the JSON `null`: an empty result in a hook chain.
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Body::Json(raw) if raw.get() == "null")
    }
}

impl From<Box<RawValue>> for Body {
    fn from(raw: Box<RawValue>) -> Self {
        Body::Json(raw)
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Bytes(bytes)
    }
}

impl<'a> BodyRef<'a> {
    /// Deserializes the body as `T`.
    pub fn decode<T: de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        match self {
            BodyRef::Json(raw) => serde_json::from_str(raw.get()),
            BodyRef::Bytes(bytes) => T::deserialize(BinaryBody(bytes)),
        }
    }

    /// An owned copy (bytes are shared, not copied).
    pub fn to_body(self) -> Body {
        match self {
            BodyRef::Json(raw) => Body::Json(raw.to_owned()),
            BodyRef::Bytes(bytes) => Body::Bytes(bytes.clone()),
        }
    }
}

/// The JSON array of the values of `bytes`.
fn bytes_as_json(bytes: &[u8]) -> Box<RawValue> {
    let mut text = String::with_capacity(2 + bytes.len() * 4);
    text.push('[');
    let mut digits = itoa::Buffer::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(digits.format(*b));
    }
    text.push(']');
    // An array of numbers is valid JSON.
    RawValue::from_string(text).unwrap_or_else(|_| crate::codec::null_body())
}

/// True when `value` serializes as bytes and nothing else: it travels in a
/// binary frame to a peer that takes them. Cheap for any other value: the
/// check stops at the first call of its `Serialize`.
pub fn is_bytes<T: Serialize + ?Sized>(value: &T) -> bool {
    value.serialize(BytesProbe(None)).is_ok()
}

/// Appends the bytes `value` serializes as to `out`; false (and `out`
/// unchanged) when it does not serialize as bytes.
pub(crate) fn append_bytes<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> bool {
    value.serialize(BytesProbe(Some(out))).is_ok()
}

/// Not bytes: the probe's only error.
#[derive(Debug)]
struct NotBytes;

impl std::fmt::Display for NotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not bytes")
    }
}

impl std::error::Error for NotBytes {}

impl ser::Error for NotBytes {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        NotBytes
    }
}

/// A serializer that accepts bytes only, appending them where it is told.
struct BytesProbe<'a>(Option<&'a mut Vec<u8>>);

macro_rules! not_bytes {
    ($($name:ident($($arg:ty),*);)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<(), NotBytes> { Err(NotBytes) })*
    };
}

impl Serializer for BytesProbe<'_> {
    type Ok = ();
    type Error = NotBytes;
    type SerializeSeq = Impossible<(), NotBytes>;
    type SerializeTuple = Impossible<(), NotBytes>;
    type SerializeTupleStruct = Impossible<(), NotBytes>;
    type SerializeTupleVariant = Impossible<(), NotBytes>;
    type SerializeMap = Impossible<(), NotBytes>;
    type SerializeStruct = Impossible<(), NotBytes>;
    type SerializeStructVariant = Impossible<(), NotBytes>;

    fn serialize_bytes(self, v: &[u8]) -> Result<(), NotBytes> {
        if let Some(out) = self.0 {
            out.reserve_exact(v.len());
            out.extend_from_slice(v);
        }
        Ok(())
    }

    not_bytes! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), NotBytes> {
        Err(NotBytes)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotBytes> {
        Err(NotBytes)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotBytes> {
        Err(NotBytes)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotBytes> {
        Err(NotBytes)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotBytes> {
        Err(NotBytes)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, _: &T) -> Result<(), NotBytes> {
        Err(NotBytes)
    }
}

/// A binary body as a deserializer: bytes for a type that asks for them,
/// the JSON array of their values for any other.
struct BinaryBody<'a>(&'a Bytes);

impl<'a> BinaryBody<'a> {
    fn as_array(&self) -> serde_json::Value {
        serde_json::Value::Array(self.0.iter().map(|b| (*b).into()).collect())
    }
}

impl<'de> Deserializer<'de> for BinaryBody<'_> {
    type Error = serde_json::Error;

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_bytes(self.0)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_byte_buf(self.0.to_vec())
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // Straight from the bytes, without the detour through a JSON array.
        visitor.visit_seq(de::value::SeqDeserializer::new(
            self.0
                .iter()
                .copied()
                .map(IntoDeserializer::into_deserializer),
        ))
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.as_array().deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.as_array().deserialize_newtype_struct(name, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn only_values_that_serialize_as_bytes_are_bytes() {
        assert!(is_bytes(&Bytes::from_static(b"ab")));
        assert!(!is_bytes(&vec![1u8, 2]));
        assert!(!is_bytes("ab"));
        assert!(!is_bytes(&Some(Bytes::new())));
        assert!(!is_bytes(&serde_json::json!({"a": 1})));
        let raw = RawValue::from_string("[1]".into()).unwrap();
        assert!(!is_bytes(&raw));
        let mut out = b"head".to_vec();
        assert!(append_bytes(&Bytes::from_static(b"+tail"), &mut out));
        assert_eq!(out, b"head+tail");
        assert!(!append_bytes(&1u8, &mut out));
        assert_eq!(out, b"head+tail");
    }

    #[test]
    fn bytes_read_as_other_types_like_their_json_array() {
        let body = Body::Bytes(Bytes::from_static(&[1, 2, 250]));
        assert_eq!(body.decode::<Vec<u8>>().unwrap(), vec![1, 2, 250]);
        assert_eq!(
            body.decode::<serde_json::Value>().unwrap(),
            serde_json::json!([1, 2, 250])
        );
        assert_eq!(body.decode::<Option<Bytes>>().unwrap().unwrap().len(), 3);
        assert_eq!(body.decode::<Box<RawValue>>().unwrap().get(), "[1,2,250]");
        assert!(body.decode::<String>().is_err());
        #[derive(Deserialize, Debug, PartialEq)]
        struct Wrapped(Vec<u8>);
        assert_eq!(body.decode::<Wrapped>().unwrap(), Wrapped(vec![1, 2, 250]));
        // And JSON arrays read as bytes, as from a peer without `binary`.
        let json = Body::Json(RawValue::from_string("[1,2,250]".into()).unwrap());
        assert_eq!(json.decode::<Bytes>().unwrap().as_ref(), &[1, 2, 250]);
        assert_eq!(body.into_json().get(), "[1,2,250]");
        assert_eq!(Body::Bytes(Bytes::new()).into_json().get(), "[]");
    }
}
