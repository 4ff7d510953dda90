//! `service-shares`: discovers a service in the raftkv registry and prints, every second, the
//! share of N picks each instance got — run it beside `raftkv service register` processes and
//! watch the shares move as instances die, come back, or change weight. See README.md.
//!
//! Usage: `service-shares [--endpoints A,B,C] [--service NAME] [--picks N] [--for SECONDS]`
//! (endpoints also from RAFTKV_ENDPOINTS; defaults: the local cluster, `api`, 100, forever).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use raftkv_client::registry;
use raftkv_client::{Client, ClientConfig, DEFAULT_ENDPOINTS};

struct Options {
    endpoints: String,
    service: String,
    picks: u32,
    seconds: Option<u64>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        endpoints: std::env::var("RAFTKV_ENDPOINTS").unwrap_or_else(|_| DEFAULT_ENDPOINTS.to_string()),
        service: "api".to_string(),
        picks: 100,
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoints" => options.endpoints = value()?,
            "--service" => options.service = value()?,
            "--picks" => {
                let v = value()?;
                options.picks = v.parse().map_err(|_| format!("--picks {v:?} is not a number"))?;
            }
            "--for" => {
                let v = value()?;
                options.seconds = Some(
                    v.parse()
                        .map_err(|_| format!("--for {v:?} is not a number of seconds"))?,
                );
            }
            "-h" | "--help" => {
                return Err(
                    "usage: service-shares [--endpoints A,B,C] [--service NAME] [--picks N] [--for SECONDS]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

/// One line: every instance's share of `picks` picks, `id=NN%` (backups marked), by id.
fn shares_line(discovery: &registry::Discovery, picks: u32) -> String {
    let mut counts: BTreeMap<String, (u32, bool)> = discovery
        .instances()
        .into_iter()
        .map(|i| (i.id, (0, i.backup)))
        .collect();
    for _ in 0..picks {
        if let Some(p) = discovery.pick() {
            counts.entry(p.id).or_insert((0, p.backup)).0 += 1;
        }
    }
    if counts.is_empty() {
        return "no instance registered".to_string();
    }
    counts
        .iter()
        .map(|(id, (n, backup))| {
            let mark = if *backup { "(backup)" } else { "" };
            format!("{id}{mark}={:>3}%", u64::from(*n) * 100 / u64::from(picks.max(1)))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("service-shares: {msg}");
            return ExitCode::from(2);
        }
    };
    let client = match ClientConfig::parse(&options.endpoints).and_then(Client::new) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("service-shares: {e}");
            return ExitCode::from(2);
        }
    };
    let discovery = match registry::discover(&client, &options.service).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("service-shares: cannot read service {:?}: {e}", options.service);
            return ExitCode::from(3);
        }
    };
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs();
        if options.seconds.is_some_and(|s| elapsed > s) {
            return ExitCode::SUCCESS;
        }
        println!(
            "[{elapsed:>3}s] rev {:>4}  {}",
            discovery.revision(),
            shares_line(&discovery, options.picks)
        );
    }
}
