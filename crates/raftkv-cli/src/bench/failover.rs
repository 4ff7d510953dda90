//! `raftkv bench failover`: how long writers see no successful write when the leader dies, and
//! whether anything acknowledged is lost — for raftkv or, with `--driver etcd`, etcd.
//!
//! `--clients` writers put unique keys continuously (and a quarter as many readers read
//! linearizably) through the driver: for raftkv its client with its defaults (retries under
//! exactly-once numbers), for etcd plain calls. Each round finds the leader, runs `--kill-cmd`
//! on it (by default `scripts/cluster.sh kill {id}`: SIGKILL), and measures the **window**: from
//! the moment the kill command has returned to the first acknowledgement of a write *started*
//! after it (a reply the old leader sent just before dying does not count as recovery). The
//! node is restarted with `--start-cmd` and the cluster given `--settle` before the next round.
//! At the end every acknowledged key is read back linearizably; one that is missing or
//! different counts as lost (there must be none).
//!
//! With raftkv and no cluster answering, the run starts one with `--cluster-up-cmd` and stops
//! it at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::driver::{ClientSettings, Driver, DriverKind, Leader, OpError};
use super::{config_error, BenchArgs, Target};

/// What a failover run measured.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FailoverReport {
    pub driver: String,
    pub windows_ms: Vec<f64>,
    pub writes_acknowledged: u64,
    pub acknowledged_lost: u64,
    pub indeterminate: u64,
    pub reads_ok: u64,
    pub errors_other: BTreeMap<String, u64>,
}

async fn run_hook(template: &str, id: &str) -> Result<(), OpError> {
    let cmd = template.replace("{id}", id);
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| config_error(format!("cannot run {cmd:?}: {e}")))?;
    if !status.success() {
        return Err(config_error(format!("{cmd:?} failed ({status})")));
    }
    Ok(())
}

/// Calls `op` every `pause` until it succeeds or `within` has passed; the last error then says
/// `what` could not be done.
async fn retrying<T, F, Fut>(within: Duration, pause: Duration, what: &str, mut op: F) -> Result<T, OpError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>>,
{
    let until = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => {
                return Err(OpError {
                    message: format!("{what} (tried for {within:?}): {}", e.message),
                    ..e
                })
            }
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
}

async fn current_leader(driver: &Driver, within: Duration) -> Result<Leader, OpError> {
    retrying(within, Duration::from_millis(50), "no leader", || driver.leader()).await
}

/// The wall-clock time of day, `HH:MM:SS.mmm` in UTC, to line rounds up with the nodes' logs.
fn utc_time_of_day() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn count(errors: &Mutex<BTreeMap<String, u64>>, kind: String) {
    *errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(kind)
        .or_default() += 1;
}

/// Runs the failover benchmark, starting (and afterwards stopping) a raftkv cluster when none
/// answers.
pub async fn run(args: &BenchArgs, raftkv_endpoints: &str, client: &ClientSettings) -> Result<FailoverReport, OpError> {
    args.validate().map_err(config_error)?;
    let endpoints = args.endpoints(raftkv_endpoints);
    let driver = Driver::connect(args.driver, endpoints, args.connections, Target::AnyNode, client).await?;
    let start_cluster =
        args.driver == DriverKind::Raftkv && !args.cluster_up_cmd.is_empty() && driver.max_term().await.is_err();
    if start_cluster {
        eprintln!(
            "no raftkv node answers at {endpoints}: starting a cluster ({})",
            args.cluster_up_cmd
        );
        run_hook(&args.cluster_up_cmd, "").await?;
    }
    let result = measure(args, &driver).await;
    if start_cluster {
        if let Err(e) = run_hook(&args.cluster_down_cmd, "").await {
            eprintln!("raftkv: stopping the cluster this run started: {e}");
        }
    }
    result
}

async fn measure(args: &BenchArgs, driver: &Driver) -> Result<FailoverReport, OpError> {
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    // Nanoseconds since `origin`: when the current round's kill completed, and the earliest
    // acknowledgement of a write started after it.
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let first_ack = Arc::new(AtomicU64::new(u64::MAX));
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let indeterminate = Arc::new(AtomicU64::new(0));
    let reads_ok = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let value = Arc::new(vec![b'v'; args.value_size]);
    let run_id = std::process::id();

    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (driver, stop, killed_at, first_ack, acked, indeterminate, errors, value) = (
            driver.clone(),
            stop.clone(),
            killed_at.clone(),
            first_ack.clone(),
            acked.clone(),
            indeterminate.clone(),
            errors.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("bench/failover/{run_id}/{w:03}/{i:08}").into_bytes();
                let started = origin.elapsed().as_nanos() as u64;
                match driver.put(w, &key, &value).await {
                    Ok(()) => {
                        if started > killed_at.load(Ordering::SeqCst) {
                            first_ack.fetch_min(origin.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        }
                        acked.lock().unwrap_or_else(|e| e.into_inner()).push(key);
                    }
                    Err(e) if e.indeterminate => {
                        indeterminate.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        count(&errors, e.kind);
                        // A definite failure (nothing reachable) is retried after a pause,
                        // as an application would, rather than in a hot loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    let probe_key = format!("bench/failover/{run_id}/000/00000001").into_bytes();
    for r in 0..(args.clients / 4).max(1) {
        let (driver, stop, reads_ok, errors, key) = (
            driver.clone(),
            stop.clone(),
            reads_ok.clone(),
            errors.clone(),
            probe_key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match driver.get(r, &key, true).await {
                    Ok(_) => {
                        reads_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        count(&errors, format!("read_{}", e.kind));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }

    let mut report = FailoverReport {
        driver: args.system_name(),
        ..Default::default()
    };
    let rounds = async {
        tokio::time::sleep(args.warmup.0).await;
        for round in 1..=args.kills {
            let leader = current_leader(driver, Duration::from_secs(10)).await?;
            first_ack.store(u64::MAX, Ordering::SeqCst);
            let kill_started = utc_time_of_day();
            run_hook(&args.kill_cmd, &leader.name).await?;
            let kill_done = origin.elapsed().as_nanos() as u64;
            killed_at.store(kill_done, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(30);
            let resumed = loop {
                let ack = first_ack.load(Ordering::SeqCst);
                if ack != u64::MAX {
                    break ack;
                }
                if Instant::now() >= until {
                    return Err(OpError {
                        kind: "unavailable".into(),
                        indeterminate: false,
                        message: format!(
                            "round {round}: no write acknowledged within 30 s of killing {}",
                            leader.name
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            killed_at.store(u64::MAX, Ordering::SeqCst);
            let window_ms = resumed.saturating_sub(kill_done) as f64 / 1e6;
            eprintln!(
                "round {round}: killed leader {} at {kill_started} UTC; writes resumed after {window_ms:.0} ms",
                leader.name
            );
            report.windows_ms.push(window_ms);
            run_hook(&args.start_cmd, &leader.name).await?;
            tokio::time::sleep(args.settle.0).await;
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    rounds?;

    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
    report.writes_acknowledged = acked.len() as u64;
    for key in &acked {
        if read_back(driver, key).await?.as_deref() != Some(value.as_slice()) {
            report.acknowledged_lost += 1;
        }
    }
    report.indeterminate = indeterminate.load(Ordering::Relaxed);
    report.reads_ok = reads_ok.load(Ordering::Relaxed);
    report.errors_other = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(report)
}

/// A linearizable read of `key`, retried for a while: the cluster may still be settling after
/// the last restart.
async fn read_back(driver: &Driver, key: &[u8]) -> Result<Option<Vec<u8>>, OpError> {
    let what = "cannot read back an acknowledged key to check it";
    retrying(Duration::from_secs(30), Duration::from_millis(100), what, || {
        driver.get(0, key, true)
    })
    .await
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
            "{} failover: {} kills; write window median {:.0} ms, max {:.0} ms\n\
             writes acknowledged {}, acknowledged lost {}, indeterminate {} ({:.3}% of writes)\n\
             reads ok {}; other errors: {}\n",
            self.driver,
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

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "driver": self.driver,
            "workload": "failover",
            "label": "failover",
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
    }

    pub fn json(&self) -> String {
        format!("{}\n", self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(windows: &[f64]) -> FailoverReport {
        FailoverReport {
            driver: "raftkv".into(),
            windows_ms: windows.to_vec(),
            writes_acknowledged: 999,
            indeterminate: 1,
            ..Default::default()
        }
    }

    #[test]
    fn median_and_max_of_the_windows() {
        assert_eq!(report(&[300.0, 100.0, 200.0]).median_ms(), 200.0);
        assert_eq!(report(&[400.0, 100.0, 200.0, 300.0]).median_ms(), 250.0);
        assert_eq!(report(&[400.0, 100.0]).max_ms(), 400.0);
        assert_eq!(report(&[]).median_ms(), 0.0);
    }

    #[test]
    fn json_carries_the_fields_the_issue_names() {
        let v: serde_json::Value = serde_json::from_str(&report(&[250.0, 310.0]).json()).expect("valid JSON");
        assert_eq!(v["kills"], 2);
        assert_eq!(v["windows_ms"], json!([250.0, 310.0]));
        assert_eq!(v["acknowledged_lost"], 0);
        assert_eq!(v["indeterminate"], 1);
        assert_eq!(v["errors_other"], json!({}));
        assert!(report(&[250.0]).text().contains("indeterminate 1 (0.100% of writes)"));
    }
}
