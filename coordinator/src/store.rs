//! The coordinator's durable state: one SQLite file in its data dir. Every change is written
//! before it is acknowledged, so a restarted coordinator knows everything it knew.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::network::WorkloadRange;

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

/// One workload as an agent reported it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    pub id: String,
    /// ProcessStatus, protobuf-encoded.
    pub status: Vec<u8>,
    /// The migration whose commit this (target's, stopped) copy waits for; empty for the
    /// workload itself.
    pub held_for: String,
    /// When it ended (exited, failed, lost); `None` while it lives.
    pub ended_at_ms: Option<i64>,
}

/// Inserts or refreshes one reported workload. A held copy replaces only a held copy; any other
/// report replaces whatever was recorded. An ended workload keeps the first end time recorded.
/// A report from a node the workload was failed over away from (a `failed_over` row) never
/// replaces its record, running or ended: that copy is fenced, the restored one is the workload.
fn upsert(c: &Connection, node: &str, w: &Reported, now_ms: i64) -> Result<(), StoreError> {
    let fenced: Option<i64> = c
        .query_row(
            "SELECT 1 FROM failed_over WHERE workload = ?1 AND from_node = ?2",
            params![w.id, node],
            |r| r.get(0),
        )
        .optional()?;
    if fenced.is_some() {
        return Ok(());
    }
    c.execute(
        "INSERT INTO workloads (id, node, status, updated_at_ms, held_for, ended_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET node = ?2, status = ?3, updated_at_ms = ?4, held_for = ?5,
             ended_at_ms = CASE WHEN ?6 IS NULL THEN NULL
                                ELSE COALESCE(workloads.ended_at_ms, ?6) END
         WHERE ?5 = '' OR workloads.held_for <> ''",
        params![w.id, node, w.status, now_ms, w.held_for, w.ended_at_ms],
    )?;
    Ok(())
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

    /// Where a page that ends with this migration continues (see [`Cursor`]).
    pub fn cursor(&self) -> Cursor {
        Cursor { started_at_ms: self.started_at_ms, id: self.id.clone() }
    }
}

/// A place in the migrations' history, which is ordered by (start, id): a page "before" it holds
/// only migrations that started earlier, or at the same millisecond with a smaller id. Written
/// `STARTED_MS.ID` (e.g. `1765150000000.m-0a1b2c3d4e5f`) in the REST API's `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_at_ms: i64,
    pub id: String,
}

impl Cursor {
    /// Parses `STARTED_MS.ID`; the error says what was expected.
    pub fn parse(s: &str) -> Result<Cursor, String> {
        let (ms, id) = s.split_once('.').ok_or_else(|| {
            format!("cursor {s:?} is not STARTED_MS.ID (e.g. 1765150000000.m-0a1b2c3d4e5f)")
        })?;
        let started_at_ms = ms.parse::<i64>().map_err(|_| {
            format!("cursor {s:?}: {ms:?} is not a start time in ms (STARTED_MS.ID)")
        })?;
        if id.is_empty() {
            return Err(format!("cursor {s:?} has no migration id after the dot (STARTED_MS.ID)"));
        }
        Ok(Cursor { started_at_ms, id: id.to_string() })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.started_at_ms, self.id)
    }
}

/// Which migrations a page holds: the newest `limit` before `before` (none: the newest of all)
/// matching the filters (empty: any).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationQuery {
    pub before: Option<Cursor>,
    pub limit: u32,
    pub process: String,
    pub status: String,
    pub mode: String,
}

/// How much finished history is kept: a finished migration (or an event) goes once it is both
/// older than `max_age_ms` and not among the newest `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: u64,
    pub max_age_ms: i64,
}

/// Rows deleted per table and sweep at most: a first prune of a long history is spread over
/// several sweeps rather than hold the store for one long transaction.
pub const PRUNE_BATCH: u64 = 5_000;

const MIGRATION_COLUMNS: &str = "id, process_id, source, target, mode, status, error, result, \
                                 started_at_ms, finished_at_ms";

/// A page's query: only the filters given, so that SQLite walks the one index that fits (by
/// process, by status, else by start) from the cursor down, reading `limit + 1` rows (one more
/// than asked: whether an older page exists).
fn page_sql(q: &MigrationQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut cond = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(k) = &q.before {
        args.push(Value::Integer(k.started_at_ms));
        args.push(Value::Text(k.id.clone()));
        cond.push(format!("(started_at_ms, id) < (?{}, ?{})", args.len() - 1, args.len()));
    }
    for (column, v) in [("process_id", &q.process), ("status", &q.status), ("mode", &q.mode)] {
        if !v.is_empty() {
            args.push(Value::Text(v.clone()));
            cond.push(format!("{column} = ?{}", args.len()));
        }
    }
    args.push(Value::Integer(i64::from(q.limit) + 1));
    let filter =
        if cond.is_empty() { String::new() } else { format!("WHERE {}", cond.join(" AND ")) };
    let sql = format!(
        "SELECT {MIGRATION_COLUMNS} FROM migrations {filter}
         ORDER BY started_at_ms DESC, id DESC LIMIT ?{}",
        args.len()
    );
    (sql, args)
}

fn migration_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MigrationRow> {
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
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Bumped by every write that may change the set of finished migrations (an end, an
    /// import, a prune, a forget): the key of figures over the finished history, which a
    /// heartbeat or a running migration's progress leaves alone.
    finished_changes: std::sync::atomic::AtomicU64,
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
    updated_at_ms INTEGER NOT NULL,
    held_for TEXT NOT NULL DEFAULT '',
    ended_at_ms INTEGER
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
-- Reads that must not grow with history: the migrations that have not ended (a partial index,
-- used by queries that say `status NOT IN ('completed', 'rolled_back', 'failed')` verbatim),
-- pages of the history newest first, a process's, a status's, a source node's; a node's
-- workloads (the ended ones: `workloads_ended`, made once the column exists); a process's
-- events.
CREATE INDEX IF NOT EXISTS migrations_unfinished ON migrations (process_id)
    WHERE status NOT IN ('completed', 'rolled_back', 'failed');
CREATE INDEX IF NOT EXISTS migrations_by_started ON migrations (started_at_ms, id);
CREATE INDEX IF NOT EXISTS migrations_by_process ON migrations (process_id, started_at_ms, id);
CREATE INDEX IF NOT EXISTS migrations_by_status ON migrations (status, started_at_ms, id);
CREATE INDEX IF NOT EXISTS migrations_by_source ON migrations (source, started_at_ms);
CREATE INDEX IF NOT EXISTS workloads_by_node ON workloads (node);
CREATE INDEX IF NOT EXISTS events_by_process ON events (process, id);
-- Workloads' own addresses, one row per address in use: unique cluster-wide. `pending` while
-- the start that reserved it has not been answered.
CREATE TABLE IF NOT EXISTS addresses (
    address TEXT PRIMARY KEY,
    workload TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    allocated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS addresses_by_workload ON addresses (workload);
-- Cordoned nodes: no new placements, no migrations into them. A node not listed is schedulable.
CREATE TABLE IF NOT EXISTS cordoned (
    node TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL
);
-- Drains: a node's workloads moved off, and each workload's migration.
CREATE TABLE IF NOT EXISTS drains (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    status TEXT NOT NULL,
    deadline_ms INTEGER,
    estimate_ms INTEGER NOT NULL,
    fits INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER
);
-- Checkpoints of protected workloads as their agents reported them; the newest `keep` of each
-- workload are kept. `info` is the CheckpointInfo, protobuf-encoded; `holders` a JSON array.
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY,
    workload TEXT NOT NULL,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    taken_at_ms INTEGER NOT NULL,
    freeze_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    holders TEXT NOT NULL DEFAULT '[]',
    digest TEXT NOT NULL DEFAULT '',
    info BLOB NOT NULL,
    keep INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS checkpoints_by_workload ON checkpoints (workload, taken_at_ms);
-- Workloads restored away from a node (failover): that node's reports of them never replace
-- their record, and its running copies are fenced. Gone once the node no longer reports them.
CREATE TABLE IF NOT EXISTS failed_over (
    workload TEXT PRIMARY KEY,
    from_node TEXT NOT NULL,
    to_node TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS drain_items (
    drain TEXT NOT NULL,
    position INTEGER NOT NULL,
    process TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    mode TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    migration TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (drain, process)
);
";

/// A checkpoint as stored: the CheckpointInfo's figures, and the whole of it (`info`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckpointRow {
    pub id: String,
    pub workload: String,
    pub node: String,
    pub seq: u64,
    pub taken_at_ms: i64,
    pub freeze_ms: u32,
    pub bytes: u64,
    pub raw_bytes: u64,
    pub holders: Vec<String>,
    pub digest: String,
    /// The CheckpointInfo, protobuf-encoded.
    pub info: Vec<u8>,
    /// How many of the workload's checkpoints are kept (0: [`DEFAULT_KEEP_CHECKPOINTS`]).
    pub keep: u32,
}

/// Checkpoints kept per workload when its agent does not say.
pub const DEFAULT_KEEP_CHECKPOINTS: u32 = 3;

/// A workload restored away from `from_node` onto `to_node`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedOver {
    pub workload: String,
    pub from_node: String,
    pub to_node: String,
    pub at_ms: i64,
}

/// A drain as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainRow {
    pub id: String,
    pub node: String,
    /// running, completed (nothing left on the node) or failed.
    pub status: String,
    pub deadline_ms: Option<i64>,
    /// The plan's estimate of the whole drain.
    pub estimate_ms: i64,
    /// Whether the estimate is within the deadline.
    pub fits: bool,
    pub concurrency: u32,
    /// What the drain says: the deadline it cannot fit, why it failed.
    pub message: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub items: Vec<DrainItem>,
}

/// One workload of a drain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DrainItem {
    pub process: String,
    /// Its resident memory when the drain was planned.
    pub bytes: u64,
    /// stop-and-copy or post-copy, as planned.
    pub mode: String,
    /// Where it was placed; empty until its migration starts.
    pub target: String,
    pub migration: String,
    /// pending, migrating, then completed, rolled_back or failed.
    pub status: String,
    pub error: String,
}

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
        // Databases written before held copies and ended workloads were tracked.
        for (column, decl) in [("held_for", "TEXT NOT NULL DEFAULT ''"), ("ended_at_ms", "INTEGER")]
        {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('workloads') WHERE name = ?1",
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(open)?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE workloads ADD COLUMN {column} {decl}"))
                    .map_err(open)?;
            }
        }
        // The ended ones, pruned by every sweep (after the upgrade: the column may be new).
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS workloads_ended ON workloads (ended_at_ms)
             WHERE ended_at_ms IS NOT NULL",
        )
        .map_err(open)?;
        Ok(Store { conn: Mutex::new(conn), finished_changes: Default::default() })
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

    /// Replaces what `node` runs with `workloads`, as its latest heartbeat reported. A held copy
    /// (a migration's target holding a restored, stopped copy until the commit) never takes the
    /// place of another node's record of the workload: it is recorded only while no other report
    /// of that id exists. An ended workload whose end is before `keep_ended_since_ms` is not
    /// recorded again (it was pruned).
    pub fn set_workloads(
        &self,
        node: &str,
        workloads: &[Reported],
        keep_ended_since_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let kept: Vec<&Reported> = workloads
            .iter()
            .filter(|w| w.ended_at_ms.is_none_or(|t| t >= keep_ended_since_ms))
            .collect();
        let before: Vec<String> = {
            let mut stmt = tx.prepare("SELECT id FROM workloads WHERE node = ?1")?;
            let ids = stmt.query_map([node], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        for id in before.iter().filter(|id| !kept.iter().any(|w| &w.id == *id)) {
            tx.execute("DELETE FROM workloads WHERE id = ?1 AND node = ?2", params![id, node])?;
        }
        for w in kept {
            upsert(&tx, node, w, now_ms)?;
        }
        // A workload failed over away from this node that it no longer reports (any state): its
        // copy there is gone, nothing is left to fence.
        let fenced: Vec<String> = {
            let mut stmt = tx.prepare("SELECT workload FROM failed_over WHERE from_node = ?1")?;
            let ids = stmt.query_map([node], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        for id in fenced.iter().filter(|id| !workloads.iter().any(|w| &w.id == *id)) {
            tx.execute(
                "DELETE FROM failed_over WHERE workload = ?1 AND from_node = ?2",
                params![id, node],
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

    /// One workload as last reported: (node, ProcessStatus protobuf-encoded).
    pub fn workload(&self, id: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached("SELECT node, status FROM workloads WHERE id = ?1")?;
        Ok(stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    /// A page of the workloads by id: the first `limit` after `after` (empty: from the first),
    /// ended ones only if `ended`; (id, node, ProcessStatus protobuf-encoded).
    pub fn workloads_page(
        &self,
        after: &str,
        limit: u32,
        ended: bool,
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(
            "SELECT id, node, status FROM workloads
             WHERE id > ?1 AND (?2 OR ended_at_ms IS NULL) ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![after, ended, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What `node` ran as last reported: (id, ProcessStatus protobuf-encoded).
    pub fn node_workloads(&self, node: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT id, status FROM workloads WHERE node = ?1")?;
        let rows = stmt.query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records what one agent call reported about a workload, between heartbeats (a held copy
    /// only where no other report of it exists, as in [`Store::set_workloads`]).
    pub fn put_workload(&self, node: &str, w: &Reported, now_ms: i64) -> Result<(), StoreError> {
        upsert(&self.conn(), node, w, now_ms)
    }

    /// Forgets ended workloads whose end is before `before_ms`; returns how many. Their
    /// checkpoints and failed-over rows go with them, and so do the checkpoints of workloads no
    /// longer recorded whose newest is before `before_ms`.
    pub fn prune_ended(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "DELETE FROM checkpoints WHERE workload IN (SELECT id FROM workloads
                 WHERE ended_at_ms IS NOT NULL AND ended_at_ms < ?1)",
            [before_ms],
        )?;
        tx.execute(
            "DELETE FROM failed_over WHERE workload IN (SELECT id FROM workloads
                 WHERE ended_at_ms IS NOT NULL AND ended_at_ms < ?1)",
            [before_ms],
        )?;
        let n = tx.execute(
            "DELETE FROM workloads WHERE ended_at_ms IS NOT NULL AND ended_at_ms < ?1",
            [before_ms],
        )?;
        tx.execute(
            "DELETE FROM checkpoints WHERE workload NOT IN (SELECT id FROM workloads)
                 AND workload NOT IN (SELECT workload FROM checkpoints GROUP BY workload
                                      HAVING MAX(taken_at_ms) >= ?1)",
            [before_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Forgets every node and what they ran (they register again), and the addresses those
    /// workloads held; migrations that had not ended are recorded as failed with `why`. Returns
    /// the nodes forgotten.
    pub fn forget_nodes(&self, why: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let nodes: Vec<String> = {
            let mut stmt = tx.prepare("SELECT node FROM nodes ORDER BY node")?;
            let n = stmt.query_map([], |r| r.get(0))?;
            n.collect::<Result<_, _>>()?
        };
        tx.execute("DELETE FROM workloads", [])?;
        tx.execute("DELETE FROM nodes", [])?;
        // Their workloads died with them: so did the addresses they held, and their checkpoints
        // (kept on those nodes) are no use to the new cluster.
        tx.execute("DELETE FROM addresses", [])?;
        tx.execute("DELETE FROM checkpoints", [])?;
        tx.execute("DELETE FROM failed_over", [])?;
        tx.execute("DELETE FROM cordoned", [])?;
        tx.execute(
            "UPDATE migrations SET status = 'failed', error = ?1, finished_at_ms = ?2
             WHERE status NOT IN ('completed', 'rolled_back', 'failed')",
            params![why, now_ms],
        )?;
        tx.commit()?;
        self.finished_changed();
        Ok(nodes)
    }

    pub fn insert_migration(&self, m: &MigrationRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO migrations (id, process_id, source, target, mode, status, error, started_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7)",
            params![m.id, m.process_id, m.source, m.target, m.mode, m.status, m.started_at_ms],
        )?;
        self.finished_changed();
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
        self.finished_changed();
        Ok(())
    }

    /// Writes migrations as they are, finished ones with their end, result and error, in one
    /// transaction: a history imported whole (`ferry bench api` seeds its store with it).
    pub fn import_migrations(&self, ms: &[MigrationRow]) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        {
            let mut stmt = tx.prepare(&format!(
                "INSERT INTO migrations ({MIGRATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                 ?8, ?9, ?10)"
            ))?;
            for m in ms {
                stmt.execute(params![
                    m.id,
                    m.process_id,
                    m.source,
                    m.target,
                    m.mode,
                    m.status,
                    m.error,
                    m.result,
                    m.started_at_ms,
                    m.finished_at_ms
                ])?;
            }
        }
        tx.commit()?;
        self.finished_changed();
        Ok(())
    }

    /// The node a restore (mode failover or restore) is trying now.
    pub fn set_migration_target(&self, id: &str, target: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE migrations SET target = ?2 WHERE id = ?1 AND finished_at_ms IS NULL",
            params![id, target],
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

    /// Every migration, oldest first. A full read of the history: for tests and tools only; the
    /// coordinator and the gateway use the narrow queries below.
    pub fn migrations(&self) -> Result<Vec<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(&format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations ORDER BY started_at_ms, id"
        ))?;
        let rows = stmt.query_map([], migration_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One migration by id.
    pub fn migration(&self, id: &str) -> Result<Option<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt =
            c.prepare_cached(&format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE id = ?1"))?;
        Ok(stmt.query_row([id], migration_row).optional()?)
    }

    /// The migrations that have not ended (any mode), oldest first; from the partial index, so
    /// the cost does not grow with the finished history.
    pub fn unfinished_migrations(&self) -> Result<Vec<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations
             WHERE status NOT IN ('completed', 'rolled_back', 'failed')"
        ))?;
        let rows = stmt.query_map([], migration_row)?;
        let mut all: Vec<MigrationRow> = rows.collect::<Result<_, _>>()?;
        all.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        Ok(all)
    }

    /// The migration of `process` that has not ended, if any (the oldest, should there be two).
    pub fn migration_in_flight(&self, process: &str) -> Result<Option<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations
             WHERE status NOT IN ('completed', 'rolled_back', 'failed') AND process_id = ?1
             ORDER BY started_at_ms, id LIMIT 1"
        ))?;
        Ok(stmt.query_row([process], migration_row).optional()?)
    }

    /// The newest completed restore (mode failover or restore) of `process`.
    pub fn latest_restore(&self, process: &str) -> Result<Option<MigrationRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations
             WHERE process_id = ?1 AND status = 'completed' AND mode IN ('failover', 'restore')
             ORDER BY started_at_ms DESC, id DESC LIMIT 1"
        ))?;
        Ok(stmt.query_row([process], migration_row).optional()?)
    }

    /// Completed migrations of `mode` from `source`, newest first, handed to `each` until it
    /// returns false (a drain's rates need the last few whose figures are usable).
    pub fn completed_from(
        &self,
        source: &str,
        mode: &str,
        mut each: impl FnMut(MigrationRow) -> bool,
    ) -> Result<(), StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {MIGRATION_COLUMNS} FROM migrations
             WHERE source = ?1 AND status = 'completed' AND mode = ?2
             ORDER BY started_at_ms DESC, id DESC"
        ))?;
        let mut rows = stmt.query(params![source, mode])?;
        while let Some(r) = rows.next()? {
            if !each(migration_row(r)?) {
                break;
            }
        }
        Ok(())
    }

    /// A page of the history: the newest `q.limit` migrations before `q.before` that match the
    /// filters, oldest first (as [`Store::migrations`] orders them), and the cursor of the next
    /// (older) page when there may be one.
    pub fn migrations_page(
        &self,
        q: &MigrationQuery,
    ) -> Result<(Vec<MigrationRow>, Option<Cursor>), StoreError> {
        let c = self.conn();
        let (sql, args) = page_sql(q);
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), migration_row)?;
        let mut page: Vec<MigrationRow> = rows.collect::<Result<_, _>>()?;
        let more = page.len() > q.limit as usize;
        page.truncate(q.limit as usize);
        page.reverse();
        let next = if more { page.first().map(MigrationRow::cursor) } else { None };
        Ok((page, next))
    }

    /// How many migrations are recorded.
    pub fn migration_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM migrations", [], |r| r.get(0))?)
    }

    /// Finished migrations (status and the source's result), handed to `each` in no particular
    /// order: the overview's and the metrics' figures, computed again only when the store
    /// changed (the coordinator caches them by [`Store::generation`]).
    pub fn finished_migrations(
        &self,
        mut each: impl FnMut(&str, Option<&[u8]>),
    ) -> Result<(), StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare_cached(
            "SELECT status, result FROM migrations
             WHERE status IN ('completed', 'rolled_back', 'failed')",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let status: String = r.get(0)?;
            let result = r.get_ref(1)?.as_blob_or_null().map_err(rusqlite::Error::from)?;
            each(&status, result);
        }
        Ok(())
    }

    fn finished_changed(&self) {
        self.finished_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes whenever the finished migrations may have changed (an end, an insert, an import,
    /// a prune, `forget_nodes`, or another connection's commit), and not with heartbeats or a
    /// running migration's progress: a key for figures over them. Bumped once the write is
    /// done, so figures computed during it are computed again at the next call.
    pub fn finished_generation(&self) -> Result<(u64, i64), StoreError> {
        let c = self.conn();
        let other: i64 = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok((self.finished_changes.load(std::sync::atomic::Ordering::SeqCst), other))
    }

    /// Changes whenever anything is written to the store, by this connection or another: a key
    /// for figures computed from it.
    pub fn generation(&self) -> Result<(u64, i64), StoreError> {
        let c = self.conn();
        let other: i64 = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok((c.total_changes(), other))
    }

    /// Forgets finished migrations older than `r.max_age_ms` before `now_ms` that are not among
    /// the newest `r.keep`, at most [`PRUNE_BATCH`] at a time; returns how many. Never one that
    /// has not ended, nor the newest completed restore of a workload still recorded (failover
    /// reads it to tell a fenced copy that was restored from one that was not).
    pub fn prune_migrations(&self, r: Retention, now_ms: i64) -> Result<usize, StoreError> {
        let c = self.conn();
        // The newest `keep` start at or after the keep-th newest's (start, id).
        let edge: Option<(i64, String)> = if r.keep == 0 {
            Some((i64::MAX, String::new()))
        } else {
            c.query_row(
                "SELECT started_at_ms, id FROM migrations
                 ORDER BY started_at_ms DESC, id DESC LIMIT 1 OFFSET ?1",
                [(r.keep - 1).min(i64::MAX as u64) as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?
        };
        // Fewer than `keep` recorded: nothing goes.
        let Some((edge_ms, edge_id)) = edge else { return Ok(0) };
        let cutoff = now_ms.saturating_sub(r.max_age_ms);
        let n = c.execute(
            "DELETE FROM migrations WHERE id IN (
                 SELECT id FROM migrations
                 WHERE (started_at_ms < ?1 OR (started_at_ms = ?1 AND (?2 = '' OR id < ?2)))
                   AND started_at_ms < ?3
                   AND status IN ('completed', 'rolled_back', 'failed')
                   AND NOT (status = 'completed' AND mode IN ('failover', 'restore')
                            AND process_id IN (SELECT id FROM workloads)
                            AND id = (SELECT m.id FROM migrations m
                                      WHERE m.process_id = migrations.process_id
                                        AND m.status = 'completed'
                                        AND m.mode IN ('failover', 'restore')
                                      ORDER BY m.started_at_ms DESC, m.id DESC LIMIT 1))
                 ORDER BY started_at_ms, id LIMIT ?4)",
            params![edge_ms, edge_id, cutoff, PRUNE_BATCH as i64],
        )?;
        if n > 0 {
            self.finished_changed();
        }
        Ok(n)
    }

    /// Forgets events older than `r.max_age_ms` before `now_ms` that are not among the newest
    /// `r.keep`, at most [`PRUNE_BATCH`] at a time; returns how many.
    pub fn prune_events(&self, r: Retention, now_ms: i64) -> Result<usize, StoreError> {
        let c = self.conn();
        let newest: Option<i64> =
            c.query_row("SELECT MAX(id) FROM events", [], |row| row.get(0))?;
        let Some(newest) = newest else { return Ok(0) };
        let below = newest.saturating_sub(r.keep as i64) + 1;
        let cutoff = now_ms.saturating_sub(r.max_age_ms);
        let n = c.execute(
            "DELETE FROM events WHERE id IN (
                 SELECT id FROM events WHERE id < ?1 AND at_ms < ?2 ORDER BY id LIMIT ?3)",
            params![below, cutoff, PRUNE_BATCH as i64],
        )?;
        Ok(n)
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

impl Store {
    /// Records a checkpoint (again: a report with more holders replaces the first), then keeps
    /// only the newest `keep` of its workload (by time taken, then sequence number).
    pub fn insert_checkpoint(&self, k: &CheckpointRow) -> Result<(), StoreError> {
        let holders = serde_json::to_string(&k.holders).unwrap_or_else(|_| "[]".into());
        let keep = if k.keep == 0 { DEFAULT_KEEP_CHECKPOINTS } else { k.keep };
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO checkpoints (id, workload, node, seq, taken_at_ms, freeze_ms,
                 bytes, raw_bytes, holders, digest, info, keep)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                k.id,
                k.workload,
                k.node,
                k.seq as i64,
                k.taken_at_ms,
                k.freeze_ms,
                k.bytes as i64,
                k.raw_bytes as i64,
                holders,
                k.digest,
                k.info,
                keep
            ],
        )?;
        tx.execute(
            "DELETE FROM checkpoints WHERE workload = ?1 AND id NOT IN (
                 SELECT id FROM checkpoints WHERE workload = ?1
                 ORDER BY taken_at_ms DESC, seq DESC LIMIT ?2)",
            params![k.workload, keep],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A workload's checkpoints, newest first.
    pub fn checkpoints(&self, workload: &str) -> Result<Vec<CheckpointRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT id, workload, node, seq, taken_at_ms, freeze_ms, bytes, raw_bytes, holders,
                    digest, info, keep
             FROM checkpoints WHERE workload = ?1 ORDER BY taken_at_ms DESC, seq DESC",
        )?;
        let rows = stmt.query_map([workload], |r| {
            let holders: String = r.get(8)?;
            Ok(CheckpointRow {
                id: r.get(0)?,
                workload: r.get(1)?,
                node: r.get(2)?,
                seq: r.get::<_, i64>(3)? as u64,
                taken_at_ms: r.get(4)?,
                freeze_ms: r.get(5)?,
                bytes: r.get::<_, i64>(6)? as u64,
                raw_bytes: r.get::<_, i64>(7)? as u64,
                holders: serde_json::from_str(&holders).unwrap_or_default(),
                digest: r.get(9)?,
                info: r.get(10)?,
                keep: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `workload` was restored away from `from_node` onto `to_node`.
    pub fn set_failed_over(&self, f: &FailedOver) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO failed_over (workload, from_node, to_node, at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![f.workload, f.from_node, f.to_node, f.at_ms],
        )?;
        Ok(())
    }

    /// Forgets a workload's failed-over row if it was failed over away from `node` (a copy on
    /// `node` is the workload again, or the restore that recorded it restored nothing).
    pub fn clear_failed_over_from(&self, workload: &str, node: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM failed_over WHERE workload = ?1 AND from_node = ?2",
            params![workload, node],
        )?;
        Ok(())
    }

    /// Every workload restored away from a node whose copy there may still be reported.
    pub fn failed_over(&self) -> Result<Vec<FailedOver>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT workload, from_node, to_node, at_ms FROM failed_over ORDER BY workload",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(FailedOver {
                workload: r.get(0)?,
                from_node: r.get(1)?,
                to_node: r.get(2)?,
                at_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Cordons (`schedulable` false) or uncordons a node.
    pub fn set_schedulable(
        &self,
        node: &str,
        schedulable: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let c = self.conn();
        if schedulable {
            c.execute("DELETE FROM cordoned WHERE node = ?1", [node])?;
        } else {
            c.execute(
                "INSERT INTO cordoned (node, at_ms) VALUES (?1, ?2) ON CONFLICT(node) DO NOTHING",
                params![node, now_ms],
            )?;
        }
        Ok(())
    }

    /// The cordoned nodes.
    pub fn cordoned(&self) -> Result<HashSet<String>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT node FROM cordoned")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a new drain and its items.
    pub fn insert_drain(&self, d: &DrainRow) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO drains (id, node, status, deadline_ms, estimate_ms, fits, concurrency,
                                 message, started_at_ms, ended_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                d.id,
                d.node,
                d.status,
                d.deadline_ms,
                d.estimate_ms,
                d.fits,
                d.concurrency,
                d.message,
                d.started_at_ms,
                d.ended_at_ms
            ],
        )?;
        for (i, it) in d.items.iter().enumerate() {
            tx.execute(
                "INSERT INTO drain_items (drain, position, process, bytes, mode, target, migration,
                                          status, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    d.id,
                    i as i64,
                    it.process,
                    it.bytes as i64,
                    it.mode,
                    it.target,
                    it.migration,
                    it.status,
                    it.error
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Updates one item of a drain.
    pub fn set_drain_item(&self, drain: &str, it: &DrainItem) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE drain_items SET mode = ?3, target = ?4, migration = ?5, status = ?6, error = ?7
             WHERE drain = ?1 AND process = ?2",
            params![drain, it.process, it.mode, it.target, it.migration, it.status, it.error],
        )?;
        Ok(())
    }

    /// Ends a drain (ignored once it has ended).
    pub fn end_drain(
        &self,
        id: &str,
        status: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE drains SET status = ?2, message = ?3, ended_at_ms = ?4
             WHERE id = ?1 AND ended_at_ms IS NULL",
            params![id, status, message, now_ms],
        )?;
        Ok(())
    }

    /// Ends every drain still running (a coordinator that restarted no longer drives them) as
    /// failed with `why`; returns their ids.
    pub fn interrupt_drains(&self, why: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "UPDATE drains SET status = 'failed', message = ?1, ended_at_ms = ?2
             WHERE ended_at_ms IS NULL RETURNING id",
        )?;
        let rows = stmt.query_map(params![why, now_ms], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every drain with its items, oldest first.
    pub fn drains(&self) -> Result<Vec<DrainRow>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT id, node, status, deadline_ms, estimate_ms, fits, concurrency, message,
                    started_at_ms, ended_at_ms
             FROM drains ORDER BY started_at_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DrainRow {
                id: r.get(0)?,
                node: r.get(1)?,
                status: r.get(2)?,
                deadline_ms: r.get(3)?,
                estimate_ms: r.get(4)?,
                fits: r.get(5)?,
                concurrency: r.get(6)?,
                message: r.get(7)?,
                started_at_ms: r.get(8)?,
                ended_at_ms: r.get(9)?,
                items: Vec::new(),
            })
        })?;
        let mut drains: Vec<DrainRow> = rows.collect::<Result<_, _>>()?;
        let mut stmt = c.prepare(
            "SELECT drain, process, bytes, mode, target, migration, status, error
             FROM drain_items ORDER BY drain, position",
        )?;
        let items = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                DrainItem {
                    process: r.get(1)?,
                    bytes: r.get::<_, i64>(2)? as u64,
                    mode: r.get(3)?,
                    target: r.get(4)?,
                    migration: r.get(5)?,
                    status: r.get(6)?,
                    error: r.get(7)?,
                },
            ))
        })?;
        for item in items {
            let (drain, it) = item?;
            if let Some(d) = drains.iter_mut().find(|d| d.id == drain) {
                d.items.push(it);
            }
        }
        Ok(drains)
    }
}

/// Why no address was allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Every host address of the range is in use; how many are (always the range's size).
    Exhausted { in_use: u64 },
}

impl Store {
    /// Reserves the lowest free host address of `range` for `workload` (pending until
    /// [`Store::bind_address`]), in one transaction: no address is ever handed out twice.
    pub fn allocate_address(
        &self,
        range: &WorkloadRange,
        workload: &str,
        now_ms: i64,
    ) -> Result<Result<Ipv4Addr, AllocError>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: HashSet<Ipv4Addr> = {
            let mut stmt = tx.prepare("SELECT address FROM addresses")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.filter_map(|a| a.map(|a| a.parse().ok()).transpose()).collect::<Result<_, _>>()?
        };
        let Some(a) = range.lowest_free(&taken) else {
            let in_use = taken.iter().filter(|a| range.contains(**a)).count() as u64;
            return Ok(Err(AllocError::Exhausted { in_use }));
        };
        tx.execute(
            "INSERT INTO addresses (address, workload, pending, allocated_at_ms)
             VALUES (?1, ?2, 1, ?3)",
            params![a.to_string(), workload, now_ms],
        )?;
        tx.commit()?;
        Ok(Ok(a))
    }

    /// The start that reserved `workload`'s address was answered: it is the workload's now.
    pub fn bind_address(&self, workload: &str) -> Result<(), StoreError> {
        self.conn().execute("UPDATE addresses SET pending = 0 WHERE workload = ?1", [workload])?;
        Ok(())
    }

    /// Frees every address `workload` holds; returns them.
    pub fn release_address(&self, workload: &str) -> Result<Vec<String>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("DELETE FROM addresses WHERE workload = ?1 RETURNING address")?;
        let rows = stmt.query_map([workload], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `workload` holds `address`, as a report says, when the table does not
    /// already (a database younger than the workload). `Ok(Some(other))` when `other` holds it:
    /// the report is not recorded.
    pub fn claim_address(
        &self,
        address: &str,
        workload: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let c = self.conn();
        let holder: Option<String> = c
            .query_row("SELECT workload FROM addresses WHERE address = ?1", [address], |r| r.get(0))
            .optional()?;
        match holder {
            Some(h) if h == workload => Ok(None),
            Some(h) => Ok(Some(h)),
            None => {
                c.execute(
                    "INSERT INTO addresses (address, workload, pending, allocated_at_ms)
                     VALUES (?1, ?2, 0, ?3)",
                    params![address, workload, now_ms],
                )?;
                Ok(None)
            }
        }
    }

    /// Frees the addresses of workloads that are over: recorded as ended, or no longer recorded
    /// at all (pruned, lost, never started) and allocated before `settled_before_ms` (a start's
    /// reservation, or a workload started since its node's last report, is left alone until
    /// then). An address whose workload has a migration that has not ended is kept: it moves
    /// with the workload. Returns the freed (address, workload) pairs.
    pub fn release_ended_addresses(
        &self,
        settled_before_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "DELETE FROM addresses
             WHERE workload NOT IN (SELECT process_id FROM migrations
                                    WHERE status NOT IN ('completed', 'rolled_back', 'failed'))
               AND CASE
                   WHEN EXISTS (SELECT 1 FROM workloads w WHERE w.id = addresses.workload)
                   THEN EXISTS (SELECT 1 FROM workloads w WHERE w.id = addresses.workload
                                AND w.ended_at_ms IS NOT NULL)
                        AND (pending = 0 OR allocated_at_ms < ?1)
                   ELSE allocated_at_ms < ?1
                   END
             RETURNING address, workload",
        )?;
        let rows = stmt.query_map([settled_before_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every address in use: (address, workload), by address.
    pub fn addresses(&self) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.conn();
        let mut stmt = c.prepare("SELECT address, workload FROM addresses ORDER BY address")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
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

    fn report(id: &str, status: &[u8], held_for: &str, ended_at_ms: Option<i64>) -> Reported {
        Reported { id: id.into(), status: status.to_vec(), held_for: held_for.into(), ended_at_ms }
    }

    fn where_is(s: &Store, id: &str) -> Option<(String, Vec<u8>)> {
        s.workloads().unwrap().into_iter().find(|w| w.0 == id).map(|w| (w.1, w.2))
    }

    #[test]
    fn a_held_copy_never_replaces_the_workload() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        // Source and target report the same id, in either order, many times: the source wins.
        for round in 0..3 {
            s.set_workloads("a", &[report("w", b"frozen", "", None)], 0, round).unwrap();
            s.set_workloads("b", &[report("w", b"copy", "m-1", None)], 0, round).unwrap();
            assert_eq!(where_is(&s, "w"), Some(("a".into(), b"frozen".to_vec())), "round {round}");
        }
        // A held copy answered by one call between heartbeats does not win either.
        s.put_workload("b", &report("w", b"copy", "m-1", None), 5).unwrap();
        assert_eq!(where_is(&s, "w").unwrap().0, "a");
        // The source stops reporting it (killed before the commit): the held copy alone shows.
        s.set_workloads("a", &[], 0, 10).unwrap();
        s.set_workloads("b", &[report("w", b"copy", "m-1", None)], 0, 10).unwrap();
        assert_eq!(where_is(&s, "w"), Some(("b".into(), b"copy".to_vec())));
        // ...and the target's ordinary report after the commit replaces it.
        s.set_workloads("b", &[report("w", b"running", "", None)], 0, 11).unwrap();
        assert_eq!(where_is(&s, "w"), Some(("b".into(), b"running".to_vec())));
        // A held copy elsewhere later (a migration back) does not move it.
        s.set_workloads("a", &[report("w", b"copy", "m-2", None)], 0, 12).unwrap();
        assert_eq!(where_is(&s, "w").unwrap().0, "b");
        // The source reporting it held-free wins over a held copy recorded alone.
        s.set_workloads("b", &[], 0, 13).unwrap();
        s.set_workloads("a", &[report("w", b"copy", "m-2", None)], 0, 13).unwrap();
        s.set_workloads("b", &[report("w", b"frozen", "", None)], 0, 14).unwrap();
        assert_eq!(where_is(&s, "w"), Some(("b".into(), b"frozen".to_vec())));
        // A node's report drops only its own rows.
        s.set_workloads("a", &[], 0, 15).unwrap();
        assert_eq!(where_is(&s, "w").unwrap().0, "b");
    }

    #[test]
    fn ended_workloads_are_kept_for_a_while_then_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let keep_since = 1_000;
        s.set_workloads(
            "a",
            &[
                report("live", b"", "", None),
                report("recent", b"", "", Some(1_500)),
                report("old", b"", "", Some(500)),
            ],
            keep_since,
            2_000,
        )
        .unwrap();
        let ids: Vec<String> = s.workloads().unwrap().into_iter().map(|w| w.0).collect();
        assert_eq!(ids, ["live", "recent"], "an end before the bound is not recorded again");
        // The first end recorded is kept even if a later report says otherwise.
        s.set_workloads("a", &[report("recent", b"", "", Some(1_900))], keep_since, 2_100).unwrap();
        assert_eq!(s.prune_ended(1_600).unwrap(), 1);
        assert!(where_is(&s, "recent").is_none());
        assert_eq!(s.prune_ended(i64::MAX).unwrap(), 0, "nothing ended is left");
    }

    #[test]
    fn forgetting_nodes_fails_their_unfinished_migrations() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        s.register("a", "http://a:1", b"", 1).unwrap();
        s.register("b", "http://b:1", b"", 1).unwrap();
        s.set_workloads("a", &[report("w", b"", "", None)], 0, 1).unwrap();
        let m = MigrationRow {
            id: "m-1".into(),
            process_id: "w".into(),
            source: "a".into(),
            target: "b".into(),
            mode: "stop-and-copy".into(),
            status: "transfer".into(),
            error: String::new(),
            result: None,
            started_at_ms: 1,
            finished_at_ms: None,
        };
        s.insert_migration(&m).unwrap();
        s.insert_migration(&MigrationRow { id: "m-0".into(), ..m.clone() }).unwrap();
        s.finish_migration("m-0", "completed", "", None, 2).unwrap();
        assert_eq!(s.forget_nodes("new cluster", 3).unwrap(), ["a", "b"]);
        assert!(s.nodes().unwrap().is_empty() && s.workloads().unwrap().is_empty());
        let ms = s.migrations().unwrap();
        let one = |id: &str| ms.iter().find(|m| m.id == id).unwrap().clone();
        assert_eq!(
            (one("m-1").status.as_str(), one("m-1").error.as_str()),
            ("failed", "new cluster")
        );
        assert_eq!(one("m-0").status, "completed", "an ended migration stays as it ended");
    }

    #[test]
    fn a_database_from_before_held_copies_is_upgraded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE workloads (id TEXT PRIMARY KEY, node TEXT NOT NULL,
                 status BLOB NOT NULL, updated_at_ms INTEGER NOT NULL);
                 INSERT INTO workloads VALUES ('w', 'a', x'', 1);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        s.set_workloads("b", &[report("w", b"copy", "m-1", None)], 0, 2).unwrap();
        assert_eq!(where_is(&s, "w").unwrap().0, "a");
        drop(s);
        Store::open(&path).expect("opened again once upgraded");
    }

    fn range(s: &str) -> WorkloadRange {
        WorkloadRange::parse(s).unwrap()
    }

    fn allocate(s: &Store, r: &WorkloadRange, w: &str) -> Result<String, AllocError> {
        s.allocate_address(r, w, 1_000).unwrap().map(|a| a.to_string())
    }

    #[test]
    fn addresses_are_the_lowest_free_unique_and_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        let r = range("10.9.0.0/29");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(allocate(&s, &r, "w-a").unwrap(), "10.9.0.1");
            assert_eq!(allocate(&s, &r, "w-b").unwrap(), "10.9.0.2");
            assert_eq!(allocate(&s, &r, "w-c").unwrap(), "10.9.0.3");
            assert_eq!(s.release_address("w-b").unwrap(), ["10.9.0.2"]);
            assert!(s.release_address("w-b").unwrap().is_empty(), "released once");
        }
        // Another coordinator on the same database hands out neither .1 nor .3 again.
        let s = Store::open(&path).unwrap();
        assert_eq!(allocate(&s, &r, "w-d").unwrap(), "10.9.0.2", "the freed one, lowest");
        assert_eq!(allocate(&s, &r, "w-e").unwrap(), "10.9.0.4");
        let all: Vec<String> = s.addresses().unwrap().into_iter().map(|a| a.0).collect();
        assert_eq!(all, ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"]);
    }

    #[test]
    fn an_exhausted_range_says_how_many_are_in_use() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let r = range("10.9.0.0/30");
        // An address outside the range (a report's, or an older range's) is not counted.
        assert_eq!(s.claim_address("10.8.0.9", "w-x", 1).unwrap(), None);
        allocate(&s, &r, "w-a").unwrap();
        allocate(&s, &r, "w-b").unwrap();
        assert_eq!(allocate(&s, &r, "w-c"), Err(AllocError::Exhausted { in_use: 2 }));
        s.release_address("w-a").unwrap();
        assert_eq!(allocate(&s, &r, "w-c").unwrap(), "10.9.0.1");
    }

    #[test]
    fn a_reported_address_is_recorded_unless_another_workload_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let r = range("10.9.0.0/29");
        assert_eq!(s.claim_address("10.9.0.1", "w-old", 1).unwrap(), None);
        assert_eq!(s.claim_address("10.9.0.1", "w-old", 2).unwrap(), None, "again: no conflict");
        assert_eq!(allocate(&s, &r, "w-new").unwrap(), "10.9.0.2", ".1 is never handed out");
        assert_eq!(s.claim_address("10.9.0.2", "w-other", 3).unwrap(), Some("w-new".into()));
        assert_eq!(
            s.addresses().unwrap(),
            [("10.9.0.1".to_string(), "w-old".to_string()), ("10.9.0.2".into(), "w-new".into())]
        );
    }

    #[test]
    fn addresses_of_ended_or_vanished_workloads_are_freed_but_not_while_migrating() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let r = range("10.9.0.0/28");
        for w in ["live", "ended", "moving", "gone", "starting", "new"] {
            allocate(&s, &r, w).unwrap();
            if w != "starting" {
                s.bind_address(w).unwrap();
            }
        }
        s.set_workloads(
            "a",
            &[
                report("live", b"", "", None),
                report("ended", b"", "", Some(5)),
                report("moving", b"", "", Some(5)),
            ],
            0,
            10,
        )
        .unwrap();
        let m = MigrationRow {
            id: "m-1".into(),
            process_id: "moving".into(),
            source: "a".into(),
            target: "b".into(),
            mode: "stop-and-copy".into(),
            status: "transfer".into(),
            error: String::new(),
            result: None,
            started_at_ms: 1,
            finished_at_ms: None,
        };
        s.insert_migration(&m).unwrap();
        let owners = |v: Vec<(String, String)>| v.into_iter().map(|x| x.1).collect::<Vec<_>>();
        // Allocated at 1_000: before it has settled, only the ended one goes.
        assert_eq!(owners(s.release_ended_addresses(1_000).unwrap()), ["ended"]);
        // Settled: a bound one no longer recorded, and a start's reservation never answered.
        let mut freed = owners(s.release_ended_addresses(1_001).unwrap());
        freed.sort();
        assert_eq!(freed, ["gone", "new", "starting"]);
        let left = owners(s.addresses().unwrap());
        assert_eq!(left, ["live", "moving"], "kept while it lives, and while it migrates");
        s.finish_migration("m-1", "rolled_back", "", None, 20).unwrap();
        assert_eq!(owners(s.release_ended_addresses(0).unwrap()), ["moving"]);
        // Pruned: the record is gone, so is the address.
        s.set_workloads("a", &[report("live", b"", "", Some(30))], 0, 31).unwrap();
        s.prune_ended(i64::MAX).unwrap();
        assert_eq!(owners(s.release_ended_addresses(1_001).unwrap()), ["live"]);
        // --forget-nodes forgets every address with the workloads.
        allocate(&s, &r, "w-1").unwrap();
        s.forget_nodes("new cluster", 40).unwrap();
        assert!(s.addresses().unwrap().is_empty());
    }

    #[test]
    fn cordons_and_drains_survive_reopening_and_a_restart_interrupts_running_drains() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        let drain = DrainRow {
            id: "d-1".into(),
            node: "a".into(),
            status: "running".into(),
            deadline_ms: Some(60_000),
            estimate_ms: 1_200,
            fits: true,
            concurrency: 2,
            message: String::new(),
            started_at_ms: 5,
            ended_at_ms: None,
            items: vec![
                DrainItem {
                    process: "w-2".into(),
                    bytes: 9,
                    mode: "post-copy".into(),
                    status: "pending".into(),
                    ..Default::default()
                },
                DrainItem {
                    process: "w-1".into(),
                    bytes: 3,
                    mode: "stop-and-copy".into(),
                    status: "pending".into(),
                    ..Default::default()
                },
            ],
        };
        {
            let s = Store::open(&path).unwrap();
            s.set_schedulable("a", false, 1).unwrap();
            s.set_schedulable("a", false, 2).unwrap();
            s.set_schedulable("b", false, 2).unwrap();
            s.set_schedulable("b", true, 3).unwrap();
            s.insert_drain(&drain).unwrap();
            let it = DrainItem {
                target: "b".into(),
                migration: "m-1".into(),
                status: "completed".into(),
                ..drain.items[1].clone()
            };
            s.set_drain_item("d-1", &it).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.cordoned().unwrap(), ["a".to_string()].into());
        let got = s.drains().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].items[0].process, "w-2", "in the planned order");
        assert_eq!(
            (got[0].items[1].migration.as_str(), got[0].items[1].status.as_str()),
            ("m-1", "completed")
        );
        assert_eq!(s.interrupt_drains("restarted", 9).unwrap(), ["d-1"]);
        assert!(s.interrupt_drains("again", 10).unwrap().is_empty());
        s.end_drain("d-1", "completed", "", 11).unwrap();
        let got = &s.drains().unwrap()[0];
        assert_eq!(
            (got.status.as_str(), got.message.as_str(), got.ended_at_ms),
            ("failed", "restarted", Some(9))
        );
        s.forget_nodes("new cluster", 12).unwrap();
        assert!(s.cordoned().unwrap().is_empty(), "forgotten nodes keep no cordon");
    }

    fn checkpoint(
        id: &str,
        workload: &str,
        taken_at_ms: i64,
        seq: u64,
        keep: u32,
    ) -> CheckpointRow {
        CheckpointRow {
            id: id.into(),
            workload: workload.into(),
            node: "a".into(),
            seq,
            taken_at_ms,
            holders: vec!["a".into(), "b".into()],
            info: id.as_bytes().to_vec(),
            keep,
            ..Default::default()
        }
    }

    fn checkpoint_ids(s: &Store, workload: &str) -> Vec<String> {
        s.checkpoints(workload).unwrap().into_iter().map(|k| k.id).collect()
    }

    #[test]
    fn only_the_newest_checkpoints_are_kept_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        for (i, t) in [10, 30, 20, 40].into_iter().enumerate() {
            s.insert_checkpoint(&checkpoint(&format!("c-{t}"), "w", t, i as u64, 3)).unwrap();
        }
        s.insert_checkpoint(&checkpoint("c-other", "v", 5, 1, 3)).unwrap();
        assert_eq!(checkpoint_ids(&s, "w"), ["c-40", "c-30", "c-20"], "the oldest went");
        // Same instant: the higher sequence number is the newer.
        s.insert_checkpoint(&checkpoint("c-40b", "w", 40, 9, 2)).unwrap();
        assert_eq!(checkpoint_ids(&s, "w"), ["c-40b", "c-40"]);
        // Reported again with more holders: replaced, not doubled; keep 0 is the default.
        let more = CheckpointRow {
            holders: vec!["a".into(), "b".into(), "s3".into()],
            keep: 0,
            ..checkpoint("c-40", "w", 40, 3, 0)
        };
        s.insert_checkpoint(&more).unwrap();
        let got = s.checkpoints("w").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].holders, ["a", "b", "s3"]);
        assert_eq!(got[1].keep, DEFAULT_KEEP_CHECKPOINTS);
        assert_eq!(checkpoint_ids(&s, "v"), ["c-other"], "another workload's are untouched");
    }

    #[test]
    fn checkpoints_go_with_their_workloads_record() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        s.set_workloads(
            "a",
            &[report("live", b"", "", None), report("ended", b"", "", Some(100))],
            0,
            100,
        )
        .unwrap();
        for w in ["live", "ended", "orphan-old", "orphan-new"] {
            let t = if w == "orphan-new" { 500 } else { 50 };
            s.insert_checkpoint(&checkpoint(&format!("c-{w}"), w, t, 1, 3)).unwrap();
        }
        s.prune_ended(200).unwrap();
        assert!(checkpoint_ids(&s, "ended").is_empty(), "pruned with its record");
        assert!(checkpoint_ids(&s, "orphan-old").is_empty(), "no record and old");
        assert_eq!(checkpoint_ids(&s, "orphan-new"), ["c-orphan-new"], "too recent to go");
        assert_eq!(checkpoint_ids(&s, "live"), ["c-live"]);
        s.forget_nodes("new cluster", 300).unwrap();
        assert!(checkpoint_ids(&s, "live").is_empty(), "forgotten with the nodes");
    }

    #[test]
    fn a_node_a_workload_was_failed_over_away_from_never_replaces_its_record() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        s.set_workloads("a", &[report("w", b"on-a", "", None)], 0, 1).unwrap();
        let f = FailedOver {
            workload: "w".into(),
            from_node: "a".into(),
            to_node: "b".into(),
            at_ms: 2,
        };
        s.set_failed_over(&f).unwrap();
        s.put_workload("b", &report("w", b"restored", "", None), 3).unwrap();
        assert_eq!(where_is(&s, "w"), Some(("b".into(), b"restored".to_vec())));
        // a comes back: neither its running copy nor, once fenced, its ended one wins.
        s.set_workloads("a", &[report("w", b"stale", "", None)], 0, 4).unwrap();
        assert_eq!(where_is(&s, "w").unwrap().0, "b");
        s.put_workload("a", &report("w", b"stale", "", None), 4).unwrap();
        s.set_workloads("a", &[report("w", b"fenced", "", Some(5))], 0, 5).unwrap();
        assert_eq!(where_is(&s, "w"), Some(("b".into(), b"restored".to_vec())));
        assert_eq!(s.failed_over().unwrap(), std::slice::from_ref(&f), "kept while a reports it");
        // b's own reports do not clear it; a no longer reporting w does.
        s.set_workloads("b", &[report("w", b"restored", "", None)], 0, 6).unwrap();
        assert_eq!(s.failed_over().unwrap().len(), 1);
        s.set_workloads("a", &[], 0, 7).unwrap();
        assert!(s.failed_over().unwrap().is_empty());
        assert_eq!(where_is(&s, "w").unwrap().0, "b");
        // Cleared only for the node named.
        s.set_failed_over(&f).unwrap();
        s.clear_failed_over_from("w", "b").unwrap();
        assert_eq!(s.failed_over().unwrap().len(), 1);
        s.clear_failed_over_from("w", "a").unwrap();
        assert!(s.failed_over().unwrap().is_empty());
        // A row whose workload is pruned goes with it.
        s.set_failed_over(&f).unwrap();
        s.set_workloads("b", &[report("w", b"done", "", Some(8))], 0, 8).unwrap();
        s.prune_ended(100).unwrap();
        assert!(s.failed_over().unwrap().is_empty());
    }

    fn mig(id: &str, process: &str, mode: &str, status: &str, started: i64) -> MigrationRow {
        MigrationRow {
            id: id.into(),
            process_id: process.into(),
            source: "a".into(),
            target: "b".into(),
            mode: mode.into(),
            status: status.into(),
            error: String::new(),
            result: None,
            started_at_ms: started,
            finished_at_ms: matches!(status, "completed" | "rolled_back" | "failed")
                .then_some(started + 1),
        }
    }

    fn ids(v: &[MigrationRow]) -> Vec<&str> {
        v.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn narrow_migration_queries_agree_with_the_whole_table() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        s.import_migrations(&[
            mig("m-1", "w-1", "stop-and-copy", "completed", 10),
            mig("m-2", "w-1", "failover", "completed", 20),
            mig("m-3", "w-1", "restore", "completed", 30),
            mig("m-4", "w-1", "stop-and-copy", "transfer", 40),
            mig("m-5", "w-2", "post-copy", "pending", 35),
            mig("m-6", "w-2", "restore", "failed", 50),
        ])
        .unwrap();
        assert_eq!(s.migration("m-3").unwrap().unwrap().mode, "restore");
        assert!(s.migration("m-9").unwrap().is_none());
        let all = s.migrations().unwrap();
        let want: Vec<&str> = all.iter().filter(|m| !m.is_final()).map(|m| m.id.as_str()).collect();
        assert_eq!(ids(&s.unfinished_migrations().unwrap()), want);
        assert_eq!(want, ["m-5", "m-4"], "oldest first");
        assert_eq!(s.migration_in_flight("w-1").unwrap().unwrap().id, "m-4");
        assert!(s.migration_in_flight("w-3").unwrap().is_none());
        assert_eq!(s.latest_restore("w-1").unwrap().unwrap().id, "m-3");
        assert!(s.latest_restore("w-2").unwrap().is_none(), "a failed restore is not one");
        // A phase change keeps it in flight; its end takes it out.
        s.set_migration_phase("m-4", "restore").unwrap();
        assert_eq!(s.migration_in_flight("w-1").unwrap().unwrap().status, "restore");
        s.finish_migration("m-4", "completed", "", None, 45).unwrap();
        assert!(s.migration_in_flight("w-1").unwrap().is_none());
        let mut seen = Vec::new();
        s.completed_from("a", "stop-and-copy", |m| {
            seen.push(m.id);
            true
        })
        .unwrap();
        assert_eq!(seen, ["m-4", "m-1"], "newest first");
        let mut first = Vec::new();
        s.completed_from("a", "stop-and-copy", |m| {
            first.push(m.id);
            false
        })
        .unwrap();
        assert_eq!(first, ["m-4"], "stops when told");
        let mut figures = Vec::new();
        s.finished_migrations(|st, _| figures.push(st.to_string())).unwrap();
        figures.sort();
        assert_eq!(figures, ["completed", "completed", "completed", "completed", "failed"]);
        assert_eq!(s.migration_count().unwrap(), 6);
    }

    #[test]
    fn pages_walk_the_history_newest_first_each_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        // Two at the same millisecond: the id orders them.
        let rows: Vec<MigrationRow> = (0..7)
            .map(|i| {
                let st = if i == 3 { "failed" } else { "completed" };
                mig(
                    &format!("m-{i}"),
                    if i % 2 == 0 { "w-even" } else { "w-odd" },
                    "post-copy",
                    st,
                    (i / 2) * 10,
                )
            })
            .collect();
        s.import_migrations(&rows).unwrap();
        let q = |before: Option<Cursor>, limit: u32| MigrationQuery {
            before,
            limit,
            ..Default::default()
        };
        let (p1, next) = s.migrations_page(&q(None, 3)).unwrap();
        assert_eq!(ids(&p1), ["m-4", "m-5", "m-6"]);
        let next = next.unwrap();
        assert_eq!(next.to_string(), "20.m-4");
        assert_eq!(Cursor::parse("20.m-4").unwrap(), next);
        let (p2, next) = s.migrations_page(&q(Some(next), 3)).unwrap();
        assert_eq!(ids(&p2), ["m-1", "m-2", "m-3"]);
        let (p3, next) = s.migrations_page(&q(next, 3)).unwrap();
        assert_eq!((ids(&p3), next), (vec!["m-0"], None), "the last page says so");
        let (exact, next) = s.migrations_page(&q(None, 7)).unwrap();
        assert_eq!((exact.len(), next), (7, None), "no empty page after an exact fit");
        // Filters, with the cursor.
        let odd = MigrationQuery { process: "w-odd".into(), limit: 2, ..Default::default() };
        let (p, next) = s.migrations_page(&odd).unwrap();
        assert_eq!(ids(&p), ["m-3", "m-5"]);
        let (p, next) = s.migrations_page(&MigrationQuery { before: next, ..odd }).unwrap();
        assert_eq!((ids(&p), next), (vec!["m-1"], None));
        let failed = MigrationQuery { status: "failed".into(), limit: 10, ..Default::default() };
        assert_eq!(ids(&s.migrations_page(&failed).unwrap().0), ["m-3"]);
        let mode = MigrationQuery { mode: "stop-and-copy".into(), limit: 10, ..Default::default() };
        assert!(s.migrations_page(&mode).unwrap().0.is_empty());
        for bad in ["", "20", "x.m-1", "20."] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cursor::parse("20").unwrap_err().contains("STARTED_MS.ID"));
    }

    #[test]
    fn pruning_keeps_the_newest_the_young_the_unfinished_and_a_workloads_last_restore() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let mut rows: Vec<MigrationRow> = (0..10)
            .map(|i| mig(&format!("m-{i:02}"), "w-x", "stop-and-copy", "completed", i * 100))
            .collect();
        rows[1].status = "transfer".into();
        rows[1].finished_at_ms = None;
        rows[2] = mig("m-02", "w-live", "failover", "completed", 200);
        rows[3] = mig("m-03", "w-live", "restore", "completed", 300);
        rows[4] = mig("m-04", "w-gone", "restore", "completed", 400);
        s.import_migrations(&rows).unwrap();
        s.set_workloads("b", &[report("w-live", b"", "", None)], 0, 1).unwrap();
        let left = |s: &Store| {
            s.migrations().unwrap().into_iter().map(|m| m.id).collect::<Vec<_>>().join(" ")
        };
        // All younger than the age: nothing goes, however many.
        let young = Retention { keep: 2, max_age_ms: 10_000 };
        assert_eq!(s.prune_migrations(young, 1_000).unwrap(), 0);
        // Old, beyond the newest 3 (m-07..m-09): the finished ones go, except the unfinished
        // m-01 and w-live's newest restore m-03 (its older failover m-02 goes); w-gone has no
        // record any more, so its restore goes.
        let old = Retention { keep: 3, max_age_ms: 0 };
        assert_eq!(s.prune_migrations(old, 1_000_000).unwrap(), 5);
        assert_eq!(left(&s), "m-01 m-03 m-07 m-08 m-09");
        // Young enough by age: kept even beyond the count.
        s.import_migrations(&[mig("m-10", "w-x", "post-copy", "failed", 5_000)]).unwrap();
        let some = Retention { keep: 1, max_age_ms: 1_000 };
        assert_eq!(s.prune_migrations(some, 5_500).unwrap(), 3, "m-07..m-09 were old");
        assert_eq!(left(&s), "m-01 m-03 m-10");
        // keep 0 and age 0: everything finished that is not protected.
        s.finish_migration("m-01", "completed", "", None, 6_000).unwrap();
        let none = Retention { keep: 0, max_age_ms: 0 };
        assert_eq!(s.prune_migrations(none, 10_000).unwrap(), 2);
        assert_eq!(left(&s), "m-03");
    }

    #[test]
    fn events_are_bounded_by_count_and_age() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        for at in 0..10 {
            s.event(Event { at_ms: at * 100, kind: format!("k{at}"), ..Default::default() })
                .unwrap();
        }
        let kinds = |s: &Store| -> Vec<String> {
            s.events("", "", 100).unwrap().into_iter().map(|e| e.kind).collect()
        };
        // Beyond the newest 4 but younger than 1 s at t=1_500: only those before 500 go.
        let r = Retention { keep: 4, max_age_ms: 1_000 };
        assert_eq!(s.prune_events(r, 1_500).unwrap(), 5);
        assert_eq!(kinds(&s), ["k5", "k6", "k7", "k8", "k9"]);
        assert_eq!(s.prune_events(Retention { keep: 4, max_age_ms: 0 }, 1_500).unwrap(), 1);
        assert_eq!(kinds(&s), ["k6", "k7", "k8", "k9"]);
        let empty = Store::open(&d.path().join("other.db")).unwrap();
        assert_eq!(empty.prune_events(r, 0).unwrap(), 0);
    }

    #[test]
    fn the_generation_changes_with_every_write() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        let s = Store::open(&path).unwrap();
        let g0 = s.generation().unwrap();
        assert_eq!(s.generation().unwrap(), g0, "reads change nothing");
        s.register("a", "http://a", b"", 1).unwrap();
        let g1 = s.generation().unwrap();
        assert_ne!(g1, g0);
        // Another connection's write (another process on the same file) counts too.
        Store::open(&path).unwrap().register("b", "http://b", b"", 2).unwrap();
        assert_ne!(s.generation().unwrap(), g1);
        // The finished history's generation ignores heartbeats and progress, not an end.
        let f0 = s.finished_generation().unwrap();
        s.heartbeat("a", b"", 0, 3).unwrap();
        s.insert_migration(&mig("m-1", "w", "post-copy", "pending", 4)).unwrap();
        let f1 = s.finished_generation().unwrap();
        assert_ne!(f1, f0, "an insert may be a finished one");
        s.set_migration_progress("m-1", b"x").unwrap();
        s.set_migration_phase("m-1", "transfer").unwrap();
        s.heartbeat("a", b"", 0, 5).unwrap();
        assert_eq!(s.finished_generation().unwrap(), f1);
        s.finish_migration("m-1", "completed", "", None, 6).unwrap();
        assert_ne!(s.finished_generation().unwrap(), f1);
    }

    #[test]
    fn workloads_by_id_and_by_page() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        s.set_workloads(
            "a",
            &[
                report("w-1", b"1", "", None),
                report("w-2", b"2", "", Some(5)),
                report("w-3", b"3", "", None),
                report("w-4", b"4", "", None),
            ],
            0,
            10,
        )
        .unwrap();
        assert_eq!(s.workload("w-2").unwrap(), Some(("a".into(), b"2".to_vec())));
        assert_eq!(s.workload("w-9").unwrap(), None);
        let page = |after: &str, limit: u32, ended: bool| -> Vec<String> {
            s.workloads_page(after, limit, ended).unwrap().into_iter().map(|w| w.0).collect()
        };
        assert_eq!(page("", 2, false), ["w-1", "w-3"], "ended ones left out");
        assert_eq!(page("w-3", 2, false), ["w-4"]);
        assert_eq!(page("", 2, true), ["w-1", "w-2"]);
        assert_eq!(page("w-2", 5, true), ["w-3", "w-4"]);
    }

    #[test]
    fn history_queries_walk_an_index_not_the_table() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("ferry.db")).unwrap();
        let plan = |sql: &str, args: Vec<rusqlite::types::Value>| -> String {
            let c = s.conn();
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let k = Some(Cursor { started_at_ms: 5, id: "m-1".into() });
        for (q, index) in [
            (MigrationQuery { limit: 10, ..Default::default() }, "migrations_by_started"),
            (
                MigrationQuery { limit: 10, before: k.clone(), ..Default::default() },
                "migrations_by_started",
            ),
            (
                MigrationQuery { limit: 10, before: k, process: "w".into(), ..Default::default() },
                "migrations_by_process",
            ),
            (
                MigrationQuery { limit: 10, status: "failed".into(), ..Default::default() },
                "migrations_by_status",
            ),
        ] {
            let (sql, args) = page_sql(&q);
            let p = plan(&sql, args);
            assert!(p.contains(index) && !p.contains("TEMP B-TREE"), "{q:?}: {p}");
        }
        let p = plan(
            "SELECT id FROM migrations WHERE status NOT IN ('completed', 'rolled_back', 'failed')
             AND process_id = ?1",
            vec![rusqlite::types::Value::Text("w".into())],
        );
        assert!(p.contains("migrations_unfinished"), "{p}");
    }

    #[test]
    fn a_database_from_before_addresses_gains_the_table() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ferry.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE workloads (id TEXT PRIMARY KEY, node TEXT NOT NULL,
                 status BLOB NOT NULL, updated_at_ms INTEGER NOT NULL);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(allocate(&s, &range("10.9.0.0/30"), "w").unwrap(), "10.9.0.1");
    }
}
