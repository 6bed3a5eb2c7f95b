//! Retries of a rule's requests (HTTPRoute `retry`), decided the same way for both engines;
//! each engine waits and sends again on its own terms (an HTTP/2 stream also stops waiting
//! when its client resets it).

use std::time::{Duration, Instant};

use crate::metrics::increment;
use crate::proxy::failure::Failure;
use crate::route::table::{AttemptOutcome, CompiledRule};
use crate::shard::Shard;

/// After an attempt that ended with `attempt` (`status` being the response head's status when
/// it is Ok): how long to wait before sending the request again, with `retries` (those made
/// so far) and the core's retry counter counting the new one. None when the rule does not
/// retry it (a broken response or a client gone never is), the request is not held whole
/// (`replayable`), its attempts are spent, or the request's `deadline` would pass first.
pub fn wait_before_retry<T>(
    shard: &Shard,
    rule: &CompiledRule,
    replayable: bool,
    (attempt, status): (&Result<T, Failure>, u16),
    retries: &mut u32,
    deadline: Option<Instant>,
) -> Option<Duration> {
    let policy = rule.retry.as_deref().filter(|_| replayable)?;
    let outcome = match attempt {
        Ok(_) => AttemptOutcome::Responded(status),
        Err(Failure::Unanswered(_)) => AttemptOutcome::Unanswered,
        Err(Failure::Status(_) | Failure::ClientGone) => return None,
    };
    let wait = policy.wait_before(outcome, *retries + 1, deadline)?;
    *retries += 1;
    increment(&shard.counters.retries);
    Some(wait)
}
