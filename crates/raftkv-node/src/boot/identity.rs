//! The data directory's identity file, `node.json`: which node owns the directory, and the
//! random incarnation drawn when it was created.
//!
//! It lets a node refuse a directory that belongs to another node, notice a directory whose
//! database was deleted, and lets peers notice a member whose data was wiped (its incarnation
//! changes; see [`crate::consensus::transport::network::IncarnationRegistry`]).

use std::fs;
use std::io::Write;
use std::path::Path;

use raftkv_store::NodeId;
use serde::{Deserialize, Serialize};

use crate::boot::startup::StartupError;

const FILE_NAME: &str = "node.json";
const DB_DIR: &str = "db";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: u64,
}

fn inconsistent(dir: &Path, detail: String) -> StartupError {
    StartupError::InconsistentDataDir {
        dir: dir.display().to_string(),
        detail,
    }
}

/// Reads the identity of `data_dir`: `None` when it has none yet. Refuses a directory owned by
/// another node, and one whose database is gone while its identity remains.
pub fn load(data_dir: &Path, node_id: NodeId) -> Result<Option<Identity>, StartupError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StartupError::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let identity: Identity = serde_json::from_slice(&bytes).map_err(|e| {
        inconsistent(
            data_dir,
            format!(
                "{} is unreadable ({e}); restore it from a backup of this node",
                path.display()
            ),
        )
    })?;
    if identity.node_id != node_id {
        return Err(StartupError::WrongNode {
            dir: data_dir.display().to_string(),
            owner: identity.node_id,
            requested: node_id,
        });
    }
    if let Ok(why) = fs::read_to_string(data_dir.join(crate::consensus::removal::REMOVED_MARKER)) {
        return Err(inconsistent(
            data_dir,
            format!(
                "node {node_id} was removed from its cluster ({}). A removed node cannot rejoin with its old data: \
                 start a node with a new id and an empty data dir, and add it (raftkv member add)",
                why.trim()
            ),
        ));
    }
    if !data_dir.join(DB_DIR).exists() {
        return Err(inconsistent(
            data_dir,
            format!(
                "{} exists but the database ({DB_DIR}/) is gone, so this node has lost its log and vote. \
                 Do not restart it under id {node_id}: remove it from the cluster and add a node with a new id and an empty data dir",
                path.display()
            ),
        ));
    }
    Ok(Some(identity))
}

/// Writes a fresh identity for `node_id` into `data_dir` (used by restore, whose store is
/// created with data already in it).
pub fn create(data_dir: &Path, node_id: NodeId) -> Result<Identity, StartupError> {
    let identity = Identity {
        node_id,
        incarnation: rand::random::<u64>() | 1,
    };
    let path = data_dir.join(FILE_NAME);
    write_atomically(data_dir, &path, &identity)
        .map_err(|e| StartupError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(identity)
}

/// Gives a data directory whose store was just opened its identity, if it has none.
///
/// The identity is written after the store is opened, so a crash between the two leaves a
/// pristine database without `node.json`, which is accepted; a database *with data* but no
/// identity is refused.
pub fn ensure(
    data_dir: &Path,
    node_id: NodeId,
    found: Option<Identity>,
    store_is_pristine: bool,
) -> Result<Identity, StartupError> {
    if let Some(identity) = found {
        return Ok(identity);
    }
    if !store_is_pristine {
        return Err(inconsistent(
            data_dir,
            format!(
                "it holds a database ({DB_DIR}/) with data but no {FILE_NAME}; it was not created by raftkvd or was partly deleted. \
                 Point --data-dir at this node's own directory, or at an empty one for a new node"
            ),
        ));
    }
    create(data_dir, node_id)
}

fn write_atomically(dir: &Path, path: &Path, identity: &Identity) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?;
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_db(dir: &Path) {
        fs::create_dir(dir.join(DB_DIR)).unwrap();
    }

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 3).unwrap(), None);
        make_db(dir.path());
        let a = ensure(dir.path(), 3, None, true).unwrap();
        let b = load(dir.path(), 3).unwrap().unwrap();
        assert_eq!(a, b);
        assert_ne!(a.incarnation, 0);
    }

    #[test]
    fn another_nodes_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_db(dir.path());
        ensure(dir.path(), 1, None, true).unwrap();
        let err = load(dir.path(), 2).unwrap_err();
        assert!(
            matches!(
                err,
                StartupError::WrongNode {
                    owner: 1,
                    requested: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_lost_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), 1, None, true).unwrap();
        let err = load(dir.path(), 1).unwrap_err();
        assert!(err.to_string().contains("lost its log and vote"), "{err}");
    }

    #[test]
    fn a_database_with_data_but_no_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        make_db(dir.path());
        let err = ensure(dir.path(), 1, None, false).unwrap_err();
        assert!(matches!(err, StartupError::InconsistentDataDir { .. }), "{err}");
    }

    #[test]
    fn a_pristine_database_without_identity_gets_one() {
        // What a crash between opening the store and writing node.json leaves behind.
        let dir = tempfile::tempdir().unwrap();
        make_db(dir.path());
        assert_eq!(load(dir.path(), 1).unwrap(), None);
        let id = ensure(dir.path(), 1, None, true).unwrap();
        assert_eq!(load(dir.path(), 1).unwrap(), Some(id));
    }
}
