//! `raftkv bench failover`: how long writers see no successful write when the leader dies, and
//! whether anything acknowledged is lost.
//!
//! Writers put unique keys continuously (and readers read) through the normal client, with its
//! defaults. Each round finds the leader, runs `--kill-cmd` on it (by default
//! `scripts/cluster.sh kill {id}`: SIGKILL), and measures the **window**: from the moment the
//! kill command has returned to the first acknowledgement of a write started after it. The node is then restarted with `--start-cmd` and the
//! cluster given `--settle` before the next round. At the end every acknowledged key is read
//! back linearizably; one that is missing or different counts as lost (there must be none).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_client::pb::Consistency;
use raftkv_client::{Client, ClientConfig, ClientError};
use serde_json::json;
use tokio::time::Instant;

use crate::bench::BenchArgs;

/// What a failover run measured.
#[derive(Debug, Default)]
pub struct FailoverReport {
    pub windows_ms: Vec<f64>,
    pub writes_acknowledged: u64,
    pub acknowledged_lost: u64,
    pub indeterminate: u64,
    pub reads_ok: u64,
    pub errors_other: BTreeMap<String, u64>,
}

fn kind(e: &ClientError) -> String {
    match e {
        ClientError::Unavailable(_) => "unavailable".into(),
        ClientError::InvalidArgument(_) => "invalid_argument".into(),
        ClientError::Config(_) => "config".into(),
        ClientError::Server { code, .. } => format!("server_{code:?}").to_lowercase(),
        ClientError::Indeterminate(_) => "indeterminate".into(),
    }
}

async fn run_hook(template: &str, id: u64) -> Result<(), ClientError> {
    let cmd = template.replace("{id}", &id.to_string());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| ClientError::Config(format!("cannot run {cmd:?}: {e}")))?;
    if !status.success() {
        return Err(ClientError::Config(format!("{cmd:?} failed ({status})")));
    }
    Ok(())
}

async fn current_leader(client: &Client, deadline: Duration) -> Result<u64, ClientError> {
    let until = Instant::now() + deadline;
    loop {
        if let Some((id, _)) = crate::output::leader(&client.cluster_status().await) {
            return Ok(id);
        }
        if Instant::now() >= until {
            return Err(ClientError::Unavailable(format!("no leader within {deadline:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the failover benchmark.
pub async fn run(args: &BenchArgs, endpoints: &str) -> Result<FailoverReport, ClientError> {
    let config = ClientConfig::parse(endpoints)?;
    let client = Client::new(config.clone())?;
    let probe = Client::new(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    // Nanoseconds since `origin`: when the current round's kill completed, and the earliest
    // acknowledgement of a write *started* after it (a reply the old leader sent just before
    // dying must not count as recovery).
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let first_ack = Arc::new(AtomicU64::new(u64::MAX));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let indeterminate = Arc::new(AtomicU64::new(0));
    let reads_ok = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();

    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (client, stop, killed_at, first_ack, acked, indeterminate, errors) = (
            client.clone(),
            stop.clone(),
            killed_at.clone(),
            first_ack.clone(),
            acked.clone(),
            indeterminate.clone(),
            errors.clone(),
        );
        let value = vec![b'v'; args.value_size];
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("bench/failover/{w:03}/{i:08}");
                let started = origin.elapsed().as_nanos() as u64;
                match client.put(key.clone(), value.clone()).await {
                    Ok(_) => {
                        if started > killed_at.load(Ordering::SeqCst) {
                            first_ack.fetch_min(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        }
                        acked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((key, String::from_utf8_lossy(&value).into_owned()));
                    }
                    Err(ClientError::Indeterminate(_)) => {
                        indeterminate.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(kind(&e))
                            .or_default() += 1
                    }
                }
            }
        }));
    }
    for _ in 0..(args.clients / 4).max(1) {
        let (client, stop, reads_ok, errors) = (client.clone(), stop.clone(), reads_ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get_with("bench/failover/000/00000001", Consistency::Linearizable, None)
                    .await
                {
                    Ok(_) => {
                        reads_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(format!("read_{}", kind(&e)))
                            .or_default() += 1
                    }
                }
            }
        }));
    }

    let mut report = FailoverReport::default();
    tokio::time::sleep(args.warmup.0).await;
    for round in 1..=args.kills {
        let leader = current_leader(&probe, Duration::from_secs(10)).await?;
        first_ack.store(u64::MAX, Ordering::SeqCst);
        run_hook(&args.kill_cmd, leader).await?;
        let kill_done = origin.elapsed().as_nanos() as u64;
        killed_at.store(kill_done, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(30);
        let resumed = loop {
            let ack = first_ack.load(Ordering::SeqCst);
            if ack != u64::MAX {
                break ack;
            }
            if Instant::now() >= until {
                return Err(ClientError::Unavailable(format!(
                    "round {round}: no write acknowledged within 30 s of killing node {leader}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        killed_at.store(u64::MAX, Ordering::SeqCst);
        let window_ms = resumed.saturating_sub(kill_done) as f64 / 1e6;
        eprintln!("round {round}: killed leader node {leader}; writes resumed after {window_ms:.0} ms");
        report.windows_ms.push(window_ms);
        run_hook(&args.start_cmd, leader).await?;
        tokio::time::sleep(args.settle.0).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
    report.writes_acknowledged = acked.len() as u64;
    for (key, value) in &acked {
        let found = client.get(key.clone()).await?;
        if found.kv.map(|kv| kv.value) != Some(value.clone().into_bytes()) {
            report.acknowledged_lost += 1;
        }
    }
    report.indeterminate = indeterminate.load(Ordering::Relaxed);
    report.reads_ok = reads_ok.load(Ordering::Relaxed);
    report.errors_other = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(report)
}

impl FailoverReport {
    fn sorted(&self) -> Vec<f64> {
        let mut w = self.windows_ms.clone();
        w.sort_by(|a, b| a.total_cmp(b));
        w
    }

    pub fn median_ms(&self) -> f64 {
        let w = self.sorted();
        match w.len() {
            0 => 0.0,
            n if n % 2 == 1 => w[n / 2],
            n => (w[n / 2 - 1] + w[n / 2]) / 2.0,
        }
    }

    pub fn max_ms(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    fn indeterminate_share(&self) -> f64 {
        let calls = self.writes_acknowledged + self.indeterminate;
        self.indeterminate as f64 / (calls.max(1)) as f64
    }

    pub fn text(&self) -> String {
        format!(
            "failover: {} kills; write window median {:.0} ms, max {:.0} ms\n\
             writes acknowledged {}, acknowledged lost {}, indeterminate {} ({:.3}% of writes)\n\
             reads ok {}; other errors: {}\n",
            self.windows_ms.len(),
            self.median_ms(),
            self.max_ms(),
            self.writes_acknowledged,
            self.acknowledged_lost,
            self.indeterminate,
            100.0 * self.indeterminate_share(),
            self.reads_ok,
            if self.errors_other.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", self.errors_other)
            }
        )
    }

    pub fn json(&self) -> String {
        format!(
            "{}\n",
            json!({
                "workload": "failover",
                "kills": self.windows_ms.len(),
                "windows_ms": self.windows_ms,
                "window_median_ms": self.median_ms(),
                "window_max_ms": self.max_ms(),
                "writes_acknowledged": self.writes_acknowledged,
                "acknowledged_lost": self.acknowledged_lost,
                "indeterminate": self.indeterminate,
                "reads_ok": self.reads_ok,
                "errors_other": self.errors_other,
            })
        )
    }
}
