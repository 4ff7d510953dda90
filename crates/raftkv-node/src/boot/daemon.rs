//! The `raftkvd` command line: parse flags, set up logging, run a node until SIGINT/SIGTERM —
//! or, with a subcommand, build a new single-node cluster from a backup (`restore`) or from a
//! surviving node's data after quorum loss (`recover`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftkv_store::NodeAddr;
use tracing_subscriber::EnvFilter;

use crate::boot::config::NodeConfig;
use crate::boot::node::RunningNode;

/// raftkvd: one node of a raftkv cluster.
#[derive(Debug, Parser)]
#[command(
    name = "raftkvd",
    version,
    about,
    long_about = None,
    after_help = "Tools: `raftkvd restore --help` (a new cluster from a backup), \
                  `raftkvd recover --help` (a new cluster from a survivor after quorum loss)."
)]
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

/// Where the new single node will live and be reached.
#[derive(Debug, clap::Args)]
pub struct NewNode {
    /// Id of the new node.
    #[arg(long)]
    pub id: u64,
    /// Data dir of the new node; must be empty or absent.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Client address it will serve (and advertise).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub client_addr: SocketAddr,
    /// Peer address it will serve (and advertise).
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub peer_addr: SocketAddr,
}

/// `raftkvd restore ...` / `raftkvd recover ...`.
#[derive(Debug, Parser)]
#[command(name = "raftkvd", version)]
pub struct ToolArgs {
    #[command(subcommand)]
    pub tool: Tool,
}

#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Build a new single-node cluster from a backup file (`raftkv backup`); then start it with
    /// `raftkvd --id ID --data-dir DIR ...` and add members with `raftkv member add`.
    Restore {
        /// The backup file.
        #[arg(long = "from")]
        from: PathBuf,
        #[command(flatten)]
        node: NewNode,
    },
    /// After losing a quorum for good: build a new single-node cluster from a surviving node's
    /// data dir (the node must be stopped; its dir is left untouched). Writes the survivor had
    /// not learned were committed are dropped unless --include-uncommitted.
    Recover {
        /// The surviving node's data dir.
        #[arg(long = "from-data-dir")]
        from: PathBuf,
        /// Also keep log entries not known committed (they may resurrect writes whose clients
        /// saw them fail).
        #[arg(long)]
        include_uncommitted: bool,
        #[command(flatten)]
        node: NewNode,
    },
}

/// Creates the new node's data dir (identity and store) from snapshot data.
async fn create_single_node(node: &NewNode, data: Vec<u8>, last_index: u64, last_term: u64) -> Result<(), String> {
    if node.data_dir.exists()
        && std::fs::read_dir(&node.data_dir)
            .map_err(|e| format!("cannot read {}: {e}", node.data_dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty; restore into a new, empty data dir",
            node.data_dir.display()
        ));
    }
    let addr = NodeAddr {
        client_addr: node.client_addr.to_string(),
        peer_addr: node.peer_addr.to_string(),
    };
    raftkv_store::recovery::restore_single_node(&node.data_dir, data, last_index, last_term, node.id, addr)
        .await
        .map_err(|e| e.to_string())?;
    crate::boot::identity::create(&node.data_dir, node.id).map_err(|e| e.to_string())?;
    Ok(())
}

async fn run_tool(tool: Tool) -> Result<String, String> {
    match tool {
        Tool::Restore { from, node } => {
            let file = std::fs::File::open(&from).map_err(|e| format!("cannot open {}: {e}", from.display()))?;
            let (meta, data) = raftkv_proto::backup::read_backup(std::io::BufReader::new(file))
                .map_err(|e| format!("{}: {e}", from.display()))?;
            create_single_node(&node, data, meta.last_index, meta.last_term).await?;
            Ok(restored_message(&node, "restored", &from, meta.last_index))
        }
        Tool::Recover {
            from,
            include_uncommitted,
            node,
        } => {
            let (data, last_index, last_term) = raftkv_store::recovery::export_state(&from, include_uncommitted)
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the surviving node's data in {}: {e} (is it still running?)",
                        from.display()
                    )
                })?;
            create_single_node(&node, data, last_index, last_term).await?;
            Ok(restored_message(&node, "recovered", &from, last_index))
        }
    }
}

fn restored_message(node: &NewNode, verb: &str, from: &Path, last_index: u64) -> String {
    format!(
        "{verb} the state up to log index {last_index} from {} into {} as a new single-node cluster.\n\
         Start it with: raftkvd --id {} --data-dir {} --client-addr {} --peer-addr {}\n\
         then add members (with new ids and empty data dirs): raftkv member add ID CLIENT@PEER",
        from.display(),
        node.data_dir.display(),
        node.id,
        node.data_dir.display(),
        node.client_addr,
        node.peer_addr
    )
}

/// Runs `raftkvd` and returns its exit code: 0 after a clean shutdown, 1 when the node could
/// not start (the reason is printed), 2 on bad flags.
pub fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    if matches!(first.as_deref(), Some("restore" | "recover")) {
        return run_tool_main(ToolArgs::parse().tool);
    }
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
        let mut fatal = node.fatal.clone();
        let failure = tokio::select! {
            _ = wait_for_signal() => None,
            reason = async move {
                loop {
                    if let Some(reason) = fatal.borrow_and_update().clone() {
                        return reason;
                    }
                    if fatal.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => Some(reason),
        };
        node.shutdown().await;
        match failure {
            None => ExitCode::SUCCESS,
            Some(reason) => {
                tracing::error!("{reason}");
                eprintln!("raftkvd: {reason}");
                ExitCode::FAILURE
            }
        }
    })
}

fn run_tool_main(tool: Tool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkvd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_tool(tool)) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftkvd: {e}");
            ExitCode::FAILURE
        }
    }
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
