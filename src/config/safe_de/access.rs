//! The visitor and the sequence, map and enum accesses that hand serde's
//! code our own error type on the way down, and track the key path.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use super::*;

/// A visitor run with [`Caught`] as its error type.
pub(super) struct Vis<'c, V> {
    pub(super) inner: V,
    pub(super) ctx: &'c Ctx,
    pub(super) path: String,
    pub(super) role: Role,
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
