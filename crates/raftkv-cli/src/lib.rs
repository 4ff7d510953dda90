//! raftkv-cli: the `raftkv` command-line tool — data commands (`put`, `get`, `del`, `range`,
//! `cas`, `txn`, `watch`), leases (`lease`), locks and elections (`lock`, `elect`), cluster
//! administration (`cluster status`, `cluster leader`, `cluster watch`)
//! and a load
//! generator (`bench`).
//!
//! Exit codes, for scripts: 0 success; 1 key not found, or a compare that did not hold (`cas`,
//! `txn`, `put --if-absent`); 2 usage error or invalid argument; 3 cluster unavailable or
//! outcome indeterminate; 4 any other server error.
//!
//! Module map: [`args`] (the command line), [`lease`], [`coordination`] and [`service`] (leases,
//! locks, elections, the service registry; [`interrupt`] for the commands that hold until
//! interrupted), [`txn_syntax`] (the readable transaction syntax),
//! [`output`] (text and JSON rendering), and this file, which runs a command.

pub mod admin;
pub mod args;
pub mod bench;
pub mod certs;
pub mod coordination;
pub mod interrupt;
pub mod lease;
pub mod output;
pub mod service;
pub mod txn_syntax;
pub mod watch;
pub mod watch_keys;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use raftkv_client::pb::{txn_op_response, DeleteRequest, PutRequest, RangeRequest, TxnRequest, TxnResponse};
use raftkv_client::{Client, ClientConfig, ClientError, ClientTls, ReadOptions, Token, WatchOptions};

use crate::args::{Cli, ClusterCommand, Command, OutputFormat};

/// Exit code: the key was not found, or a compare did not hold.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: bad usage or an argument the server refused.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no node could serve the call, or a write's outcome is unknown.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit code: any other server error.
pub const EXIT_SERVER_ERROR: u8 = 4;
/// Exit code: the cluster refused the token (missing, unknown, or without the role needed).
pub const EXIT_DENIED: u8 = 5;

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread is plenty for a single command; the load generator gets two.
    let runtime = match &cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkv: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER_ERROR);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

fn exit_code_for(e: &ClientError) -> u8 {
    match e {
        ClientError::InvalidArgument(_) | ClientError::Config(_) => EXIT_USAGE,
        ClientError::Unavailable(_) | ClientError::Indeterminate(_) => EXIT_UNAVAILABLE,
        ClientError::NotFound(_) => EXIT_NOT_FOUND,
        ClientError::Server { .. } | ClientError::Compacted { .. } | ClientError::AlreadyExists(_) => EXIT_SERVER_ERROR,
        ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_) => EXIT_DENIED,
    }
}

fn bench_fail(e: bench::driver::OpError) -> u8 {
    eprintln!("raftkv bench: {e}");
    match e.kind.as_str() {
        "config" | "invalid_argument" => EXIT_USAGE,
        "unauthenticated" | "permission_denied" => EXIT_DENIED,
        "unavailable" | "indeterminate" | "deadline_exceeded" | "transport" => EXIT_UNAVAILABLE,
        _ => EXIT_SERVER_ERROR,
    }
}

pub(crate) fn fail(e: ClientError) -> u8 {
    eprintln!("raftkv: {e}");
    exit_code_for(&e)
}

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("raftkv: {msg}");
    EXIT_USAGE
}

pub(crate) fn print(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`raftkv get k | head -c0`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    0
}

fn print_bytes(bytes: &[u8]) -> u8 {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    0
}

/// The key-value a failed conditional write found (the failure branch's single `get`).
fn current_value(r: &TxnResponse) -> Option<&[u8]> {
    match r.responses.first().and_then(|x| x.response.as_ref()) {
        Some(txn_op_response::Response::Get(g)) => g.kv.as_ref().map(|kv| kv.value.as_slice()),
        _ => None,
    }
}

/// Runs one parsed command and returns its exit code.
pub async fn run(cli: Cli) -> u8 {
    if let Command::Certs { dir, nodes, hosts } = &cli.command {
        return match certs::write_cluster_certs(dir, *nodes, hosts) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                0
            }
            Err(msg) => usage(msg),
        };
    }
    let mut config = match ClientConfig::parse(&cli.endpoints) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    config.tls = match (&cli.tls_cacert, &cli.tls_cert, &cli.tls_key) {
        (None, None, None) => None,
        (Some(ca), cert, key) => {
            let identity = match (cert, key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                (None, None) => None,
                _ => return usage("--cert and --key go together"),
            };
            match ClientTls::from_files(ca, identity) {
                Ok(tls) => Some(tls),
                Err(e) => return fail(e),
            }
        }
        (None, _, _) => return usage("--cert/--key need --cacert (the CA that signed the nodes' certificates)"),
    };
    config.timeout = cli.timeout.0;
    config.retry.max_attempts = cli.retries;
    config.token = cli.token.clone().map(Token::new);
    let bench_client = bench::driver::ClientSettings {
        timeout: cli.timeout.0,
        token: config.token.clone(),
        tls: config.tls.clone(),
    };

    let client = match Client::new(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let json = cli.output == OutputFormat::Json;
    match cli.command {
        Command::Put {
            key,
            value,
            prev,
            if_absent: false,
            lease,
        } => {
            let req = PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                prev_kv: prev,
                lease: lease.map_or(0, |l| l.0),
            };
            match client.put_request(req, None).await {
                Ok(r) if json => print(&output::put_json(&r)),
                Ok(r) => print(&output::put_text(&r)),
                Err(e) => fail(e),
            }
        }
        Command::Put {
            key,
            value,
            if_absent: true,
            ..
        } => match client.put_if_absent(key.into_bytes(), value.into_bytes()).await {
            Ok(r) if json => conditional(&r, print(&output::txn_json(&r))),
            Ok(r) if r.succeeded => print(&format!("OK (revision {})\n", r.revision)),
            Ok(_) => {
                eprintln!("raftkv: key already exists; nothing written");
                EXIT_NOT_FOUND
            }
            Err(e) => fail(e),
        },
        Command::Get { key, consistency } => {
            let opts = ReadOptions {
                consistency: consistency.into(),
                timeout: None,
                allow_degraded: cli.allow_degraded,
            };
            match client.get_opts(key.into_bytes(), opts).await {
                Ok(read) => {
                    if read.degraded {
                        warn_degraded(read.response.header.as_ref());
                    }
                    let r = read.response;
                    if json {
                        print(&output::get_json(&r, read.degraded));
                    }
                    match &r.kv {
                        Some(_) if json => 0,
                        Some(kv) => print_bytes(&kv.value),
                        None => {
                            if !json {
                                eprintln!("raftkv: key not found");
                            }
                            EXIT_NOT_FOUND
                        }
                    }
                }
                Err(e) => fail(e),
            }
        }
        Command::Del { key, prefix, end, prev } => {
            let req = DeleteRequest {
                key: key.into_bytes(),
                prev_kv: prev,
                end: end.unwrap_or_default().into_bytes(),
                prefix,
            };
            match client.delete_request(req, None).await {
                Ok(r) if json => print(&output::delete_json(&r)),
                Ok(r) => print(&format!("{}\n", r.deleted)),
                Err(e) => fail(e),
            }
        }
        Command::Cas { key, expected, new } => {
            match client
                .compare_and_swap(key.into_bytes(), expected.into_bytes(), new.into_bytes())
                .await
            {
                Ok(r) if json => conditional(&r, print(&output::txn_json(&r))),
                Ok(r) if r.succeeded => print(&format!("OK (revision {})\n", r.revision)),
                Ok(r) => {
                    match current_value(&r) {
                        Some(v) => eprintln!(
                            "raftkv: compare failed: the current value is {:?}; nothing written",
                            String::from_utf8_lossy(v)
                        ),
                        None => eprintln!("raftkv: compare failed: the key does not exist; nothing written"),
                    }
                    EXIT_NOT_FOUND
                }
                Err(e) => fail(e),
            }
        }
        Command::Txn {
            compares,
            then_ops,
            else_ops,
        } => {
            let parsed = (|| -> Result<TxnRequest, String> {
                Ok(TxnRequest {
                    compare: compares
                        .iter()
                        .map(|c| txn_syntax::parse_compare(c))
                        .collect::<Result<_, _>>()?,
                    success: then_ops
                        .iter()
                        .map(|o| txn_syntax::parse_op(o))
                        .collect::<Result<_, _>>()?,
                    failure: else_ops
                        .iter()
                        .map(|o| txn_syntax::parse_op(o))
                        .collect::<Result<_, _>>()?,
                })
            })();
            let req = match parsed {
                Ok(r) => r,
                Err(msg) => return usage(msg),
            };
            match client.txn(req, None).await {
                Ok(r) if json => conditional(&r, print(&output::txn_json(&r))),
                Ok(r) => conditional(&r, print(&output::txn_text(&r))),
                Err(e) => fail(e),
            }
        }
        Command::Bench(args) if args.workload == bench::Workload::Failover => {
            match bench::failover::run(&args, &cli.endpoints, &bench_client).await {
                Ok(report) if json => print(&report.json()),
                Ok(report) => print(&report.text()),
                Err(e) => bench_fail(e),
            }
        }
        Command::Bench(args) if args.workload == bench::Workload::Lease => {
            match bench::lease::run(&args, &cli.endpoints, &bench_client).await {
                Ok(report) if json => print(&report.json()),
                Ok(report) => print(&report.text()),
                Err(e) => bench_fail(e),
            }
        }
        Command::Bench(args) if args.workload == bench::Workload::Watch => {
            match bench::watch::run(&args, &cli.endpoints, &bench_client).await {
                Ok(report) if json => print(&report.json()),
                Ok(report) => print(&report.text()),
                Err(e) => bench_fail(e),
            }
        }
        Command::Bench(args) => match bench::run(&args, &cli.endpoints, &bench_client).await {
            Ok(report) if json => print(&report.json()),
            Ok(report) => print(&report.text()),
            Err(e) => bench_fail(e),
        },
        // Written before any client exists (it needs none).
        Command::Certs { .. } => 0,
        Command::BenchTable { files } => {
            let mut inputs = Vec::new();
            for f in &files {
                match std::fs::read_to_string(f) {
                    Ok(text) => inputs.push(text),
                    Err(e) => return usage(format!("cannot read {}: {e}", f.display())),
                }
            }
            match bench::table::render(&inputs) {
                Ok(table) => print(&table),
                Err(msg) => usage(msg),
            }
        }
        Command::Watch {
            key,
            prefix,
            end,
            rev,
            prev_kv,
            count,
        } => {
            let mut options = match (prefix, end) {
                (true, _) => WatchOptions::prefix(key),
                (false, Some(end)) => WatchOptions::range(key, end),
                (false, None) => WatchOptions::key(key),
            };
            options.start_revision = rev.unwrap_or(0);
            options.prev_kv = prev_kv;
            match watch_keys::print_changes(&client, options, count, json).await {
                Ok(()) => 0,
                Err(e) => fail(e),
            }
        }
        Command::Range(r) => {
            let req: RangeRequest = match r.to_request() {
                Ok(req) => req,
                Err(msg) => return usage(msg),
            };
            let (count_only, keys_only) = (req.count_only, req.keys_only);
            let opts = ReadOptions {
                consistency: r.consistency.into(),
                timeout: None,
                allow_degraded: cli.allow_degraded,
            };
            match client.range_opts(req, opts).await {
                Ok(read) => {
                    if read.degraded {
                        warn_degraded(read.response.header.as_ref());
                    }
                    let resp = read.response;
                    if json {
                        return print(&output::range_json(&resp, read.degraded));
                    }
                    if resp.more {
                        eprintln!(
                            "raftkv: more keys match; continue from {:?} (as START, or as END with --reverse)",
                            String::from_utf8_lossy(&resp.next_key)
                        );
                    }
                    print(&output::range_text(&resp, count_only, keys_only))
                }
                Err(e) => fail(e),
            }
        }
        Command::Lease { command } => lease::run(&client, command, json).await,
        Command::Lock { name, ttl, command } => coordination::lock(&client, &name, ttl.0, &command, json).await,
        Command::Elect { name, value, ttl } => coordination::elect(&client, &name, value, ttl.0, json).await,
        Command::Service { command } => service::run(&client, command, json).await,
        Command::Member { command } => admin::member(&client, command, json).await,
        Command::Backup { file, node } => admin::backup(&client, &file, node.as_deref()).await,
        Command::Cluster {
            command: ClusterCommand::Snapshot { node },
        } => admin::snapshot(&client, node.as_deref(), json).await,
        Command::Cluster {
            command: ClusterCommand::TransferLeader { id },
        } => admin::transfer_leader(&client, id, json).await,
        Command::Cluster {
            command: ClusterCommand::Leader,
        } => {
            let reports = client.cluster_status().await;
            match output::leader(&reports) {
                Some((id, addr)) if json => print(&format!("{{\"id\":{id},\"addr\":{addr:?}}}\n")),
                Some((id, addr)) => print(&format!("{id} {addr}\n")),
                None => {
                    eprintln!("raftkv: no leader is known (endpoints: {})", cli.endpoints);
                    EXIT_UNAVAILABLE
                }
            }
        }
        Command::Cluster {
            command: ClusterCommand::Watch { once, interval },
        } => {
            if once {
                let sample = watch::sample(&client).await;
                let code = if sample.nodes.iter().any(|n| n.reachable) {
                    0
                } else {
                    EXIT_UNAVAILABLE
                };
                if json {
                    print(&format!("{}\n", sample.json()));
                } else {
                    print(&output::status_table(&client.cluster_status().await));
                }
                return code;
            }
            match watch::run_live(&client, &cli.endpoints, interval.0).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("raftkv: the terminal view failed: {e} (try --once)");
                    EXIT_SERVER_ERROR
                }
            }
        }
        Command::Cluster {
            command: ClusterCommand::Status,
        } => {
            let reports = client.cluster_status().await;
            let any_up = reports.iter().any(|r| r.status.is_ok());
            if json {
                print(&output::status_json(&reports));
            } else {
                print(&output::status_table(&reports));
            }
            if any_up {
                0
            } else {
                eprintln!("raftkv: no node answered (endpoints: {})", cli.endpoints);
                EXIT_UNAVAILABLE
            }
        }
    }
}

fn warn_degraded(header: Option<&raftkv_client::pb::ResponseHeader>) {
    match header {
        Some(h) => eprintln!(
            "raftkv: degraded: no quorum answered in time; this is a STALE read from node {} at revision {}",
            h.node_id, h.revision
        ),
        None => eprintln!("raftkv: degraded: no quorum answered in time; this is a STALE read"),
    }
}

/// The exit code of a conditional command whose output was printed: 1 if its compares failed.
fn conditional(r: &TxnResponse, printed: u8) -> u8 {
    if r.succeeded {
        printed
    } else {
        EXIT_NOT_FOUND
    }
}
