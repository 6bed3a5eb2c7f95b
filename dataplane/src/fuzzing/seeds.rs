//! Seed inputs, saved crash inputs (regressions) and the seed corpus written for cargo-fuzz.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_api::CompiledConfig;
use portcullis_api::frame::{self, HEADER_BYTES};

use super::TARGETS;
use super::connection::connection_config;
use super::route_match::ROUTES_CONFIG;

fn dataplane_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where crash inputs of `target` are kept (replayed by the tests).
pub fn regressions_dir(target: &str) -> PathBuf {
    dataplane_dir().join("fuzz/regressions").join(target)
}

/// Hand-written seeds of `target`.
pub fn hand_seeds_dir(target: &str) -> PathBuf {
    dataplane_dir().join("fuzz/seeds").join(target)
}

/// The hostile HTTP/1.1 corpus: YAML files whose entries carry a `raw` request stream.
pub fn hostile_corpus_dir() -> PathBuf {
    dataplane_dir().join("tests/hostile/corpus")
}

/// The files in `dir` (not recursing), sorted; none if it does not exist.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && n != "README.md")
        })
        .collect();
    files.sort();
    files
}

fn read_all(dir: &Path) -> Vec<Vec<u8>> {
    files_in(dir)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Every `raw` value of the hostile corpus, as bytes (tolerates a missing directory).
///
/// Panics on a corpus file that is not a sequence of cases with a `raw` string: the hostile
/// test suite refuses such a file too, and silently losing its seeds would go unnoticed.
pub fn hostile_raws() -> Vec<Vec<u8>> {
    files_in(&hostile_corpus_dir())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter_map(|p| Some((p, std::fs::read_to_string(p).ok()?)))
        .flat_map(|(path, text)| {
            yaml_raws(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// The seed inputs of `target`, hand-written and generated.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let hand = read_all(&hand_seeds_dir(target));
    let mut seeds = Vec::new();
    match target {
        "request_head" | "route_match" => {
            seeds.extend(hand);
            seeds.extend(hostile_raws());
        }
        "client_hello" => {
            seeds.extend(hand);
            seeds.extend(super::rustls_hellos());
            // Plain HTTP on a TLS port.
            seeds.extend(hostile_raws().into_iter().take(8));
        }
        "chunked" => {
            seeds.extend(hand);
            for raw in hostile_raws() {
                if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let body = &raw[at + 4..];
                    if !body.is_empty() {
                        seeds.push(body.to_vec());
                    }
                }
            }
        }
        "connection" => {
            // Hand-written files are client streams without the two control bytes.
            for stream in hand.into_iter().chain(hostile_raws()) {
                for (flags, split) in [(0x00, 0x00), (0x01, 0x05), (0x98, 0x01), (0x40, 0x40)] {
                    let mut input = vec![flags, split];
                    input.extend_from_slice(&stream);
                    seeds.push(input);
                }
            }
        }
        "config_frame" => {
            seeds.extend(hand);
            let upstream = SocketAddr::from(([127, 0, 0, 1], 8081));
            let configs = [
                CompiledConfig::empty(1),
                connection_config(upstream),
                serde_json::from_str(ROUTES_CONFIG).unwrap_or_else(|e| panic!("{e}")),
            ];
            for config in &configs {
                let encoded = frame::encode(config).unwrap_or_else(|e| panic!("{e}"));
                seeds.push(encoded[HEADER_BYTES..].to_vec());
                seeds.push(encoded);
            }
        }
        _ => {}
    }
    seeds
}

/// Writes the seeds of every target into `root/<target>/`, named by content; returns the
/// number written per target.
pub fn write_seed_corpus(root: &Path) -> std::io::Result<Vec<(&'static str, usize)>> {
    let mut counts = Vec::new();
    for target in TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = seeds(target);
        for seed in &seeds {
            std::fs::write(dir.join(format!("seed-{:016x}", fnv1a(seed))), seed)?;
        }
        counts.push((target, seeds.len()));
    }
    Ok(counts)
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One case of the hostile corpus; fields other than `raw` are not needed here.
#[derive(serde::Deserialize)]
struct CorpusCase {
    raw: String,
}

/// The `raw` values of a YAML corpus file (a sequence of maps with a `raw` string), each
/// character U+0000..U+00FF one byte. Values with characters above U+00FF are skipped.
pub fn yaml_raws(text: &str) -> Result<Vec<Vec<u8>>, serde_saphyr::Error> {
    let cases: Vec<CorpusCase> = serde_saphyr::from_str(text)?;
    Ok(cases.iter().filter_map(|case| latin1(&case.raw)).collect())
}

/// `value` with each character as one byte; None if a character is above U+00FF.
fn latin1(value: &str) -> Option<Vec<u8>> {
    value
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_strings_decode_to_bytes() {
        let text = "- name: a\n  raw: \"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n\"\n\
                    - raw: \"\\x00\\xff\\u00e9 folded\n    line\\\n    joined\"\n  note: x\n\
                    - raw: 'it''s'\n\
                    - raw: \"\\u0100 is not a byte\"\n";
        let raws = yaml_raws(text).unwrap();
        assert_eq!(
            raws,
            vec![
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                b"\x00\xff\xe9 folded linejoined".to_vec(),
                b"it's".to_vec(),
            ]
        );
    }
}
