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
//! [`serde::de::Error`] and is kept as a [`Fault`](fault::Fault), which holds only:
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

mod access;
mod fault;

use std::cell::{Cell, RefCell};

use serde::de::{self, Deserializer, Visitor};

use access::Vis;
use fault::Caught;

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

/// A deserializer whose visitors report [`Fault`](fault::Fault)s instead of messages quoting
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
