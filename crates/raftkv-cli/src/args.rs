//! The `raftkv` command line (clap derive).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftkv_client::pb::{Consistency, RangeRequest};
use raftkv_client::DEFAULT_ENDPOINTS;

/// raftkv: talk to a raftkv cluster.
#[derive(Debug, Parser)]
#[command(name = "raftkv", version, about, long_about = None)]
pub struct Cli {
    /// Client addresses of the nodes, comma-separated; each may carry a read weight or be a
    /// backup used only when no other node is usable: `a:7001=3,b:7002,c:7003=backup`.
    #[arg(long, global = true, env = "RAFTKV_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,

    /// Deadline for the whole command, retries included (e.g. 500ms, 5s, 1m).
    #[arg(long, global = true, env = "RAFTKV_TIMEOUT", default_value = "5s")]
    pub timeout: DurationArg,

    /// Most attempts per call (retries are spaced by exponential backoff with jitter).
    #[arg(long, global = true, env = "RAFTKV_RETRIES", default_value_t = 10)]
    pub retries: u32,

    /// Access token for clusters started with `--auth-file` (sent as `authorization: Bearer
    /// TOKEN`). Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, global = true, env = "RAFTKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM CA that signed the nodes' certificates: talk TLS to a cluster started with
    /// `--tls-cert` (files from `raftkv certs`: ca.pem).
    #[arg(long = "cacert", global = true, env = "RAFTKV_CACERT")]
    pub tls_cacert: Option<std::path::PathBuf>,

    /// PEM client certificate, for a cluster that requires one (`--tls-client-ca`).
    #[arg(long = "cert", global = true, env = "RAFTKV_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --cert.
    #[arg(long = "key", global = true, env = "RAFTKV_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// When a linearizable read cannot get an answer from a quorum in time, print a stale read
    /// instead of failing (a warning on stderr says so; `-o json` has "degraded": true).
    #[arg(long, global = true, env = "RAFTKV_ALLOW_DEGRADED")]
    pub allow_degraded: bool,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Reflects every write acknowledged before the read started.
    Linearizable,
    /// Answered from the contacted node's local state at once; may be stale.
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        /// Print the previous value too (with -o json).
        #[arg(long)]
        prev: bool,
        /// Only create the key: fail (exit code 1) if it already exists.
        #[arg(long, conflicts_with = "lease")]
        if_absent: bool,
        /// Attach the key to this lease (hex id from `raftkv lease grant`): the key is deleted
        /// when the lease expires or is revoked.
        #[arg(long, value_name = "ID")]
        lease: Option<crate::lease::LeaseId>,
    },
    /// Print the value of KEY (exit code 1 if it does not exist).
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
    /// Delete KEY (or every key with the prefix KEY, or [KEY, END)) and print how many keys were
    /// deleted.
    Del {
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long, conflicts_with = "end")]
        prefix: bool,
        /// Delete every key in [KEY, END).
        #[arg(long)]
        end: Option<String>,
        /// Print the deleted key-values too (with -o json).
        #[arg(long)]
        prev: bool,
    },
    /// Compare-and-swap: set KEY to NEW only if its value is EXPECTED (exit code 1 if not).
    Cas { key: String, expected: String, new: String },
    /// Run a transaction: if every --if holds, the --then operations, else the --else ones.
    ///
    /// Compares: 'value(KEY) OP VALUE', 'version(KEY) OP N', 'create(KEY) OP N',
    /// 'mod(KEY) OP N' (OP: = != < >), 'exists(KEY)', 'missing(KEY)'.
    /// Operations: 'put KEY VALUE', 'get KEY', 'del KEY', 'del-prefix PREFIX',
    /// 'del-range START END'. Double quotes keep spaces in a word.
    ///
    /// Example: raftkv txn --if 'missing(lock)' --then 'put lock me' --else 'get lock'
    ///
    /// Exit code 0 when the compares held, 1 when they did not.
    Txn {
        /// A compare; repeat for several (all must hold).
        #[arg(long = "if", value_name = "COMPARE")]
        compares: Vec<String>,
        /// An operation run when the compares hold; repeat for several.
        #[arg(long = "then", value_name = "OP")]
        then_ops: Vec<String>,
        /// An operation run when they do not; repeat for several.
        #[arg(long = "else", value_name = "OP")]
        else_ops: Vec<String>,
    },
    /// Load the cluster and report throughput and latency (see `raftkv bench --help`).
    Bench(Box<crate::bench::BenchArgs>),
    /// Write a CA and certificates for a TLS cluster (nodes 1..=N and a client) into a directory.
    Certs {
        /// Where to write them (created if missing; an existing set is never overwritten).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// How many nodes to make certificates for.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// An IP address or DNS name the nodes are reached at; repeat for several.
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
    },
    /// Print the side-by-side table (etcd vs raftkv) from files of `raftkv bench -o json` lines.
    BenchTable {
        /// Files holding the JSON lines (several rounds and both systems may be mixed).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// List keys: a prefix, or [START, END) (END omitted: to the last key).
    Range(RangeArgs),
    /// Print changes to KEY (or to every key with the prefix KEY, or in [KEY, END)) as they
    /// happen, until interrupted. If the node it watches fails, it resumes on another from the
    /// next revision: nothing is missed or printed twice.
    ///
    /// Text: `PUT key value (revision N)` / `DELETE key (revision N)`; `-o json`: one JSON
    /// object per change.
    Watch {
        key: String,
        /// Watch every key starting with KEY ('' for all keys).
        #[arg(long, conflicts_with = "end")]
        prefix: bool,
        /// Watch every key in [KEY, END).
        #[arg(long)]
        end: Option<String>,
        /// Start at revision N: changes made from N on are printed first (if the nodes still
        /// hold them).
        #[arg(long, value_name = "N")]
        rev: Option<u64>,
        /// Print each change's previous value too.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after printing this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// The service registry: register an instance (held until interrupted), list, pick and
    /// set weights (see `raftkv service --help`).
    Service {
        #[command(subcommand)]
        command: crate::service::ServiceCommand,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Leases: grant, keep-alive, revoke, ttl, list. Keys put with `--lease ID` are deleted
    /// when their lease expires or is revoked.
    Lease {
        #[command(subcommand)]
        command: crate::lease::LeaseCommand,
    },
    /// Take lock NAME (waiting in line for it), then run COMMAND while holding it, or hold it
    /// until interrupted. COMMAND gets the fencing token in RAFTKV_LOCK_TOKEN and the lock key
    /// in RAFTKV_LOCK_KEY; if the lock is lost, COMMAND is killed and the exit code is 4.
    /// Otherwise the exit code is COMMAND's.
    ///
    /// Example: raftkv lock nightly-backup -- ./backup.sh
    Lock {
        name: String,
        /// Time-to-live of the lock's lease: how long the lock outlives a holder that dies.
        #[arg(long, default_value = "10s")]
        ttl: DurationArg,
        /// The command to run while holding the lock (after `--`).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Campaign in election NAME with VALUE: print when elected, lead until interrupted, then
    /// resign. Without VALUE, print the leader's value at every change of leader.
    Elect {
        name: String,
        value: Option<String>,
        /// Time-to-live of the candidate's lease: how long a leader that dies keeps leading.
        #[arg(long, default_value = "10s")]
        ttl: DurationArg,
    },
    /// Membership: add, promote, remove and list nodes.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Write a consistent snapshot of the data to FILE, with a checksum (restore it with
    /// `raftkvd restore --from FILE ...`).
    Backup {
        file: std::path::PathBuf,
        /// Take it from this node (client address) instead of the leader.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add node ID (addresses CLIENT@PEER): as a learner, then, once caught up, as a voter.
    Add {
        id: u64,
        /// `CLIENT_ADDR@PEER_ADDR`, e.g. 127.0.0.1:7004@127.0.0.1:7104.
        addrs: String,
        /// Leave it a learner (it replicates but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Make learner ID a voter.
    Promote { id: u64 },
    /// Remove node ID (it stops serving; its id can never be used again).
    Remove { id: u64 },
    /// List members: id, addresses, voter or learner, replication progress.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show every node: role, term, leader, applied index, db size.
    Status,
    /// Print the leader's id and client address (`ID ADDR`); exit code 3 if there is none.
    Leader,
    /// Hand leadership to voter ID, or to the most up-to-date follower (before maintenance on
    /// the leader's machine; `raftkvd` does it by itself when the leader gets SIGTERM).
    TransferLeader { id: Option<u64> },
    /// Build a snapshot now (and purge the log behind it) on every node, or on --node.
    Snapshot {
        /// Only on this node (client address).
        #[arg(long)]
        node: Option<String>,
    },
    /// A live view of every node and a timeline of leader changes and node failures (q quits).
    Watch {
        /// Print one sample and exit (with -o json: one JSON object).
        #[arg(long)]
        once: bool,
        /// How often to refresh.
        #[arg(long, default_value = "250ms")]
        interval: DurationArg,
    },
}

#[derive(Debug, Args)]
pub struct RangeArgs {
    /// First key (inclusive).
    pub start: Option<String>,
    /// End key (exclusive).
    pub end: Option<String>,
    /// All keys starting with this prefix.
    #[arg(long, conflicts_with_all = ["start", "end"])]
    pub prefix: Option<String>,
    /// At most this many keys (at most 10000; 0: all, paged by 10000).
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    /// Print keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Print only the number of matching keys.
    #[arg(long)]
    pub count_only: bool,
    /// Highest key first.
    #[arg(long)]
    pub reverse: bool,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

impl RangeArgs {
    pub fn to_request(&self) -> Result<RangeRequest, String> {
        if self.prefix.is_none() && self.start.is_none() {
            return Err("give --prefix P, or START [END]; use \"\" as START for every key".into());
        }
        Ok(RangeRequest {
            start: self.start.clone().unwrap_or_default().into_bytes(),
            end: self.end.clone().unwrap_or_default().into_bytes(),
            prefix: self.prefix.clone().unwrap_or_default().into_bytes(),
            limit: self.limit,
            consistency: Consistency::from(self.consistency) as i32,
            keys_only: self.keys_only,
            count_only: self.count_only,
            reverse: self.reverse,
        })
    }
}

/// A duration written as a number and a unit: `250ms`, `5s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl DurationArg {
    /// Parses a duration that may be zero (`0s`), for options such as `--warmup`.
    pub fn zero_allowed(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
}

impl std::str::FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = parse_duration(s)?;
        if d.is_zero() {
            return Err("the duration must be more than zero".into());
        }
        Ok(Self(d))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit {unit:?} in {s:?}; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!("250ms".parse::<DurationArg>().unwrap().0, Duration::from_millis(250));
        assert_eq!("5s".parse::<DurationArg>().unwrap().0, Duration::from_secs(5));
        assert_eq!("2m".parse::<DurationArg>().unwrap().0, Duration::from_secs(120));
        assert!("0s".parse::<DurationArg>().is_err());
        assert!("5h".parse::<DurationArg>().is_err());
        assert!("fast".parse::<DurationArg>().is_err());
    }

    #[test]
    fn range_needs_a_selection() {
        let cli = Cli::try_parse_from(["raftkv", "range"]).unwrap();
        let Command::Range(r) = cli.command else {
            panic!("not range")
        };
        assert!(r.to_request().is_err());
        let cli = Cli::try_parse_from(["raftkv", "range", "--prefix", "a/", "--limit", "3"]).unwrap();
        let Command::Range(r) = cli.command else {
            panic!("not range")
        };
        let req = r.to_request().unwrap();
        assert_eq!((req.prefix.as_slice(), req.limit), (&b"a/"[..], 3));
        assert!(Cli::try_parse_from(["raftkv", "range", "a", "--prefix", "b"]).is_err());
    }
}
