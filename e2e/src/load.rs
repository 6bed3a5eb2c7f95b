//! Steady background traffic through a Gateway, counting every failure. Workers keep their
//! connections alive (a closing proxy says `connection: close`, and they reconnect), so a
//! failure is a request that got an error or a non-200: exactly what users would see.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::HttpClient;

/// What the workers saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    /// `(when, what went wrong)` for each failed request.
    pub failures: Vec<(Instant, String)>,
    /// `(when, backend label)` for each answered request.
    pub answers: Vec<(Instant, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
        self.answers.extend(other.answers);
    }

    pub fn total(&self) -> usize {
        self.ok + self.failures.len()
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        let first: Vec<&String> = self.failures.iter().take(5).map(|(_, f)| f).collect();
        format!(
            "{} requests, {} failed{}",
            self.total(),
            self.failures.len(),
            if first.is_empty() {
                String::new()
            } else {
                format!(" (first: {first:?})")
            }
        )
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `workers` threads each sending `GET path` with `host` to `address`, pausing `pause`
    /// between requests (the machine running the tests also runs the cluster).
    pub fn start(address: &str, host: &str, path: &str, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (address, host, path, stop) = (
                    address.to_string(),
                    host.to_string(),
                    path.to_string(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let mut client = HttpClient::new(&address);
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&host, &path) {
                            Ok(response) if response.status == 200 => {
                                tally.ok += 1;
                                let backend =
                                    response.echo().map(|e| e.backend).unwrap_or_default();
                                tally.answers.push((Instant::now(), backend));
                            }
                            Ok(response) => tally
                                .failures
                                .push((Instant::now(), format!("status {}", response.status))),
                            Err(error) => tally.failures.push((Instant::now(), error.to_string())),
                        }
                        std::thread::sleep(pause);
                    }
                    tally
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and returns what they saw.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in self.workers {
            if let Ok(tally) = worker.join() {
                total.merge(tally);
            }
        }
        total
    }
}
