//! `portcullis`: the Portcullis control binary.
//!
//! `standalone` serves one Gateway from YAML files with a local proxy, `check` validates such
//! files in CI, `crd` prints our CRDs and `push` sends a compiled config to a running proxy.
//! `operator` runs the controller and the config stream server in the cluster; `agent` is the
//! sidecar of each proxy pod.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis_api::frame::{self, Reply};
use portcullis_operator::check::{self, Format};
use portcullis_operator::compile::ObjectKey;
use portcullis_operator::distribute::hub::PodId;
use portcullis_operator::distribute::{agent, control_client};
use portcullis_operator::standalone;
use portcullis_operator::{operator, provision};

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
    /// Run the operator: watch Gateway API objects, provision proxies, write status, and
    /// serve configs to the proxy pods' agents.
    Operator {
        /// The operator's namespace (leader-election Lease, CA Secret).
        #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
        namespace: String,
        /// This replica's name, its identity in leader election.
        #[arg(long, env = "POD_NAME")]
        pod_name: String,
        /// /metrics, /healthz and /readyz.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
        metrics_address: SocketAddr,
        /// The config stream server (TLS, gRPC).
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9443")]
        config_address: SocketAddr,
        /// The Service through which agents reach the config server.
        #[arg(long, default_value = "portcullis")]
        config_service: String,
        /// Image of the proxy container in provisioned pods.
        #[arg(long, value_name = "IMAGE")]
        proxy_image: String,
        /// Image of the agent container (this binary).
        #[arg(long, value_name = "IMAGE")]
        agent_image: String,
        #[arg(long, default_value = "IfNotPresent")]
        image_pull_policy: String,
        /// Seccomp profile of proxy pods: `localhost:<path under the kubelet's seccomp dir>`,
        /// `runtime-default` (blocks io_uring on current runtimes) or `unconfined`.
        #[arg(long, default_value = "localhost:portcullis/proxy.json", value_parser = parse_seccomp)]
        seccomp: provision::Seccomp,
        #[arg(long, default_value = "portcullis-operator")]
        lease_name: String,
    },
    /// Print Portcullis's CustomResourceDefinitions as YAML (the Gateway API CRDs come from
    /// the upstream bundle: `make install`).
    Crd,
    /// Print the operator's ClusterRole and Role as YAML (`make manifests` writes them to
    /// config/rbac/role.yaml).
    Rbac,
    /// Print the Gateway API features this build claims in GatewayClass
    /// `status.supportedFeatures`, one per line.
    Features,
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
    /// The sidecar in each proxy pod: receives its Gateway's config from the operator's config
    /// stream, persists the last good one and hands it to portcullis-proxy.
    Agent {
        /// The operator's config server, e.g. https://portcullis.portcullis-system.svc:9443.
        #[arg(long, value_name = "URL")]
        config_server: String,
        /// The name to verify in the config server's certificate [default: the URL's host].
        #[arg(long, value_name = "DNS-NAME")]
        config_server_name: Option<String>,
        /// The Gateway this pod serves.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = standalone::parse_gateway_key)]
        gateway: ObjectKey,
        /// The projected ServiceAccount token (re-read on every connect).
        #[arg(long, value_name = "PATH")]
        token_file: PathBuf,
        /// The CA certificate the config server's certificate must chain to.
        #[arg(long, value_name = "PATH")]
        ca_file: PathBuf,
        /// The proxy's control socket.
        #[arg(long, value_name = "PATH")]
        control_socket: PathBuf,
        /// Where the last good config is kept (an emptyDir survives container restarts).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The config to start from when the state dir holds none (the Gateway's last-good
        /// Secret); a missing file is fine.
        #[arg(long, value_name = "PATH")]
        bootstrap_file: Option<PathBuf>,
        /// This pod's name, namespace and uid (downward API).
        #[arg(long, env = "POD_NAME")]
        pod_name: String,
        #[arg(long, env = "POD_NAMESPACE")]
        pod_namespace: String,
        #[arg(long, env = "POD_UID")]
        pod_uid: String,
    },
    /// Serve one Gateway from YAML files with a local portcullis-proxy; edits are pushed live.
    Standalone {
        /// YAML files or directories of them: GatewayClass, Gateway, HTTPRoute, GRPCRoute,
        /// ReferenceGrant, Service, EndpointSlice, Secret, GatewayParameters.
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
        Command::Operator {
            namespace,
            pod_name,
            metrics_address,
            config_address,
            config_service,
            proxy_image,
            agent_image,
            image_pull_policy,
            seccomp,
            lease_name,
        } => {
            let provision = provision::ProvisionSettings {
                proxy_image,
                agent_image,
                image_pull_policy,
                config_server: format!(
                    "https://{config_service}.{namespace}.svc:{}",
                    config_address.port()
                ),
                config_server_name: format!("{config_service}.{namespace}.svc"),
                seccomp,
            };
            let options = operator::Options {
                namespace,
                pod_name,
                metrics_address,
                config_address,
                config_service,
                provision,
                lease_name,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the operator's runtime")?;
            runtime.block_on(operator::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Agent {
            config_server,
            config_server_name,
            gateway,
            token_file,
            ca_file,
            control_socket,
            state_dir,
            bootstrap_file,
            pod_name,
            pod_namespace,
            pod_uid,
        } => {
            let mut options = agent::AgentOptions::new(
                config_server,
                gateway,
                token_file,
                ca_file,
                control_socket,
                state_dir,
                PodId {
                    namespace: pod_namespace,
                    name: pod_name,
                    uid: pod_uid,
                },
            );
            options.bootstrap_file = bootstrap_file;
            options.config_server_name = config_server_name;
            run_agent(options)
        }
        Command::Crd => {
            print!("{}", portcullis_operator::manifests::crds_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rbac => {
            print!("{}", portcullis_operator::manifests::rbac_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Features => {
            for feature in portcullis_operator::compile::features::supported() {
                println!("{feature}");
            }
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
            // A push is timed from sending the frame to the reply. Encoding is timed apart:
            // in a cluster the operator encodes a config once and the agent forwards those
            // bytes to the proxy as they are (`distribute::agent`), so no push waits for it.
            let started = std::time::Instant::now();
            let encoded = frame::encode(&compiled).context("encoding the config")?;
            let encode_ms = started.elapsed().as_secs_f64() * 1000.0;
            let started = std::time::Instant::now();
            let reply =
                control_client::push_frame(&socket, &encoded, Duration::from_secs(timeout))?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            match reply {
                Reply::Ack { generation } => {
                    println!("ACK {generation}");
                    eprintln!("encoded in {encode_ms:.1} ms; push -> ACK in {elapsed_ms:.1} ms");
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

fn parse_seccomp(text: &str) -> Result<provision::Seccomp, String> {
    match text {
        "runtime-default" => Ok(provision::Seccomp::RuntimeDefault),
        "unconfined" => Ok(provision::Seccomp::Unconfined),
        other => match other.strip_prefix("localhost:") {
            Some(path) if !path.is_empty() => Ok(provision::Seccomp::Localhost(path.to_string())),
            _ => Err("expected localhost:<profile path>, runtime-default or unconfined".into()),
        },
    }
}

/// The agent on a current-thread runtime: it runs in every proxy pod, so it stays small.
/// It logs JSON lines like the operator (level from `RUST_LOG`, default info).
fn run_agent(options: agent::AgentOptions) -> anyhow::Result<ExitCode> {
    portcullis_operator::telemetry::init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    let result = runtime.block_on(async {
        let shutdown = async {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate => {}
            }
        };
        agent::run(options, shutdown).await
    });
    // A push still waiting for the proxy's reply must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
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
