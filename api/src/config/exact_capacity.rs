//! Lists decoded with no spare capacity for their usual length.
//!
//! A JSON array does not say how long it is, so serde starts every `Vec` at a capacity of
//! four. Most lists in a config hold one element (one rule per route, one match and one
//! backend per rule), so three quarters of each was allocated and never used: for a
//! 10 000-route config about 1 KB per route, more than half of what the decoded config
//! takes. Every config swap allocates, touches and later frees that memory.
//!
//! Use with `#[serde(deserialize_with = "exact_capacity::vec")]` (and `default` where the
//! field may be left out); serialization is unchanged, so is a config's content hash.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

/// Decodes a list whose capacity is its length when it holds none or one element; longer
/// lists grow as serde's own do.
pub fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(ExactVec(PhantomData))
}

/// The most a list reserves up front on the strength of a length hint (serde's own limit).
const MAX_PREALLOCATED_BYTES: usize = 1024 * 1024;

struct ExactVec<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ExactVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let Some(first) = seq.next_element()? else {
            return Ok(Vec::new());
        };
        let Some(second) = seq.next_element()? else {
            return Ok(vec![first]);
        };
        // A format that announces its length gets no more than serde's own cap on trust.
        let announced = seq
            .size_hint()
            .unwrap_or(0)
            .min(MAX_PREALLOCATED_BYTES / size_of::<T>().max(1));
        let mut list = Vec::with_capacity(announced.saturating_add(2).max(4));
        list.push(first);
        list.push(second);
        while let Some(element) = seq.next_element()? {
            list.push(element);
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "super::vec")]
        list: Vec<String>,
    }

    fn decode(json: &str) -> Vec<String> {
        match serde_json::from_str::<Holder>(json) {
            Ok(holder) => holder.list,
            Err(e) => panic!("{json}: {e}"),
        }
    }

    #[test]
    fn short_lists_have_no_spare_capacity_and_every_list_keeps_its_elements_in_order() {
        for (json, expected, capacity) in [
            (r#"{}"#, vec![], Some(0)),
            (r#"{"list": []}"#, vec![], Some(0)),
            (r#"{"list": ["a"]}"#, vec!["a"], Some(1)),
            (r#"{"list": ["a", "b"]}"#, vec!["a", "b"], None),
            (
                r#"{"list": ["a", "b", "c", "d", "e"]}"#,
                vec!["a", "b", "c", "d", "e"],
                None,
            ),
        ] {
            let list = decode(json);
            assert_eq!(list, expected, "{json}");
            if let Some(capacity) = capacity {
                assert_eq!(list.capacity(), capacity, "{json}");
            }
        }
    }

    #[test]
    fn what_is_not_a_list_is_refused() {
        for json in [
            r#"{"list": null}"#,
            r#"{"list": "a"}"#,
            r#"{"list": {"a": 1}}"#,
            r#"{"list": [1]}"#,
        ] {
            assert!(serde_json::from_str::<Holder>(json).is_err(), "{json}");
        }
    }
}
