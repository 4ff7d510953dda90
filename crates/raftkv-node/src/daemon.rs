//! The `raftkvd` command line: parse flags, set up logging, run a node until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{NodeConfig, RunningNode};

/// raftkvd: one node of a raftkv cluster.
#[derive(Debug, Parser)]
#[command(name = "raftkvd", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeConfig,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive such as
    /// `info,openraft=warn`. RUST_LOG overrides it.
    #[arg(long, env = "RAFTKV_LOG_LEVEL", default_value = "info,openraft=error")]
    pub log_level: String,

    /// Log format: `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, env = "RAFTKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs `raftkvd` and returns its exit code: 0 after a clean shutdown, 1 when the node could
/// not start (the reason is printed), 2 on bad flags.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkvd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match RunningNode::start(args.node).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("raftkvd: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        node.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
