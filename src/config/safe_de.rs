//! Deserialising the route file without ever repeating what it says.
//!
//! `serde` builds its error messages from the input: `invalid type: string
//! "wbhsec_…", expected a sequence`, `unknown field `wbhsec_…``, `invalid value:
//! integer `-1``. A secret written in the wrong place would be printed by
//! `check`, at start and in the SIGHUP log. Patching those messages after the
//! fact (finding the quoted part in a finished string) is fragile: a value may
//! itself contain quotes or backticks.
//!
//! So the messages are never built from the input in the first place. [`Wrap`]
//! sits between the `Raw*` types and the TOML deserializer (in the manner of
//! `serde_path_to_error`) and hands every visitor, sequence, map and enum access
//! an error type of our own, [`Caught`]. Whatever the derived and built-in
//! `Deserialize` code reports arrives through the structured constructors of
//! [`serde::de::Error`] and is kept as a [`Fault`], which holds only:
//!
//! - the *kind* of value found (`a string`, `an integer`: never the value),
//! - what was expected, which comes from our own types' `expecting` text,
//! - the schema's own static key and variant names (`&'static [&'static str]`),
//! - counts.
//!
//! The unknown key itself, the unknown variant itself and the free text of
//! [`serde::de::Error::custom`] (which any `Deserialize` impl may fill with its
//! input) are dropped. The fault is turned into the TOML error's message at the
//! innermost layer, so the TOML deserializer still attaches the span (hence the
//! line) of the offending key or value; the key path (`route[0].secrets[1]`) is
//! tracked on the way down, from the schema's static field names and array
//! indices only. [`Ctx`] remembers the last message it produced so the caller can
//! tell these messages from ones the TOML layer made itself (syntax errors),
//! which are handled separately, from an allow-list (see `syntax_problem`).

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, Expected, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

/// What went wrong in deserialising one value, without the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A value of the wrong TOML type.
    Type {
        found: &'static str,
        expected: String,
    },
    /// The right type, but not an acceptable value (e.g. a negative count).
    Value {
        found: &'static str,
        expected: String,
    },
    /// A list of the wrong length.
    Length {
        len: usize,
        expected: String,
    },
    /// A key the table does not have; `allowed` is the schema's list.
    UnknownKey {
        allowed: &'static [&'static str],
    },
    /// A word that is not one of an enum's variants.
    UnknownVariant {
        allowed: &'static [&'static str],
    },
    MissingKey(&'static str),
    DuplicateKey(&'static str),
    /// [`serde::de::Error::custom`]: free text that may quote the input, dropped.
    Other,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Type { found, expected } => write!(f, "expected {expected}, found {found}"),
            Fault::Value { found, expected } => {
                write!(f, "invalid value: expected {expected}, found {found}")
            }
            Fault::Length { len, expected } => {
                write!(
                    f,
                    "expected {expected}, found {len} element{}",
                    if *len == 1 { "" } else { "s" }
                )
            }
            Fault::UnknownKey { allowed: [] } => {
                f.write_str("unknown key (not repeated here: it may be a misplaced secret); this table takes no keys")
            }
            Fault::UnknownKey { allowed } => {
                f.write_str("unknown key (not repeated here: it may be a misplaced secret); the keys allowed here are ")?;
                write_names(f, allowed)
            }
            Fault::UnknownVariant { allowed } => {
                f.write_str("not an allowed value (not repeated here); write one of ")?;
                write_names(f, allowed)
            }
            Fault::MissingKey(key) => write!(f, "the key `{key}` is required here"),
            Fault::DuplicateKey(key) => write!(f, "the key `{key}` is set twice"),
            Fault::Other => f.write_str("invalid value (not repeated here)"),
        }
    }
}

fn write_names(f: &mut fmt::Formatter<'_>, names: &[&str]) -> fmt::Result {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "`{n}`")?;
    }
    Ok(())
}

/// The kind of an unexpected value; never its content.
fn kind(u: &Unexpected<'_>) -> &'static str {
    match u {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a floating-point number",
        Unexpected::Char(_) => "a character",
        Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "an empty value",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct => "a newtype value",
        Unexpected::Seq => "a list",
        // A TOML date-time arrives as a map too.
        Unexpected::Map => "a table (or a date-time)",
        Unexpected::Enum
        | Unexpected::UnitVariant
        | Unexpected::NewtypeVariant
        | Unexpected::TupleVariant
        | Unexpected::StructVariant => "an enum variant",
        Unexpected::Other(_) => "a value of another kind",
    }
}

/// What was expected, from our own types' `expecting` text, in TOML words.
fn expected(exp: &dyn Expected) -> String {
    let text = exp.to_string();
    if text.starts_with("struct ") {
        return "a table".into();
    }
    match text.as_str() {
        "a sequence" => "a list".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        _ => text,
    }
}

/// The error type handed to every visitor under [`Wrap`]: either an error that
/// came up from the TOML layer (already safe: made below us), or a [`Fault`].
#[derive(Debug)]
pub(crate) enum Caught<E> {
    Outer(E),
    Fault(Fault),
}

impl<E: fmt::Display> fmt::Display for Caught<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caught::Outer(e) => e.fmt(f),
            Caught::Fault(fault) => fault.fmt(f),
        }
    }
}

impl<E: de::Error> std::error::Error for Caught<E> {}

impl<E: de::Error> de::Error for Caught<E> {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Caught::Fault(Fault::Other)
    }
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Caught::Fault(Fault::Type {
            found: kind(&unexp),
            expected: expected(exp),
        })
    }
    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        let found = match unexp {
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => "an integer out of range",
            other => kind(&other),
        };
        Caught::Fault(Fault::Value {
            found,
            expected: expected(exp),
        })
    }
    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Caught::Fault(Fault::Length {
            len,
            expected: expected(exp),
        })
    }
    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        Caught::Fault(Fault::UnknownVariant { allowed: expected })
    }
    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        Caught::Fault(Fault::UnknownKey { allowed: expected })
    }
    fn missing_field(field: &'static str) -> Self {
        Caught::Fault(Fault::MissingKey(field))
    }
    fn duplicate_field(field: &'static str) -> Self {
        Caught::Fault(Fault::DuplicateKey(field))
    }
}

/// Shared by every layer of one deserialisation.
#[derive(Default)]
pub(crate) struct Ctx {
    /// The last fault turned into a message: its key path and the message.
    last: RefCell<Option<(String, String)>>,
    /// The schema name of the key just read (`None`: not a schema key).
    key: Cell<Option<&'static str>>,
}

impl Ctx {
    /// Turns a caught error into the outer error type: a fault becomes a
    /// message of our own (remembered with `path`), the TOML layer attaching
    /// the span as it unwinds.
    fn raise<E: de::Error>(&self, path: &str, caught: Caught<E>) -> E {
        match caught {
            Caught::Outer(e) => e,
            Caught::Fault(fault) => {
                let message = fault.to_string();
                *self.last.borrow_mut() = Some((path.to_string(), message.clone()));
                E::custom(message)
            }
        }
    }

    /// The key path of `message` if this module wrote it (and so it quotes
    /// nothing from the file); `None` for a message made by the TOML layer.
    pub(crate) fn path_of(&self, message: &str) -> Option<String> {
        match &*self.last.borrow() {
            Some((path, m)) if m == message => Some(path.clone()),
            _ => None,
        }
    }
}

/// How the value under a [`Wrap`] is used.
#[derive(Clone, Copy)]
enum Role {
    Value,
    /// A struct, with the schema's field names.
    Struct(&'static [&'static str]),
    /// A table key; the field names of its struct, if it is one.
    Key(Option<&'static [&'static str]>),
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A deserializer whose visitors report [`Fault`]s instead of messages quoting
/// the input.
pub(crate) struct Wrap<'c, D> {
    de: D,
    ctx: &'c Ctx,
    path: String,
    role: Role,
}

impl<'c, D> Wrap<'c, D> {
    pub(crate) fn new(de: D, ctx: &'c Ctx) -> Self {
        Wrap {
            de,
            ctx,
            path: String::new(),
            role: Role::Value,
        }
    }

    fn split<V>(self, visitor: V) -> (D, Vis<'c, V>) {
        let vis = Vis {
            inner: visitor,
            ctx: self.ctx,
            path: self.path,
            role: self.role,
        };
        (self.de, vis)
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let (de, vis) = self.split(visitor);
            de.$method(vis)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Wrap<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, vis) = self.split(visitor);
        de.deserialize_unit_struct(name, vis)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, vis) = self.split(visitor);
        de.deserialize_newtype_struct(name, vis)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, vis) = self.split(visitor);
        de.deserialize_tuple(len, vis)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, vis) = self.split(visitor);
        de.deserialize_tuple_struct(name, len, vis)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, mut vis) = self.split(visitor);
        vis.role = Role::Struct(fields);
        de.deserialize_struct(name, fields, vis)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let (de, vis) = self.split(visitor);
        de.deserialize_enum(name, variants, vis)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor run with [`Caught`] as its error type.
struct Vis<'c, V> {
    inner: V,
    ctx: &'c Ctx,
    path: String,
    role: Role,
}

impl<V> Vis<'_, V> {
    /// Before a key reaches its field visitor: remember its schema name, if any.
    fn note_key(&self, key: &str) {
        if let Role::Key(fields) = self.role {
            let name = fields.and_then(|f| f.iter().copied().find(|n| *n == key));
            self.ctx.key.set(name);
        }
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            let Vis { inner, ctx, path, .. } = self;
            inner.$method::<Caught<E>>(v).map_err(|c| ctx.raise(&path, c))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.note_key(v);
        let Vis {
            inner, ctx, path, ..
        } = self;
        inner
            .visit_str::<Caught<E>>(v)
            .map_err(|c| ctx.raise(&path, c))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.note_key(v);
        let Vis {
            inner, ctx, path, ..
        } = self;
        inner
            .visit_borrowed_str::<Caught<E>>(v)
            .map_err(|c| ctx.raise(&path, c))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.note_key(&v);
        let Vis {
            inner, ctx, path, ..
        } = self;
        inner
            .visit_string::<Caught<E>>(v)
            .map_err(|c| ctx.raise(&path, c))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        let Vis {
            inner, ctx, path, ..
        } = self;
        inner
            .visit_none::<Caught<E>>()
            .map_err(|c| ctx.raise(&path, c))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        let Vis {
            inner, ctx, path, ..
        } = self;
        inner
            .visit_unit::<Caught<E>>()
            .map_err(|c| ctx.raise(&path, c))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Wrap {
            de: d,
            ctx: self.ctx,
            path: self.path,
            role: Role::Value,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Wrap {
            de: d,
            ctx: self.ctx,
            path: self.path,
            role: Role::Value,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let Vis {
            inner, ctx, path, ..
        } = self;
        let access = WrapSeq {
            seq,
            ctx,
            path: path.clone(),
            index: 0,
        };
        inner.visit_seq(access).map_err(|c| ctx.raise(&path, c))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let Vis {
            inner,
            ctx,
            path,
            role,
        } = self;
        let fields = match role {
            Role::Struct(fields) => Some(fields),
            _ => None,
        };
        let access = WrapMap {
            map,
            ctx,
            path: path.clone(),
            fields,
            key: None,
        };
        inner.visit_map(access).map_err(|c| ctx.raise(&path, c))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let Vis {
            inner, ctx, path, ..
        } = self;
        let access = WrapEnum {
            data,
            ctx,
            path: path.clone(),
        };
        inner.visit_enum(access).map_err(|c| ctx.raise(&path, c))
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<'c, T> {
    inner: T,
    ctx: &'c Ctx,
    path: String,
    role: Role,
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Wrap {
            de: d,
            ctx: self.ctx,
            path: self.path,
            role: self.role,
        })
    }
}

struct WrapSeq<'c, A> {
    seq: A,
    ctx: &'c Ctx,
    path: String,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for WrapSeq<'_, A> {
    type Error = Caught<A::Error>;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        self.seq
            .next_element_seed(Seed {
                inner: seed,
                ctx: self.ctx,
                path,
                role: Role::Value,
            })
            .map_err(Caught::Outer)
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct WrapMap<'c, A> {
    map: A,
    ctx: &'c Ctx,
    /// The table's own path.
    path: String,
    /// The struct's field names, if the table is a struct.
    fields: Option<&'static [&'static str]>,
    /// The schema name of the current key.
    key: Option<&'static str>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WrapMap<'_, A> {
    type Error = Caught<A::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.ctx.key.set(None);
        let key = self
            .map
            .next_key_seed(Seed {
                inner: seed,
                ctx: self.ctx,
                // An unknown key is reported at the table's path.
                path: self.path.clone(),
                role: Role::Key(self.fields),
            })
            .map_err(Caught::Outer);
        self.key = self.ctx.key.take();
        key
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        // Only a schema name goes into the path, never a key from the file.
        let path = join(&self.path, self.key.unwrap_or("(key)"));
        self.map
            .next_value_seed(Seed {
                inner: seed,
                ctx: self.ctx,
                path,
                role: Role::Value,
            })
            .map_err(Caught::Outer)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct WrapEnum<'c, A> {
    data: A,
    ctx: &'c Ctx,
    path: String,
}

impl<'de, 'c, A: EnumAccess<'de>> EnumAccess<'de> for WrapEnum<'c, A> {
    type Error = Caught<A::Error>;
    type Variant = WrapVariant<'c, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let (value, variant) = self
            .data
            .variant_seed(Seed {
                inner: seed,
                ctx: self.ctx,
                path: self.path.clone(),
                role: Role::Value,
            })
            .map_err(Caught::Outer)?;
        Ok((
            value,
            WrapVariant {
                variant,
                ctx: self.ctx,
                path: self.path,
            },
        ))
    }
}

struct WrapVariant<'c, A> {
    variant: A,
    ctx: &'c Ctx,
    path: String,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for WrapVariant<'_, A> {
    type Error = Caught<A::Error>;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.variant.unit_variant().map_err(Caught::Outer)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.variant
            .newtype_variant_seed(Seed {
                inner: seed,
                ctx: self.ctx,
                path: self.path,
                role: Role::Value,
            })
            .map_err(Caught::Outer)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let vis = Vis {
            inner: visitor,
            ctx: self.ctx,
            path: self.path,
            role: Role::Value,
        };
        self.variant.tuple_variant(len, vis).map_err(Caught::Outer)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let vis = Vis {
            inner: visitor,
            ctx: self.ctx,
            path: self.path,
            role: Role::Struct(fields),
        };
        self.variant
            .struct_variant(fields, vis)
            .map_err(Caught::Outer)
    }
}
