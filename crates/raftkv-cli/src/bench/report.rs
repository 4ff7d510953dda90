//! What a benchmark run measured, as text for people and JSON for scripts, and the progress
//! bar shown while it runs.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

/// The result of a steady workload (put, get, mixed, txn).
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub driver: String,
    pub workload: String,
    /// get and mixed: `linearizable` or `stale`.
    pub consistency: Option<String>,
    /// mixed: share of gets.
    pub read_ratio: Option<f64>,
    /// `leader` or `all`.
    pub target: String,
    pub clients: usize,
    pub connections: usize,
    pub keys: usize,
    pub key_size: usize,
    pub value_size: usize,
    /// Length of the measured part of the run.
    pub seconds: f64,
    /// Successful operations in it.
    pub ops: u64,
    /// Their latencies, in microseconds.
    pub latency: Histogram<u64>,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// txn: compare-and-swaps that found another value (they count as operations).
    pub txn_conflicts: u64,
    /// CPU the load generator used, in % of one core, over the whole run.
    pub generator_cpu_percent: f64,
    /// Elections held during the run (growth of the highest term), when it could be read.
    pub elections: Option<u64>,
    /// watch: how many watchers (`ops` are the events they received, `latency` the delay from
    /// a put's start to its event).
    pub watchers: Option<usize>,
    /// watch: puts the writers had acknowledged in the measured part.
    pub writes: Option<u64>,
}

impl BenchReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Latency at quantile `q`, in milliseconds (0 when nothing succeeded).
    pub fn ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// The workload and the options that change its meaning: `get linearizable`, `mixed 90% get`.
    pub fn label(&self) -> String {
        let mut label = self.workload.clone();
        if let Some(c) = &self.consistency {
            label.push(' ');
            label.push_str(c);
        }
        if let Some(r) = self.read_ratio {
            label.push_str(&format!(" {:.0}% get", r * 100.0));
        }
        if let Some(w) = self.watchers {
            label.push_str(&format!(" {w} watchers"));
        }
        if self.workload == "lease" {
            label.push_str(&format!(" {} leases", self.keys));
        }
        label
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{} {} ({} clients, target {}): {} ops in {:.1} s = {:.0} ops/s\n\
             latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            self.driver,
            self.label(),
            self.clients,
            self.target,
            self.ops,
            self.seconds,
            self.ops_per_sec(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms(),
        );
        if let Some(writes) = self.writes {
            out.push_str(&format!(
                "(ops are events delivered to the watchers; latency is from a put's start to its event)\n\
                 writes acknowledged: {writes} = {:.0} puts/s\n",
                writes as f64 / self.seconds.max(f64::EPSILON)
            ));
        }
        if self.workload == "txn" {
            out.push_str(&format!("compare-and-swap conflicts: {}\n", self.txn_conflicts));
        }
        out.push_str(&format!(
            "load generator CPU: {:.0}% of one core; elections during the run: {}\n",
            self.generator_cpu_percent,
            self.elections.map_or("unknown".to_string(), |e| e.to_string())
        ));
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("errors: {}\n", list.join(", ")));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "driver": self.driver,
            "workload": self.workload,
            "label": self.label(),
            "consistency": self.consistency,
            "read_ratio": self.read_ratio,
            "target": self.target,
            "clients": self.clients,
            "connections": self.connections,
            "keys": self.keys,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "seconds": self.seconds,
            "ops": self.ops,
            "ops_per_sec": self.ops_per_sec(),
            "latency_ms": {
                "p50": self.ms(0.5),
                "p90": self.ms(0.9),
                "p99": self.ms(0.99),
                "p999": self.ms(0.999),
                "max": self.max_ms(),
            },
            "errors": self.errors,
            "txn_conflicts": self.txn_conflicts,
            "generator_cpu_percent": self.generator_cpu_percent,
            "elections": self.elections,
            "watchers": self.watchers,
            "writes": self.writes,
        })
    }

    pub fn json(&self) -> String {
        format!("{}\n", self.to_json())
    }
}

/// A progress bar on stderr while a run goes (hidden when stderr is not a terminal).
pub struct Progress {
    bar: ProgressBar,
    by_ops: bool,
}

impl Progress {
    /// Counts operations up to `total` when given, else time up to `length`.
    pub fn new(driver: &str, workload: &str, total: Option<u64>, length: Duration) -> Self {
        let (len, template) = match total {
            Some(t) => (t, "{prefix} [{bar:30}] {pos}/{len} ops {msg}"),
            None => (
                length.as_millis() as u64,
                "{prefix} [{bar:30}] {elapsed}/{duration} {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{driver} {workload}"));
        Self {
            bar,
            by_ops: total.is_some(),
        }
    }

    pub fn update(&self, elapsed: Duration, ops_measured: u64) {
        if self.by_ops {
            self.bar.set_position(ops_measured);
        } else {
            self.bar.set_position(elapsed.as_millis() as u64);
        }
        let rate = ops_measured as f64 / elapsed.as_secs_f64().max(0.001);
        self.bar
            .set_message(format!("{ops_measured} measured ({rate:.0}/s so far)"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_us: &[u64]) -> BenchReport {
        let mut latency = crate::bench::new_histogram();
        for l in latencies_us {
            latency.record(*l).expect("in range");
        }
        BenchReport {
            driver: "raftkv".into(),
            workload: "get".into(),
            consistency: Some("linearizable".into()),
            read_ratio: None,
            target: "all".into(),
            clients: 64,
            connections: 4,
            keys: 1000,
            key_size: 16,
            value_size: 256,
            seconds: 2.0,
            ops: latency.len(),
            latency,
            errors: BTreeMap::from([("unavailable".to_string(), 3)]),
            txn_conflicts: 0,
            generator_cpu_percent: 12.5,
            elections: Some(0),
            watchers: None,
            writes: None,
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        // 1..=1000 ms: p50 = 500 ms, p99 = 990 ms, max = 1000 ms (3 significant digits).
        let r = report(&(1..=1000).map(|ms| ms * 1000).collect::<Vec<_>>());
        assert_eq!(r.ops, 1000);
        assert!((r.ops_per_sec() - 500.0).abs() < 1e-9);
        assert!((r.ms(0.5) - 500.0).abs() <= 0.5, "{}", r.ms(0.5));
        assert!((r.ms(0.99) - 990.0).abs() <= 1.0, "{}", r.ms(0.99));
        assert!((r.max_ms() - 1000.0).abs() <= 1.0, "{}", r.max_ms());
    }

    #[test]
    fn json_has_every_field_a_script_reads() {
        let r = report(&[1500, 2500, 40_000]);
        let v: serde_json::Value = serde_json::from_str(&r.json()).expect("valid JSON");
        assert_eq!(v["driver"], "raftkv");
        assert_eq!(v["label"], "get linearizable");
        assert_eq!(v["ops"], 3);
        assert_eq!(v["clients"], 64);
        assert_eq!(v["errors"]["unavailable"], 3);
        assert_eq!(v["elections"], 0);
        for q in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][q].as_f64().is_some(), "latency_ms.{q} missing");
        }
        assert!((v["latency_ms"]["max"].as_f64().unwrap() - 40.0).abs() < 0.1);
    }

    #[test]
    fn an_empty_run_reports_zeroes_not_garbage() {
        let r = report(&[]);
        assert_eq!(r.ms(0.99), 0.0);
        assert!(r.text().contains("0 ops"), "{}", r.text());
    }

    #[test]
    fn labels_name_what_changes_the_workload() {
        let mut r = report(&[1000]);
        assert_eq!(r.label(), "get linearizable");
        r.workload = "mixed".into();
        r.consistency = Some("stale".into());
        r.read_ratio = Some(0.9);
        assert_eq!(r.label(), "mixed stale 90% get");
        assert!(r.text().contains("errors: unavailable 3"), "{}", r.text());
    }
}
