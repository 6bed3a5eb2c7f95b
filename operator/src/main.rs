//! `portcullis`: the Portcullis control binary.
//!
//! Subcommands arrive with their issues: `standalone` and `check` with the compiler,
//! `operator` and `agent` with the operator. Today it prints our CRDs and pushes compiled
//! configs to a running proxy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_api::frame::{self, Reply};
use portcullis_operator::distribute::control_client;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis Gateway API control binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print Portcullis's CustomResourceDefinitions as YAML (the Gateway API CRDs come from
    /// the upstream bundle: `make install`).
    Crd,
    /// Push a compiled config (JSON) to a proxy's control socket and print its reply.
    Push {
        /// The proxy's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// A CompiledConfig as JSON.
        #[arg(long)]
        config: PathBuf,
        /// Replace the file's generation with this one.
        #[arg(long)]
        generation: Option<u64>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", portcullis_operator::manifests::crds_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            socket,
            config,
            generation,
            timeout,
        } => {
            let bytes =
                std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
            let mut compiled = frame::decode_json(&bytes)
                .with_context(|| format!("decoding {}", config.display()))?;
            if let Some(generation) = generation {
                compiled.generation = generation;
            }
            match control_client::push(&socket, &compiled, Duration::from_secs(timeout))? {
                Reply::Ack { generation } => {
                    println!("ACK {generation}");
                    Ok(ExitCode::SUCCESS)
                }
                Reply::Nack { reason } => {
                    println!("NACK {reason}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
