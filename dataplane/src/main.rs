use std::process::ExitCode;

use clap::Parser;
use portcullis_dataplane::cli::Options;

fn main() -> ExitCode {
    let options = Options::parse();
    match portcullis_dataplane::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portcullis-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}
