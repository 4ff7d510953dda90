//! `raftkv bench-table`: the side-by-side table of a comparison run.
//!
//! Reads the JSON lines that `raftkv bench -o json` printed for each system (in any order,
//! several rounds each), pairs etcd's and raftkv's results for the same workload, target and
//! client count, and prints one Markdown table: the median over rounds of each figure, and the
//! ratio raftkv / etcd (above 1 means raftkv is faster; for failover windows, below 1 means
//! raftkv recovers faster). For `watch` rows, ops/s are events delivered to all watchers and the
//! latencies are from a put's start to its event.

use std::collections::BTreeMap;

use serde_json::Value;

/// One row's key: what was run, so that etcd's and raftkv's results line up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    order: usize,
    label: String,
    target: String,
    clients: u64,
}

#[derive(Debug, Default)]
struct Figures {
    ops_per_sec: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    elections: Vec<u64>,
    window_median: Vec<f64>,
    window_max: Vec<f64>,
    lost: u64,
    indeterminate: u64,
    kills: u64,
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The report name of raftkv driven through its etcd port by the etcd driver
/// (`raftkv bench --driver etcd --report-as raftkv-etcd`).
pub const ETCD_API_DRIVER: &str = "raftkv-etcd";

fn workload_order(workload: &str) -> usize {
    ["put", "get", "mixed", "txn", "watch", "lease", "failover"]
        .iter()
        .position(|w| *w == workload)
        .unwrap_or(usize::MAX)
}

/// Builds the table from the text of JSON-lines files. Lines that are not JSON objects with a
/// `driver` and a `workload` are skipped (the benchmark's logs may be mixed in).
pub fn render(inputs: &[String]) -> Result<String, String> {
    let mut rows: BTreeMap<RowKey, BTreeMap<String, Figures>> = BTreeMap::new();
    for line in inputs.iter().flat_map(|text| text.lines()) {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        let (Some(driver), Some(workload)) = (v["driver"].as_str(), v["workload"].as_str()) else {
            continue;
        };
        let key = RowKey {
            order: workload_order(workload),
            label: v["label"].as_str().unwrap_or(workload).to_string(),
            target: v["target"].as_str().unwrap_or("-").to_string(),
            clients: v["clients"].as_u64().unwrap_or(0),
        };
        let f = rows.entry(key).or_default().entry(driver.to_string()).or_default();
        if workload == "failover" {
            f.window_median.extend(v["window_median_ms"].as_f64());
            f.window_max.extend(v["window_max_ms"].as_f64());
            f.lost += v["acknowledged_lost"].as_u64().unwrap_or(0);
            f.indeterminate += v["indeterminate"].as_u64().unwrap_or(0);
            f.kills += v["kills"].as_u64().unwrap_or(0);
        } else {
            f.ops_per_sec.extend(v["ops_per_sec"].as_f64());
            f.p50.extend(v["latency_ms"]["p50"].as_f64());
            f.p99.extend(v["latency_ms"]["p99"].as_f64());
            f.elections.extend(v["elections"].as_u64());
        }
    }
    if rows.is_empty() {
        return Err("no benchmark results found (expected lines of `raftkv bench -o json`)".into());
    }
    let fmt = |x: Option<f64>, digits: usize| x.map_or("–".to_string(), |x| format!("{x:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    };
    let empty = Figures::default();
    let mut out = String::from(
        "| workload | target | clients | etcd ops/s | raftkv ops/s | raftkv/etcd | etcd p50 / p99 ms | raftkv p50 / p99 ms | elections etcd / raftkv |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failover = String::new();
    let mut through_etcd_api = String::new();
    for (key, by_driver) in &rows {
        let etcd = by_driver.get("etcd").unwrap_or(&empty);
        let raftkv = by_driver.get("raftkv").unwrap_or(&empty);
        if key.label == "failover" {
            for (name, f) in [("etcd", etcd), ("raftkv", raftkv)] {
                if f.kills == 0 {
                    continue;
                }
                failover.push_str(&format!(
                    "| {name} | {} | {} | {} | {} | {} |\n",
                    f.kills,
                    fmt(median(&f.window_median), 0),
                    fmt(f.window_max.iter().copied().reduce(f64::max), 0),
                    f.lost,
                    f.indeterminate,
                ));
            }
            continue;
        }
        let elections = |f: &Figures| {
            if f.elections.is_empty() {
                "–".to_string()
            } else {
                f.elections.iter().sum::<u64>().to_string()
            }
        };
        if let Some(via) = by_driver.get(ETCD_API_DRIVER) {
            through_etcd_api.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |\n",
                key.label,
                key.target,
                key.clients,
                fmt(median(&etcd.ops_per_sec), 0),
                fmt(median(&via.ops_per_sec), 0),
                ratio(median(&via.ops_per_sec), median(&etcd.ops_per_sec)),
                fmt(median(&raftkv.ops_per_sec), 0),
                ratio(median(&via.ops_per_sec), median(&raftkv.ops_per_sec)),
                fmt(median(&etcd.p50), 2),
                fmt(median(&etcd.p99), 2),
                fmt(median(&via.p50), 2),
                fmt(median(&via.p99), 2),
            ));
            if etcd.ops_per_sec.is_empty() && raftkv.ops_per_sec.is_empty() {
                continue;
            }
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |\n",
            key.label,
            key.target,
            key.clients,
            fmt(median(&etcd.ops_per_sec), 0),
            fmt(median(&raftkv.ops_per_sec), 0),
            ratio(median(&raftkv.ops_per_sec), median(&etcd.ops_per_sec)),
            fmt(median(&etcd.p50), 2),
            fmt(median(&etcd.p99), 2),
            fmt(median(&raftkv.p50), 2),
            fmt(median(&raftkv.p99), 2),
            elections(etcd),
            elections(raftkv),
        ));
    }
    if !through_etcd_api.is_empty() {
        out.push_str(
            "\nThe same client library (etcd-client) on both systems: raftkv through its etcd port.\n\n\
             | workload | target | clients | etcd ops/s | raftkv (etcd API) ops/s | etcd API / etcd | raftkv native ops/s | etcd API / native | etcd p50 / p99 ms | raftkv (etcd API) p50 / p99 ms |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        out.push_str(&through_etcd_api);
    }
    if !failover.is_empty() {
        out.push_str(
            "\n| failover | kills | window median ms | window max ms | acknowledged lost | indeterminate |\n\
             |---|---|---|---|---|---|\n",
        );
        out.push_str(&failover);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(driver: &str, workload: &str, clients: u64, ops: f64, p99: f64) -> String {
        serde_json::json!({
            "driver": driver, "workload": workload, "label": workload, "target": "all",
            "clients": clients, "ops_per_sec": ops,
            "latency_ms": {"p50": p99 / 4.0, "p99": p99}, "elections": 0,
        })
        .to_string()
    }

    #[test]
    fn pairs_systems_by_workload_and_clients_and_takes_the_median_of_rounds() {
        let etcd = [
            line("etcd", "put", 64, 5000.0, 28.0),
            line("etcd", "put", 64, 5400.0, 30.0),
            line("etcd", "put", 64, 5200.0, 29.0),
        ]
        .join("\n");
        let raftkv = [
            "some log line that is not JSON".to_string(),
            line("raftkv", "put", 64, 10400.0, 20.0),
            line("raftkv", "put", 1, 700.0, 2.0),
        ]
        .join("\n");
        let table = render(&[etcd, raftkv]).expect("a table");
        let row = table
            .lines()
            .find(|l| l.starts_with("| put | all | 64 |"))
            .expect("put row");
        assert!(row.contains("| 5200 | 10400 | 2.00× |"), "{row}");
        assert!(row.contains("| 7.25 / 29.00 | 5.00 / 20.00 |"), "{row}");
        let single = table
            .lines()
            .find(|l| l.starts_with("| put | all | 1 |"))
            .expect("1-client row");
        assert!(
            single.contains("| – | 700 | – |"),
            "a missing side shows a dash: {single}"
        );
    }

    #[test]
    fn failover_results_get_their_own_table() {
        let f = serde_json::json!({
            "driver": "raftkv", "workload": "failover", "label": "failover", "kills": 5,
            "window_median_ms": 280.0, "window_max_ms": 420.0, "acknowledged_lost": 0, "indeterminate": 2,
        })
        .to_string();
        let table = render(&[f]).expect("a table");
        assert!(table.contains("| raftkv | 5 | 280 | 420 | 0 | 2 |"), "{table}");
    }

    #[test]
    fn raftkv_through_its_etcd_port_gets_its_own_table() {
        let lines = [
            line("etcd", "put", 16, 4000.0, 8.0),
            line("raftkv", "put", 16, 3000.0, 8.0),
            line("raftkv-etcd", "put", 16, 2700.0, 10.0),
        ]
        .join("\n");
        let table = render(&[lines]).expect("a table");
        let row = table
            .lines()
            .filter(|l| l.starts_with("| put | all | 16 |"))
            .nth(1)
            .expect("a row in the second table");
        assert!(row.contains("| 4000 | 2700 | 0.68× | 3000 | 0.90× |"), "{row}");
    }

    #[test]
    fn no_results_is_an_error_not_an_empty_table() {
        assert!(render(&["nothing here".to_string()]).is_err());
    }
}
