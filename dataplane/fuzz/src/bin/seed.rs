//! Writes the seed inputs of every fuzz target into a corpus directory (default
//! `dataplane/fuzz/corpus`): the hand-written files under `seeds/`, the `raw` requests of the
//! hostile HTTP/1.1 corpus, and encoded config frames. Files are named by content, so seeding
//! an existing corpus again adds nothing twice.

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    match portcullis_dataplane::fuzzing::write_seed_corpus(&root) {
        Ok(counts) => {
            for (target, count) in counts {
                println!("{target}: {count} seeds");
            }
        }
        Err(e) => {
            eprintln!("writing seeds into {}: {e}", root.display());
            std::process::exit(1);
        }
    }
}
