//! Times the phases of a config swap for one config file, without sockets or cores: encoding
//! the frame (what the agent does), reading it back (checksum and JSON decode), validating and
//! building the routing snapshot, and freeing it. A profiling aid for the `swap_ms_*` bench
//! metrics; run it under `perf record` to see where a phase goes.
//!
//! ```text
//! cargo run --release -p portcullis-dataplane --example swap_phases -- CONFIG.json [ROUNDS]
//! ```
//!
//! With `BUILD_ONLY=1` it only builds and frees the snapshot ROUNDS times, so a profile of
//! the run is mostly the table build.

use std::time::{Duration, Instant};

use portcullis_api::frame;
use portcullis_dataplane::route::Snapshot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: swap_phases CONFIG.json [ROUNDS]")?;
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let config = frame::decode_json(&std::fs::read(&path)?)?;
    if std::env::var_os("BUILD_ONLY").is_some() {
        for _ in 0..rounds {
            drop(Snapshot::build(&config)?);
        }
        return Ok(());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("encode_ms read_frame_ms build_ms free_snapshot_ms free_config_ms frame_bytes");
    for _ in 0..rounds {
        let started = Instant::now();
        let encoded = frame::encode(&config)?;
        let encode = started.elapsed();

        let started = Instant::now();
        let decoded = frame::decode(&encoded)?;
        let read = started.elapsed();

        let started = Instant::now();
        let snapshot = Snapshot::build(&decoded)?;
        let build = started.elapsed();

        let started = Instant::now();
        drop(snapshot);
        let free_snapshot = started.elapsed();
        let started = Instant::now();
        drop(decoded);
        let free_config = started.elapsed();
        println!(
            "{:9.1} {:13.1} {:8.1} {:16.1} {:14.1} {}",
            ms(encode),
            ms(read),
            ms(build),
            ms(free_snapshot),
            ms(free_config),
            encoded.len()
        );
    }
    Ok(())
}
