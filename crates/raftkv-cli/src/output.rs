//! Rendering replies as text for people and as JSON for scripts.
//!
//! In JSON, keys and values are strings when they are valid UTF-8; otherwise they appear as
//! `key_hex` / `value_hex` so no byte is ever lost.

use raftkv_client::pb::{
    event, txn_op_response, DeleteResponse, Event, GetResponse, KeyValue, PutResponse, RangeResponse, ResponseHeader,
    Role, TxnResponse,
};
use raftkv_client::NodeReport;
use serde_json::{json, Map, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(format!("{name}_hex"), Value::String(hex(bytes))),
    };
}

fn kv_json(kv: &KeyValue, with_value: bool) -> Value {
    let mut obj = Map::new();
    put_bytes(&mut obj, "key", &kv.key);
    if with_value {
        put_bytes(&mut obj, "value", &kv.value);
    }
    obj.insert("create_revision".into(), kv.create_revision.into());
    obj.insert("mod_revision".into(), kv.mod_revision.into());
    obj.insert("version".into(), kv.version.into());
    Value::Object(obj)
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    match h {
        None => Value::Null,
        Some(h) => json!({
            "cluster_id": format!("{:016x}", h.cluster_id),
            "node_id": h.node_id,
            "raft_term": h.raft_term,
            "revision": h.revision,
            "leader_id": h.leader_id,
        }),
    }
}

fn to_line(v: Value) -> String {
    format!("{v}\n")
}

pub fn put_text(r: &PutResponse) -> String {
    format!("OK (revision {})\n", r.revision)
}

pub fn put_json(r: &PutResponse) -> String {
    to_line(json!({
        "revision": r.revision,
        "prev_kv": r.prev_kv.as_ref().map(|kv| kv_json(kv, true)),
        "header": header_json(&r.header),
    }))
}

pub fn get_json(r: &GetResponse, degraded: bool) -> String {
    let mut v = match &r.kv {
        Some(kv) => kv_json(kv, true),
        None => json!({}),
    };
    if let Value::Object(obj) = &mut v {
        obj.insert("found".into(), r.kv.is_some().into());
        obj.insert("degraded".into(), degraded.into());
        obj.insert("header".into(), header_json(&r.header));
    }
    to_line(v)
}

fn delete_value(r: &DeleteResponse) -> Value {
    json!({
        "deleted": r.deleted,
        "revision": r.revision,
        "prev_kvs": r.prev_kvs.iter().map(|kv| kv_json(kv, true)).collect::<Vec<_>>(),
        "header": header_json(&r.header),
    })
}

pub fn delete_json(r: &DeleteResponse) -> String {
    to_line(delete_value(r))
}

pub fn txn_json(r: &TxnResponse) -> String {
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|x| match &x.response {
            Some(txn_op_response::Response::Put(p)) => json!({ "put": {
                "revision": p.revision,
                "prev_kv": p.prev_kv.as_ref().map(|kv| kv_json(kv, true)),
            }}),
            Some(txn_op_response::Response::Delete(d)) => json!({ "delete": delete_value(d) }),
            Some(txn_op_response::Response::Get(g)) => json!({ "get": {
                "found": g.kv.is_some(),
                "kv": g.kv.as_ref().map(|kv| kv_json(kv, true)),
            }}),
            None => Value::Null,
        })
        .collect();
    to_line(json!({
        "succeeded": r.succeeded,
        "revision": r.revision,
        "responses": responses,
        "header": header_json(&r.header),
    }))
}

/// `succeeded` / `compare failed`, then one line per operation result.
pub fn txn_text(r: &TxnResponse) -> String {
    let mut out = if r.succeeded {
        format!("succeeded (revision {})\n", r.revision)
    } else {
        format!("compare failed (revision {}); ran the else branch\n", r.revision)
    };
    for x in &r.responses {
        match &x.response {
            Some(txn_op_response::Response::Put(_)) => out.push_str("put: OK\n"),
            Some(txn_op_response::Response::Delete(d)) => out.push_str(&format!("del: {}\n", d.deleted)),
            Some(txn_op_response::Response::Get(g)) => match &g.kv {
                Some(kv) => out.push_str(&format!(
                    "get {}: {}\n",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                )),
                None => out.push_str("get: (not found)\n"),
            },
            None => {}
        }
    }
    out
}

pub fn range_json(r: &RangeResponse, degraded: bool) -> String {
    to_line(json!({
        "degraded": degraded,
        "kvs": r.kvs.iter().map(|kv| kv_json(kv, true)).collect::<Vec<_>>(),
        "more": r.more,
        "count": r.count,
        "next_key": String::from_utf8_lossy(&r.next_key),
        "header": header_json(&r.header),
    }))
}

pub fn range_text(r: &RangeResponse, count_only: bool, keys_only: bool) -> String {
    if count_only {
        return format!("{}\n", r.count);
    }
    let mut out = String::new();
    for kv in &r.kvs {
        out.push_str(&String::from_utf8_lossy(&kv.key));
        if !keys_only {
            out.push('\t');
            out.push_str(&String::from_utf8_lossy(&kv.value));
        }
        out.push('\n');
    }
    out
}

pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::Learner) => "learner",
        Ok(Role::Shutdown) => "shutdown",
        Ok(Role::SteppedDown) => "stepped-down (no quorum)",
        Ok(Role::Unspecified) | Err(_) => "unknown",
    }
}

/// Quorum arithmetic over the reports: (voters answering, voters in total, quorum size).
fn voter_counts(reports: &[NodeReport]) -> Option<(usize, usize, usize)> {
    let view = reports
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .max_by_key(|s| (s.term, s.role == Role::Leader as i32))?;
    let voters: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.client_addr.as_str())
        .collect();
    let up = reports
        .iter()
        .filter(|r| r.status.is_ok() && voters.contains(&r.addr.as_str()))
        .count();
    Some((up, voters.len(), voters.len() / 2 + 1))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The node that reports itself leader with the highest term: `(id, client address)`.
pub fn leader(reports: &[NodeReport]) -> Option<(u64, String)> {
    reports
        .iter()
        .filter_map(|r| r.status.as_ref().ok().map(|s| (s, &r.addr)))
        .filter(|(s, _)| s.role == Role::Leader as i32)
        .max_by_key(|(s, _)| s.term)
        .map(|(s, addr)| (s.id, addr.clone()))
}

fn latency_text(d: Option<std::time::Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1}ms", d.as_secs_f64() * 1000.0))
}

/// The client's breaker state for a node (`-` when it is not one of the client's endpoints).
fn breaker_text(r: &NodeReport) -> String {
    r.endpoint.as_ref().map_or("-".to_string(), |e| e.breaker.to_string())
}

pub fn status_table(reports: &[NodeReport]) -> String {
    const COLUMNS: [&str; 12] = [
        "NODE",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "APPLIED",
        "COMMITTED",
        "SNAPSHOT",
        "PURGED",
        "DB SIZE",
        "LATENCY",
        "BREAKER",
    ];
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
    for r in reports {
        let id = r.id.map_or("?".to_string(), |i| i.to_string());
        let mut row = vec![id, r.addr.clone()];
        match &r.status {
            Ok(s) => row.extend([
                role_name(s.role).to_string(),
                s.term.to_string(),
                if s.leader_id == 0 {
                    "-".into()
                } else {
                    s.leader_id.to_string()
                },
                s.applied_index.to_string(),
                s.committed_index.to_string(),
                s.snapshot_index.to_string(),
                s.purged_index.to_string(),
                human_bytes(s.db_size_bytes),
            ]),
            Err(_) => {
                row.push("unreachable".into());
                row.extend(std::iter::repeat_n("-".to_string(), 7));
            }
        }
        row.push(latency_text(r.latency));
        row.push(breaker_text(r));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    match (leader(reports).map(|(id, _)| id), voter_counts(reports)) {
        (Some(l), Some((up, total, quorum))) => {
            out.push_str(&format!("leader: node {l}; voters up {up}/{total} (quorum {quorum})\n"))
        }
        (None, Some((up, total, quorum))) => out.push_str(&format!(
            "no leader; voters up {up}/{total} (quorum {quorum}){}\n",
            if up < quorum {
                ": writes and linearizable reads are unavailable"
            } else {
                ": election in progress?"
            }
        )),
        (_, None) => out.push_str("no node answered\n"),
    }
    for r in reports {
        match &r.status {
            Err(e) => out.push_str(&format!("{}: {e}\n", r.addr)),
            Ok(s) if s.disk_space_alarm => out.push_str(&format!(
                "node {}: DISK NEARLY FULL ({} free): it refuses writes until space is freed\n",
                s.id,
                human_bytes(s.disk_free_bytes)
            )),
            Ok(_) => {}
        }
    }
    out
}

pub fn status_json(reports: &[NodeReport]) -> String {
    let nodes: Vec<Value> = reports
        .iter()
        .map(|r| match &r.status {
            Ok(s) => json!({
                "id": s.id,
                "addr": r.addr,
                "latency_ms": r.latency.map(|d| d.as_secs_f64() * 1000.0),
                "breaker": r.endpoint.as_ref().map(|e| e.breaker),
                "role": role_name(s.role),
                "term": s.term,
                "leader": s.leader_id,
                "last_log_index": s.last_log_index,
                "committed_index": s.committed_index,
                "applied_index": s.applied_index,
                "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "db_size_bytes": s.db_size_bytes,
                "disk_free_bytes": s.disk_free_bytes,
                "disk_space_alarm": s.disk_space_alarm,
                "cluster_id": s.header.as_ref().map(|h| format!("{:016x}", h.cluster_id)),
            }),
            Err(e) => json!({
                "id": r.id,
                "addr": r.addr,
                "role": "unreachable",
                "error": e,
                "breaker": r.endpoint.as_ref().map(|e| e.breaker),
            }),
        })
        .collect();
    let mut doc = json!({ "nodes": nodes });
    if let (Some((up, total, quorum)), Value::Object(obj)) = (voter_counts(reports), &mut doc) {
        obj.insert("voters_up".into(), up.into());
        obj.insert("voters_total".into(), total.into());
        obj.insert("quorum".into(), quorum.into());
    }
    to_line(doc)
}

/// One watch event as a line of text: `PUT key value (revision N)`, `DELETE key (revision N)`,
/// with `, was OLD` when the previous value came with it.
pub fn event_text(e: &Event) -> String {
    let kv = e.kv.clone().unwrap_or_default();
    let was = e
        .prev_kv
        .as_ref()
        .map(|p| format!(", was {}", String::from_utf8_lossy(&p.value)))
        .unwrap_or_default();
    if e.r#type == event::EventType::Delete as i32 {
        format!(
            "DELETE {} (revision {}{was})\n",
            String::from_utf8_lossy(&kv.key),
            kv.mod_revision
        )
    } else {
        format!(
            "PUT {} {} (revision {}{was})\n",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision
        )
    }
}

/// One watch event as a JSON line: `type` (`put`/`delete`), the key-value fields, `prev`.
pub fn event_json(e: &Event, node_id: u64) -> String {
    let deleted = e.r#type == event::EventType::Delete as i32;
    let mut v = kv_json(&e.kv.clone().unwrap_or_default(), !deleted);
    if let Value::Object(obj) = &mut v {
        obj.insert("type".into(), if deleted { "delete" } else { "put" }.into());
        obj.insert("node_id".into(), node_id.into());
        if let Some(p) = &e.prev_kv {
            obj.insert("prev".into(), kv_json(p, true));
        }
    }
    to_line(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_client::pb::{Member, StatusResponse};

    fn member(id: u64) -> Member {
        Member {
            id,
            client_addr: format!("127.0.0.1:700{id}"),
            peer_addr: format!("127.0.0.1:710{id}"),
            voter: true,
        }
    }

    fn up(id: u64, role: Role) -> NodeReport {
        NodeReport {
            id: Some(id),
            addr: format!("127.0.0.1:700{id}"),
            latency: Some(std::time::Duration::from_micros(1500)),
            endpoint: None,
            status: Ok(StatusResponse {
                id,
                role: role as i32,
                term: 4,
                leader_id: 1,
                applied_index: 17,
                members: vec![member(1), member(2), member(3)],
                db_size_bytes: 3 * 1024 * 1024,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let reports = vec![
            up(1, Role::Leader),
            up(2, Role::Follower),
            NodeReport {
                id: Some(3),
                addr: "127.0.0.1:7003".into(),
                status: Err("connection refused".into()),
                latency: None,
                endpoint: None,
            },
        ];
        let v: Value = serde_json::from_str(&status_json(&reports)).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["role"], "leader");
        assert_eq!(nodes[0]["id"], 1);
        assert_eq!(nodes[0]["addr"], "127.0.0.1:7001");
        assert_eq!(nodes[2]["role"], "unreachable");
        assert_eq!((v["voters_up"].as_u64(), v["quorum"].as_u64()), (Some(2), Some(2)));
        let table = status_table(&reports);
        assert!(table.contains("leader: node 1; voters up 2/3 (quorum 2)"), "{table}");
        assert!(table.contains("unreachable"), "{table}");
        assert!(table.contains("3.0 MiB"), "{table}");
        assert!(table.contains("1.5ms"), "{table}");
        assert_eq!(v["nodes"][0]["latency_ms"], 1.5);
        assert_eq!(v["nodes"][0]["disk_space_alarm"], false);
        assert!(!table.contains("DISK NEARLY FULL"), "{table}");

        let mut full = up(2, Role::Follower);
        if let Ok(s) = &mut full.status {
            s.disk_space_alarm = true;
            s.disk_free_bytes = 16 * 1024 * 1024;
        }
        let table = status_table(&[up(1, Role::Leader), full]);
        assert!(table.contains("node 2: DISK NEARLY FULL (16.0 MiB free)"), "{table}");
    }

    #[test]
    fn binary_values_survive_as_hex() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: vec![0xff, 0x00],
            ..Default::default()
        };
        let v = kv_json(&kv, true);
        assert_eq!(v["key"], "k");
        assert_eq!(v["value_hex"], "ff00");
    }
}
