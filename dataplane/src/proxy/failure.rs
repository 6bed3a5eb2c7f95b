//! Why an exchange with a backend ended before a response head reached the client, for both
//! engines.

pub enum Failure {
    /// Answer with this status.
    Status(u16),
    /// The backend gave no response (the connect failed, the connection reset or closed
    /// before a response head, the backend timeout passed): retried when the rule says so
    /// (see [`super::retry`]), else answered with this status.
    Unanswered(u16),
    /// The client went away (closed its connection or reset its stream): nothing to answer.
    ClientGone,
}
