//! `portcullis`: the Portcullis control binary.
//!
//! `standalone` serves one Gateway from YAML files with a local proxy, `check` validates such
//! files in CI, `crd` prints our CRDs and `push` sends a compiled config to a running proxy.
//! `operator` and `agent` arrive with the operator.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_api::frame::{self, Reply};
use portcullis_operator::check::{self, Format};
use portcullis_operator::compile::ObjectKey;
use portcullis_operator::distribute::control_client;
use portcullis_operator::standalone;

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
    /// Compile Gateway API objects from YAML files and print every object's status; exits 1
    /// when one of them is not Accepted, ResolvedRefs or Programmed. For CI, before applying.
    Check {
        /// YAML files or directories of them (multi-document files are fine).
        #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// Print a table or the statuses as YAML.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Serve one Gateway from YAML files with a local portcullis-proxy; edits are pushed live.
    Standalone {
        /// YAML files or directories of them: GatewayClass, Gateway, HTTPRoute, ReferenceGrant,
        /// Service, EndpointSlice, Secret, GatewayParameters.
        #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// The Gateway to serve (namespace/name) when the files hold several.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = standalone::parse_gateway_key)]
        gateway: Option<ObjectKey>,
        /// Address the listener ports bind to.
        #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
        bind_address: IpAddr,
        /// The proxy's admin endpoint (/ready, /metrics, /config_dump).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:19000")]
        admin_address: SocketAddr,
        /// The proxy binary [default: portcullis-proxy next to this executable].
        #[arg(long, value_name = "PATH")]
        proxy_bin: Option<PathBuf>,
        /// The proxy's worker cores [default: every CPU this process may run on].
        #[arg(long, value_name = "N")]
        cores: Option<usize>,
        /// Have the proxy write one JSON line per request to stdout.
        #[arg(long)]
        access_log: bool,
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
        Command::Check { paths, format } => run_check(&paths, format),
        Command::Standalone {
            paths,
            gateway,
            bind_address,
            admin_address,
            proxy_bin,
            cores,
            access_log,
        } => standalone::run(&standalone::Options {
            paths,
            gateway,
            bind_address,
            admin_address,
            proxy_bin,
            cores,
            access_log,
        }),
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

fn run_check(paths: &[PathBuf], format: Format) -> anyhow::Result<ExitCode> {
    let report = check::check(paths, format)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    print!("{}", report.statuses);
    Ok(if report.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
