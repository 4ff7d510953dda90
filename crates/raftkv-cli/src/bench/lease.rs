//! `raftkv bench lease`: what it costs to keep many leases alive. `--leases` leases of `--ttl`
//! are granted, then each is kept alive every third of its TTL — the pace the client library
//! and etcd's clients use — with the keep-alives of all leases spread evenly over that
//! interval, by `--clients` tasks. Reported: keep-alives per second (`ops`), their latency
//! (`latency_ms`), errors, and the elections held during the run (keep-alive load must not
//! starve heartbeats). The leases are revoked at the end.
//!
//! Each system is driven the way its own client keeps a lease alive: raftkv with the
//! one-shot keep-alive the client library sends (to the leader), etcd with one keep-alive
//! stream per lease (etcd-client's `lease_keep_alive`), a request and its answer per
//! keep-alive.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::driver::{Driver, OpError};
use super::report::BenchReport;
use super::{config_error, cpu_seconds, elections_between, new_histogram, BenchArgs, ClientSettings};

/// What one keep-alive task measured.
struct TaskResult {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// When lease `index` of `count` is due for its `round`-th keep-alive: leases are spread evenly
/// over the interval, so the keep-alive load is flat rather than in bursts.
fn due(start: Instant, interval: Duration, index: usize, count: usize, round: u32) -> Instant {
    let phase = interval.mul_f64(index as f64 / count.max(1) as f64);
    start + interval * round + phase
}

pub async fn run(args: &BenchArgs, raftkv_endpoints: &str, client: &ClientSettings) -> Result<BenchReport, OpError> {
    args.validate().map_err(config_error)?;
    let driver = Driver::connect(
        args.driver,
        args.endpoints(raftkv_endpoints),
        args.connections,
        args.target,
        client,
    )
    .await?;
    let ttl = args.ttl.0;
    let interval = ttl / 3;

    // Grant the leases and open their keepers, `clients` at a time.
    let tasks = args.clients.min(args.leases).max(1);
    let mut granting = Vec::new();
    for t in 0..tasks {
        let driver = driver.clone();
        let indexes: Vec<usize> = (t..args.leases).step_by(tasks).collect();
        granting.push(tokio::spawn(async move {
            let mut keepers = Vec::with_capacity(indexes.len());
            for index in indexes {
                let id = driver.lease_grant(t, ttl).await?;
                keepers.push((index, id, driver.lease_keeper(t, id).await?));
            }
            Ok::<_, OpError>(keepers)
        }));
    }
    let mut per_task = Vec::new();
    for g in granting {
        per_task.push(g.await.map_err(|e| config_error(format!("grant task failed: {e}")))??);
    }

    let start = Instant::now();
    let measure_from = start + args.warmup.0;
    let end = measure_from + args.duration.0;
    let cpu_before = cpu_seconds();
    let term_before = driver.max_term().await.ok();
    let count = args.leases;
    let mut running = Vec::new();
    for keepers in per_task {
        running.push(tokio::spawn(async move {
            let mut keepers = keepers;
            let mut out = TaskResult {
                latency: new_histogram(),
                errors: BTreeMap::new(),
            };
            let mut round = 0;
            'rounds: loop {
                for (index, _, keeper) in keepers.iter_mut() {
                    let at = due(start, interval, *index, count, round);
                    if at >= end {
                        break 'rounds;
                    }
                    tokio::time::sleep_until(at).await;
                    let sent = Instant::now();
                    let outcome = keeper.keep_alive().await;
                    if at < measure_from {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            let _ = out.latency.record(sent.elapsed().as_micros().max(1) as u64);
                        }
                        Err(e) => *out.errors.entry(format!("keep_alive_{}", e.kind)).or_default() += 1,
                    }
                }
                round += 1;
            }
            (out, keepers)
        }));
    }
    let mut latency = new_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids = Vec::new();
    for r in running {
        let (result, keepers) = r
            .await
            .map_err(|e| config_error(format!("keep-alive task failed: {e}")))?;
        let _ = latency.add(&result.latency);
        for (k, v) in result.errors {
            *errors.entry(k).or_default() += v;
        }
        ids.extend(keepers.into_iter().map(|(_, id, _)| id));
    }
    let measured_secs = measure_from.elapsed().min(args.duration.0 + interval).as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let term_after = driver.max_term().await.ok();

    // Clean up: revoke every lease (not measured).
    let mut revoking = Vec::new();
    for (t, chunk) in ids.chunks(ids.len().div_ceil(tasks).max(1)).enumerate() {
        let (driver, chunk) = (driver.clone(), chunk.to_vec());
        revoking.push(tokio::spawn(async move {
            for id in chunk {
                let _ = driver.lease_revoke(t, id).await;
            }
        }));
    }
    for r in revoking {
        let _ = r.await;
    }

    Ok(BenchReport {
        driver: args.system_name(),
        workload: "lease".to_string(),
        consistency: None,
        read_ratio: None,
        target: "leader".to_string(),
        clients: args.clients,
        connections: args.connections,
        keys: args.leases,
        key_size: 0,
        value_size: 0,
        seconds: measured_secs,
        ops: latency.len(),
        latency,
        errors,
        txn_conflicts: 0,
        generator_cpu_percent: 100.0 * cpu / start.elapsed().as_secs_f64().max(f64::EPSILON),
        elections: elections_between(term_before, term_after),
        watchers: None,
        writes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alives_are_spread_over_the_interval() {
        let start = Instant::now();
        let interval = Duration::from_secs(5);
        assert_eq!(due(start, interval, 0, 4, 0), start);
        assert_eq!(due(start, interval, 2, 4, 0), start + Duration::from_millis(2500));
        assert_eq!(due(start, interval, 3, 4, 1), start + Duration::from_millis(8750));
    }
}
