//! A JSON array read record by record, where one bad record is counted instead of failing
//! the whole file: a 150k-record download with one mistyped field should still train.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// One array element: the parsed record, or the reason it did not parse plus its `id`
/// field when it had one (so a report can point at it).
#[derive(Debug)]
pub enum Item<T> {
    Ok(T),
    Bad { id: String, error: String },
}

/// A sequence parsed element by element: each element goes through a transient
/// `serde_json::Value`, so the whole file is never held as a tree.
#[derive(Debug)]
pub struct Lenient<T>(pub Vec<Item<T>>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                let mut index = 0usize;
                while let Some(v) = seq.next_element::<serde_json::Value>()? {
                    let id = record_id(&v).unwrap_or_else(|| format!("#{index}"));
                    out.push(match T::deserialize(v) {
                        Ok(t) => Item::Ok(t),
                        Err(e) => Item::Bad {
                            id,
                            error: e.to_string(),
                        },
                    });
                    index += 1;
                }
                Ok(Lenient(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// The `id` of a record, string or number, as text.
pub fn record_id(v: &serde_json::Value) -> Option<String> {
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id that may be written as a string or a number (Instruct150K uses strings, other
/// LLaVA-format files numbers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlexId(pub String);

impl<'de> Deserialize<'de> for FlexId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            I(i64),
        }
        Ok(FlexId(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::U(u) => u.to_string(),
            Raw::I(i) => i.to_string(),
        }))
    }
}
