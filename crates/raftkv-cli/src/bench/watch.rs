//! `raftkv bench watch`: how fast changes reach watchers. `--watchers` watchers follow the
//! benchmark's key prefix (spread over the nodes) while `--clients` writers put random keys;
//! each value carries the time its put started, so every watcher measures the delay from a
//! put's start to its event. Reported: events delivered per second over all watchers (`ops`),
//! that delay's percentiles (`latency_ms`), and the writers' acknowledged puts (`writes`).
//!
//! The delay includes the put's own commit (a watcher cannot see a change before it is
//! applied), so compare it with the put latency of a plain `bench put` run. Both systems are
//! driven alike: etcd's watchers are etcd-client watch streams on its members in turn.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::driver::OpError;
use super::report::BenchReport;
use super::{
    config_error, cpu_seconds, elections_between, new_histogram, prepare, BenchArgs, ClientSettings, KEY_PREFIX,
};

/// How long watchers keep receiving after the writers stop (the last puts' events).
const WATCH_GRACE: Duration = Duration::from_millis(500);

/// Digits of the start time (nanoseconds since the run began) at the front of every value.
const STAMP_DIGITS: usize = 16;

fn stamped_value(origin: Instant, size: usize) -> Vec<u8> {
    let nanos = origin.elapsed().as_nanos() as u64;
    let mut v = format!("{nanos:0STAMP_DIGITS$}").into_bytes();
    v.resize(size.max(STAMP_DIGITS), b'v');
    v
}

fn stamp_of(value: &[u8]) -> Option<Duration> {
    let digits = std::str::from_utf8(value.get(..STAMP_DIGITS)?).ok()?;
    digits.parse().ok().map(Duration::from_nanos)
}

/// What one watcher measured.
struct WatcherResult {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

pub async fn run(args: &BenchArgs, raftkv_endpoints: &str, client: &ClientSettings) -> Result<BenchReport, OpError> {
    let (keys, driver) = prepare(args, raftkv_endpoints, client).await?;
    let origin = Instant::now();
    let measure_from = origin + args.warmup.0;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watchers = Arc::new(AtomicBool::new(false));

    let mut feeds = Vec::with_capacity(args.watchers);
    for w in 0..args.watchers {
        feeds.push(driver.watch_prefix(w, KEY_PREFIX.as_bytes()).await?);
    }
    let watchers: Vec<_> = feeds
        .into_iter()
        .map(|mut feed| {
            let stop = stop_watchers.clone();
            tokio::spawn(async move {
                let mut out = WatcherResult {
                    latency: new_histogram(),
                    errors: BTreeMap::new(),
                };
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), feed.next()).await {
                        Err(_) => continue,
                        Ok(Err(e)) => {
                            *out.errors.entry(e.kind).or_default() += 1;
                            break;
                        }
                        Ok(Ok(values)) => {
                            let now = origin.elapsed();
                            for stamp in values.iter().filter_map(|v| stamp_of(v)) {
                                if origin + stamp >= measure_from {
                                    let _ = out.latency.record(now.saturating_sub(stamp).as_micros().max(1) as u64);
                                }
                            }
                        }
                    }
                }
                out
            })
        })
        .collect();

    let writes = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds();
    let term_before = driver.max_term().await.ok();
    let writers: Vec<_> = (0..args.clients)
        .map(|slot| {
            let (driver, stop, writes) = (driver.clone(), stop.clone(), writes.clone());
            let value_size = args.value_size;
            tokio::spawn(async move {
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let (_, key) = keys.random();
                    let measured = Instant::now() >= measure_from;
                    match driver.put(slot, &key, &stamped_value(origin, value_size)).await {
                        Ok(()) if measured => {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(e) if measured => *errors.entry(format!("put_{}", e.kind)).or_default() += 1,
                        Err(_) => {}
                    }
                }
                errors
            })
        })
        .collect();

    tokio::time::sleep_until(measure_from + args.duration.0).await;
    let measured_secs = measure_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in writers {
        for (k, v) in w.await.map_err(|e| config_error(format!("writer task failed: {e}")))? {
            *errors.entry(k).or_default() += v;
        }
    }
    // The events of the last puts are still on their way: let them arrive.
    tokio::time::sleep(WATCH_GRACE).await;
    stop_watchers.store(true, Ordering::Relaxed);
    let mut latency = new_histogram();
    for w in watchers {
        let r = w.await.map_err(|e| config_error(format!("watcher task failed: {e}")))?;
        let _ = latency.add(&r.latency);
        for (k, v) in r.errors {
            *errors.entry(format!("watch_{k}")).or_default() += v;
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    let term_after = driver.max_term().await.ok();
    Ok(BenchReport {
        driver: args.system_name(),
        workload: "watch".to_string(),
        consistency: None,
        read_ratio: None,
        target: "all".to_string(),
        clients: args.clients,
        connections: args.connections,
        keys: args.keys,
        key_size: args.key_size,
        value_size: args.value_size.max(STAMP_DIGITS),
        seconds: measured_secs,
        ops: latency.len(),
        latency,
        errors,
        txn_conflicts: 0,
        generator_cpu_percent: 100.0 * cpu / origin.elapsed().as_secs_f64().max(f64::EPSILON),
        elections: elections_between(term_before, term_after),
        watchers: Some(args.watchers),
        writes: Some(writes.load(Ordering::Relaxed)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_carries_its_start_time_and_has_the_asked_size() {
        let origin = Instant::now();
        let v = stamped_value(origin, 64);
        assert_eq!(v.len(), 64);
        assert!(stamp_of(&v).is_some_and(|d| d <= origin.elapsed()));
        assert_eq!(
            stamped_value(origin, 4).len(),
            STAMP_DIGITS,
            "never shorter than the stamp"
        );
        assert_eq!(stamp_of(b"not a stamp at all"), None);
    }
}
