//! What a deserialisation error keeps of the input: kinds, expectations and
//! the schema's own names, never a value.

use std::fmt;

use serde::de::{self, Expected, Unexpected};

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

/// The error type handed to every visitor under the `Wrap*` adapters: either an error that
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
