//! Retries of a rule's requests (HTTPRoute `retry`), decided the same way for both engines;
//! each engine waits and sends again on its own terms (an HTTP/2 stream also stops waiting
//! when its client resets it).

use std::time::{Duration, Instant};

use crate::metrics::increment;
use crate::route::table::CompiledRule;
use crate::shard::Shard;

/// After a response with `status`: how long to wait before sending the request again, with
/// `retries` (those made so far) and the core's retry counter counting the new one. None
/// when the rule does not retry it, the request is not held whole (`replayable`), its
/// attempts are spent, or the request's `deadline` would pass first.
pub fn wait_before_retry(
    shard: &Shard,
    rule: &CompiledRule,
    replayable: bool,
    status: u16,
    retries: &mut u32,
    deadline: Option<Instant>,
) -> Option<Duration> {
    let policy = rule.retry.as_deref().filter(|_| replayable)?;
    let wait = policy.wait_before(status, *retries + 1, deadline)?;
    *retries += 1;
    increment(&shard.counters.retries);
    Some(wait)
}
