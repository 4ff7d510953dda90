//! The administration commands: `member add|promote|remove|list`, `cluster snapshot`, `backup`.

use std::io::Write;
use std::path::Path;

use raftkv_client::backup::BackupWriter;
use raftkv_client::pb::{backup_chunk, MembersResponse};
use raftkv_client::{Client, ClientError};
use serde_json::json;

use crate::args::MemberCommand;
use crate::{fail, print, EXIT_UNAVAILABLE, EXIT_USAGE};

fn members_text(r: &MembersResponse) -> String {
    let mut rows = vec![["ID", "CLIENT", "PEER", "ROLE", "MATCHED", "LAG"]
        .map(String::from)
        .to_vec()];
    for m in &r.members {
        let role = match (m.is_leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        rows.push(vec![
            m.id.to_string(),
            if m.client_addr.is_empty() {
                "(unstarted)".to_string()
            } else {
                m.client_addr.clone()
            },
            m.peer_addr.clone(),
            role.to_string(),
            m.matched_index.to_string(),
            m.lag.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !r.removed_ids.is_empty() {
        let ids: Vec<String> = r.removed_ids.iter().map(u64::to_string).collect();
        out.push_str(&format!("removed ids (never reusable): {}\n", ids.join(", ")));
    }
    out
}

fn members_json(r: &MembersResponse) -> String {
    let members: Vec<_> = r
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "client_addr": m.client_addr,
                "peer_addr": m.peer_addr,
                "voter": m.voter,
                "leader": m.is_leader,
                "matched_index": m.matched_index,
                "lag": m.lag,
            })
        })
        .collect();
    format!("{}\n", json!({ "members": members, "removed_ids": r.removed_ids }))
}

pub async fn member(client: &Client, command: MemberCommand, json: bool) -> u8 {
    let result = match command {
        MemberCommand::Add { id, addrs, learner } => {
            let Some((client_addr, peer_addr)) = addrs.split_once('@') else {
                eprintln!("raftkv: {addrs:?} is not CLIENT_ADDR@PEER_ADDR (e.g. 127.0.0.1:7004@127.0.0.1:7104)");
                return EXIT_USAGE;
            };
            eprintln!(
                "adding node {id}; waiting until it has caught up{}...",
                if learner { "" } else { ", then promoting it" }
            );
            client.add_member(id, client_addr, peer_addr, learner, None).await
        }
        MemberCommand::Promote { id } => client.promote_member(id).await,
        MemberCommand::Remove { id } => client.remove_member(id).await,
        MemberCommand::List => client.list_members().await,
    };
    match result {
        Ok(r) if json => print(&members_json(&r)),
        Ok(r) => print(&members_text(&r)),
        Err(e) => fail(e),
    }
}

/// `raftkv cluster transfer-leader [ID]`.
pub async fn transfer_leader(client: &Client, to: Option<u64>, json: bool) -> u8 {
    match client.transfer_leader(to).await {
        Ok(r) if json => {
            print(&format!("{}\n", json!({ "leader_id": r.leader_id })));
            0
        }
        Ok(r) => {
            print(&format!("leadership handed to node {}\n", r.leader_id));
            0
        }
        Err(e) => fail(e),
    }
}

pub async fn snapshot(client: &Client, node: Option<&str>, json: bool) -> u8 {
    let targets: Vec<String> = match node {
        Some(n) => vec![n.to_string()],
        None => client.endpoints().into_iter().map(|e| e.addr).collect(),
    };
    let mut code = 0;
    let mut results = Vec::new();
    for addr in targets {
        match client.snapshot_on(&addr).await {
            Ok(r) => {
                results.push(json!({ "addr": addr, "snapshot_index": r.snapshot_index }));
                if !json {
                    print(&format!("{addr}: snapshot at index {}\n", r.snapshot_index));
                }
            }
            Err(e) => {
                eprintln!("raftkv: {addr}: {e}");
                results.push(json!({ "addr": addr, "error": e.to_string() }));
                code = EXIT_UNAVAILABLE;
            }
        }
    }
    if json {
        print(&format!("{}\n", json!({ "snapshots": results })));
    }
    code
}

pub async fn backup(client: &Client, file: &Path, node: Option<&str>) -> u8 {
    match write_backup(client, file, node).await {
        Ok(summary) => print(&summary),
        Err(e) => {
            let _ = std::fs::remove_file(file.with_extension("partial"));
            fail(e)
        }
    }
}

async fn write_backup(client: &Client, file: &Path, node: Option<&str>) -> Result<String, ClientError> {
    let io = |e: std::io::Error| ClientError::Config(format!("{}: {e}", file.display()));
    let mut stream = client.backup_from(node).await?;
    let first = stream
        .message()
        .await
        .map_err(|s| ClientError::Unavailable(s.message().to_string()))?;
    let Some(backup_chunk::Chunk::Meta(meta)) = first.and_then(|c| c.chunk) else {
        return Err(ClientError::Unavailable(
            "the node did not start the backup with its metadata".into(),
        ));
    };
    // Written to FILE.partial and renamed once complete, so FILE is never a partial backup.
    let partial = file.with_extension("partial");
    let out = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(io)?);
    let mut writer = BackupWriter::new(out, &meta).map_err(|e| ClientError::Config(e.to_string()))?;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| ClientError::Unavailable(format!("the backup stream broke: {}", s.message())))?
    {
        if let Some(backup_chunk::Chunk::Data(data)) = chunk.chunk {
            writer
                .write_data(&data)
                .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        }
    }
    let mut out = writer.finish().map_err(|e| ClientError::Unavailable(e.to_string()))?;
    out.flush().map_err(io)?;
    out.get_ref().sync_all().map_err(io)?;
    std::fs::rename(&partial, file).map_err(io)?;
    Ok(format!(
        "backup of node {} at revision {} (term {}), {} bytes of data, written to {}\n",
        meta.node_id,
        meta.last_index,
        meta.last_term,
        meta.size_bytes,
        file.display()
    ))
}
