//! The coordinator's durable state: one SQLite file in its data dir. Every change is written
//! before it is acknowledged, so a restarted coordinator knows everything it knew.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("coordinator database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("coordinator database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node: String,
    pub address: String,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
    /// The agent's last HealthCheckResponse, protobuf-encoded.
    pub health: Vec<u8>,
    pub workload_count: u32,
}

/// A migration as stored; `result` is the source agent's MigrationResult, protobuf-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    pub id: String,
    pub process_id: String,
    pub source: String,
    pub target: String,
    pub mode: String,
    /// "pending", then the phase it is in ("preflight", "freeze", "checkpoint", "transfer",
    /// "restore", "commit", "post_copy", "rollback"), then "completed", "rolled_back" or "failed".
    pub status: String,
    pub error: String,
    pub result: Option<Vec<u8>>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl MigrationRow {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "rolled_back" | "failed")
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    health BLOB NOT NULL,
    workload_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workloads (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    status BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY,
    process_id TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    result BLOB,
    started_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    node TEXT NOT NULL,
    process TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
";

/// Creates the database file mode 0600 before SQLite does (SQLite would make it 0644, and gives
/// its -wal and -shm files the database's mode), and sets an existing one, -wal and -shm
/// included, to 0600.
fn private_files(db: &Path) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .and_then(|f| f.set_permissions(private.clone()))
        .map_err(|e| (db.to_path_buf(), e))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::set_permissions(&p, private.clone()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err((p, e)),
            _ => {}
        }
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open = |e| StoreError::Open { path: path.display().to_string(), source: e };
        private_files(path).map_err(|(p, e)| StoreError::Open {
            path: p.display().to_string(),
            source: rusqlite::Error::InvalidPath(format!("cannot make it mode 0600: {e}").into()),
        })?;
        let conn = Connection::open(path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store poisoned")
    }

    /// Inserts or refreshes a node; returns true when it was not known before.
    pub fn register(
        &self,
        node: &str,
        address: &str,
        health: &[u8],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let c = self.conn();
        let known: Option<i64> =
            c.query_row("SELECT 1 FROM nodes WHERE node = ?1", [node], |r| r.get(0)).optional()?;
        c.execute(
            "INSERT INTO nodes (node, address, registered_at_ms, last_seen_ms, health)
             VALUES (?1, ?2, ?3, ?3, ?4)
             ON CONFLICT(node) DO UPDATE SET address = ?2, last_seen_ms = ?3, health = ?4",
            params![node, address, now_ms, health],
        )?;
        Ok(known.is_none())
    }

    /// Records a heartbeat; false when the node is unknown.
    pub fn heartbeat(
        &self,
        node: &str,
        health: &[u8],
        workloads: u32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE nodes SET last_seen_ms = ?2, health = ?3, workload_count = ?4 WHERE node = ?1",
            params![node, now_ms, health, workloads],
        )?;
        Ok(n == 1)
    }

    /// Replaces what `node` runs with `workloads` (id, ProcessStatus protobuf-encoded), as its
    /// latest heartbeat reported.
    pub fn set_workloads(
        &self,
        node: &str,
        workloads: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute("DELETE FROM workloads WHERE node = ?1", [node])?;
        for (id, status) in workloads {
            tx.execute(
                "INSERT INTO workloads (id, node, status, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET node = ?2, status = ?3, updated_at_ms = ?4",
                params![id, node, status, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every workload as last reported: (id, node, ProcessStatus protobuf-encoded).
    pub fn workloads(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT id, node, status FROM workloads ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What `node` ran as last reported: (id, ProcessStatus protobuf-encoded).
    pub fn node_workloads(&self, node: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT id, status FROM workloads WHERE node = ?1")?;
        let rows = stmt.query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records what one agent call reported about a workload, between heartbeats.
    pub fn put_workload(
        &self,
        node: &str,
        id: &str,
        status: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO workloads (id, node, status, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET node = ?2, status = ?3, updated_at_ms = ?4",
            params![id, node, status, now_ms],
        )?;
        Ok(())
    }

    pub fn insert_migration(&self, m: &MigrationRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO migrations (id, process_id, source, target, mode, status, error, started_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7)",
            params![m.id, m.process_id, m.source, m.target, m.mode, m.status, m.started_at_ms],
        )?;
        Ok(())
    }

    pub fn finish_migration(
        &self,
        id: &str,
        status: &str,
        error: &str,
        result: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE migrations SET status = ?2, error = ?3, result = ?4, finished_at_ms = ?5 WHERE id = ?1",
            params![id, status, error, result, now_ms],
        )?;
        Ok(())
    }

    /// A running migration's figures so far (the source's GetMigration, protobuf-encoded; ignored
    /// once it has ended, when its final result is recorded instead).
    pub fn set_migration_progress(&self, id: &str, result: &[u8]) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE migrations SET result = ?2 WHERE id = ?1 AND finished_at_ms IS NULL",
            params![id, result],
        )?;
        Ok(())
    }

    /// The phase a running migration is in (ignored once it has ended).
    pub fn set_migration_phase(&self, id: &str, phase: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE migrations SET status = ?2 WHERE id = ?1 AND status NOT IN ('completed', 'rolled_back', 'failed')",
            params![id, phase],
        )?;
        Ok(())
    }

    pub fn migrations(&self) -> Result<Vec<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT id, process_id, source, target, mode, status, error, result, started_at_ms, finished_at_ms
             FROM migrations ORDER BY started_at_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MigrationRow {
                id: r.get(0)?,
                process_id: r.get(1)?,
                source: r.get(2)?,
                target: r.get(3)?,
                mode: r.get(4)?,
                status: r.get(5)?,
                error: r.get(6)?,
                result: r.get(7)?,
                started_at_ms: r.get(8)?,
                finished_at_ms: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT node, address, registered_at_ms, last_seen_ms, health, workload_count
             FROM nodes ORDER BY node",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(NodeRow {
                node: r.get(0)?,
                address: r.get(1)?,
                registered_at_ms: r.get(2)?,
                last_seen_ms: r.get(3)?,
                health: r.get(4)?,
                workload_count: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Appends an event and returns it with its id.
    pub fn event(&self, e: Event) -> Result<Event, StoreError> {
        let c = self.conn();
        c.execute(
            "INSERT INTO events (at_ms, kind, level, node, process, message, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.at_ms, e.kind, e.level, e.node, e.process, e.message, e.data],
        )?;
        Ok(Event { id: c.last_insert_rowid(), ..e })
    }

    /// Events, oldest first: the last `limit` of those matching the filters (empty = any).
    pub fn events(&self, process: &str, level: &str, limit: u32) -> Result<Vec<Event>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT id, at_ms, kind, level, node, process, message, data FROM (
                 SELECT * FROM events WHERE (?1 = '' OR process = ?1) AND (?2 = '' OR level = ?2)
                 ORDER BY id DESC LIMIT ?3) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![process, level, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                kind: r.get(2)?,
                level: r.get(3)?,
                node: r.get(4)?,
                process: r.get(5)?,
                message: r.get(6)?,
                data: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Something that happened, for the log and the live event stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    /// e.g. node_online, node_offline, process_started, migration_completed.
    pub kind: String,
    /// info, warn or error.
    pub level: String,
    pub node: String,
    pub process: String,
    pub message: String,
    /// Structured details as a JSON object (e.g. a migration's id, phase and bytes).
    pub data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_and_its_wal_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        let mode = |suffix: &str| {
            let p = format!("{}{suffix}", path.display());
            std::fs::metadata(&p).unwrap_or_else(|e| panic!("{p}: {e}")).permissions().mode()
                & 0o777
        };
        {
            let s = Store::open(&path).unwrap();
            s.register("n1", "http://a", b"", 1).unwrap();
            for suffix in ["", "-wal", "-shm"] {
                assert_eq!(mode(suffix), 0o600, "ferry.db{suffix}");
            }
        }
        // A database an older version left open to everyone is tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&path).unwrap();
        s.register("n2", "http://b", b"", 2).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "ferry.db{suffix} reopened");
        }
    }

    #[test]
    fn nodes_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        {
            let s = Store::open(&path).unwrap();
            assert!(s.register("a", "http://a:1", b"h1", 10).unwrap());
            assert!(!s.register("a", "http://a:2", b"h2", 20).unwrap());
            assert!(s.heartbeat("a", b"h3", 2, 30).unwrap());
            assert!(!s.heartbeat("nope", b"", 0, 30).unwrap());
            s.event(Event {
                kind: "node_online".into(),
                level: "info".into(),
                node: "a".into(),
                ..Default::default()
            })
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let n = s.nodes().unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0],
            NodeRow {
                node: "a".into(),
                address: "http://a:2".into(),
                registered_at_ms: 10,
                last_seen_ms: 30,
                health: b"h3".to_vec(),
                workload_count: 2
            }
        );
        assert_eq!(s.events("", "", 10).unwrap()[0].kind, "node_online");
        assert!(s.events("", "error", 10).unwrap().is_empty());
    }
}
