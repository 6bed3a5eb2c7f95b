//! Command-line options of `portcullis-proxy`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::log::Level;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-proxy",
    version,
    about = "Portcullis data plane: a thread-per-core HTTP/1.1 and TLS reverse proxy",
    long_about = "Portcullis data plane: a thread-per-core HTTP/1.1 and TLS reverse proxy.\n\n\
        Configuration arrives as a framed CompiledConfig on the control socket (from the \
        Portcullis agent or `portcullis push`), or from a JSON file at start."
)]
pub struct Options {
    /// Serve this CompiledConfig (JSON) from the start.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Accept configs on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Admin endpoint (/ready, /live, /metrics, /config_dump).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:19000")]
    pub admin_address: SocketAddr,

    /// Address the listener ports bind to.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Number of worker cores, taken from the start of the process's CPU affinity mask.
    #[arg(long, value_name = "N", conflicts_with = "cpus")]
    pub cores: Option<usize>,

    /// Exact CPUs to run worker cores on, e.g. "1" or "0,2-3".
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Seconds to let open requests finish after SIGTERM before exiting.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub drain_timeout: f64,

    /// Seconds to keep accepting after SIGTERM, not ready and closing every connection after
    /// its response, before the listeners close (time for load balancers to notice).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub drain_delay: f64,

    /// Write one JSON line per request to stdout.
    #[arg(long)]
    pub access_log: bool,

    #[arg(long, value_enum, default_value = "info")]
    pub log_level: Level,
}

/// A parsed CPU list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses "0,2-3,7" into [0, 2, 3, 7].
pub fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (number(low)?, number(high)?);
                if low > high {
                    return Err(format!("range {part:?} is reversed"));
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("the CPU list is empty".into());
    }
    Ok(CpuList(cpus))
}

/// Picks the worker CPUs from the options and the affinity mask.
pub fn select_cpus(options: &Options, allowed: &[usize]) -> Result<Vec<usize>, String> {
    match (&options.cpus, options.cores) {
        (Some(CpuList(list)), _) => {
            if let Some(cpu) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "CPU {cpu} is not in this process's affinity mask {allowed:?}"
                ));
            }
            Ok(list.clone())
        }
        (None, Some(0)) => Err("--cores must be at least 1".into()),
        (None, Some(n)) if n > allowed.len() => Err(format!(
            "--cores {n} but only {} CPUs are allowed ({allowed:?})",
            allowed.len()
        )),
        (None, Some(n)) => Ok(allowed[..n].to_vec()),
        (None, None) => Ok(allowed.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3,3,7"), Ok(CpuList(vec![0, 2, 3, 7])));
        assert_eq!(parse_cpu_list("1"), Ok(CpuList(vec![1])));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn cpu_selection() {
        let options = |cores, cpus| Options {
            config: None,
            control_socket: None,
            admin_address: "127.0.0.1:0".parse().unwrap(),
            bind_address: "0.0.0.0".parse().unwrap(),
            cores,
            cpus,
            drain_timeout: 1.0,
            drain_delay: 0.0,
            access_log: false,
            log_level: Level::Info,
        };
        let allowed = [2, 3, 5];
        assert_eq!(
            select_cpus(&options(None, None), &allowed),
            Ok(vec![2, 3, 5])
        );
        assert_eq!(
            select_cpus(&options(Some(2), None), &allowed),
            Ok(vec![2, 3])
        );
        assert!(select_cpus(&options(Some(4), None), &allowed).is_err());
        assert!(select_cpus(&options(Some(0), None), &allowed).is_err());
        assert_eq!(
            select_cpus(&options(None, Some(CpuList(vec![5]))), &allowed),
            Ok(vec![5])
        );
        assert!(select_cpus(&options(None, Some(CpuList(vec![0]))), &allowed).is_err());
    }
}
