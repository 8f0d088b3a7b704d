//! [`Store`]: the SQLite database of files, batches and finished batch lines. One thread owns
//! the connection and runs closures sent to it over a channel, one at a time; async callers
//! await the answer without blocking the runtime.
//!
//! Tables:
//! - `files`: one row per file (uploads and results); the bytes are in [`super::files`].
//! - `batches`: one row per batch, with its status and timestamps (Unix seconds).
//! - `batch_lines`: one row per finished input line (`ok` 1: output file, 0: error file) with
//!   the JSONL line to write. The primary key (batch, line) makes a line finish at most once.
//!
//! The database runs in WAL mode: a committed transaction survives the process being killed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc as std_mpsc;

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::oneshot;

use super::objects::{BatchErrors, BatchObject, BatchStatus, FileObject, RequestCounts};
use super::{BatchError, ListParams};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle of the database thread. Cheap to clone; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    expires_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    line INTEGER NOT NULL,
    custom_id TEXT,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
";

impl Store {
    /// Opens (or creates) the database at `path` and starts its thread.
    /// Errors: the file cannot be opened or the schema cannot be created.
    pub fn open(path: &Path) -> Result<Store, BatchError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("govlm-batch-db".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })?;
        Ok(Store { jobs })
    }

    /// Runs `f` on the database thread and returns its result.
    /// Errors: those of `f`; [`BatchError::Stopped`] if the thread is gone.
    pub async fn call<T, F>(&self, f: F) -> Result<T, BatchError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BatchError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn: &mut Connection| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| BatchError::Stopped)?;
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

// ---- files ----

const FILE_COLUMNS: &str = "id, bytes, created_at, filename, purpose";

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileObject> {
    Ok(FileObject::new(
        r.get(0)?,
        r.get::<_, i64>(1)?.max(0) as u64,
        r.get(3)?,
        r.get(4)?,
        r.get(2)?,
    ))
}

/// Inserts a file row.
pub fn insert_file(db: &mut Connection, f: &FileObject) -> Result<(), BatchError> {
    db.execute(
        "INSERT INTO files (id, bytes, created_at, filename, purpose) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![f.id, f.bytes as i64, f.created_at, f.filename, f.purpose],
    )?;
    Ok(())
}

/// A file by id.
pub fn get_file(db: &mut Connection, id: &str) -> Result<Option<FileObject>, BatchError> {
    Ok(db
        .query_row(
            &format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1"),
            params![id],
            file_row,
        )
        .optional()?)
}

/// Deletes a file row; false if there was none.
pub fn delete_file(db: &mut Connection, id: &str) -> Result<bool, BatchError> {
    Ok(db.execute("DELETE FROM files WHERE id = ?1", params![id])? > 0)
}

/// The `seq` of row `id` of `table` (a cursor); an unknown id gives an empty page.
fn cursor(db: &Connection, table: &str, id: &str) -> Result<Option<i64>, BatchError> {
    Ok(db
        .query_row(
            &format!("SELECT seq FROM {table} WHERE id = ?1"),
            params![id],
            |r| r.get(0),
        )
        .optional()?)
}

/// A page of files (and whether more follow).
pub fn list_files(
    db: &mut Connection,
    p: &ListParams,
) -> Result<(Vec<FileObject>, bool), BatchError> {
    let after = match &p.after {
        Some(a) => match cursor(db, "files", a)? {
            Some(seq) => Some(seq),
            None => return Ok((Vec::new(), false)),
        },
        None => None,
    };
    let (cmp, order) = if p.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE (?1 IS NULL OR seq {cmp} ?1) \
         AND (?2 IS NULL OR purpose = ?2) ORDER BY seq {order} LIMIT ?3"
    );
    let mut stmt = db.prepare(&sql)?;
    let mut rows: Vec<FileObject> = stmt
        .query_map(params![after, p.purpose, p.limit as i64 + 1], file_row)?
        .collect::<Result<_, _>>()?;
    let has_more = rows.len() > p.limit;
    rows.truncate(p.limit);
    Ok((rows, has_more))
}

// ---- batches ----

const BATCH_COLUMNS: &str = "b.id, b.endpoint, b.input_file_id, b.completion_window, b.status, \
    b.output_file_id, b.error_file_id, b.errors, b.metadata, b.total, b.created_at, \
    b.in_progress_at, b.expires_at, b.finalizing_at, b.completed_at, b.failed_at, b.expired_at, \
    b.cancelling_at, b.cancelled_at, \
    (SELECT COUNT(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.ok = 1), \
    (SELECT COUNT(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.ok = 0)";

fn json_col<T: serde::de::DeserializeOwned>(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = r.get(i)?;
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn batch_row(r: &Row<'_>) -> rusqlite::Result<BatchObject> {
    let status: String = r.get(4)?;
    let status = BatchStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown batch status `{status}`").into(),
        )
    })?;
    let errors: Option<BatchErrors> = json_col(r, 7)?;
    let metadata: Option<serde_json::Value> = json_col(r, 8)?;
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(BatchObject {
        id: r.get(0)?,
        object: "batch",
        endpoint: r.get(1)?,
        errors,
        input_file_id: r.get(2)?,
        completion_window: r.get(3)?,
        status,
        output_file_id: r.get(5)?,
        error_file_id: r.get(6)?,
        created_at: r.get(10)?,
        in_progress_at: r.get(11)?,
        expires_at: r.get(12)?,
        finalizing_at: r.get(13)?,
        completed_at: r.get(14)?,
        failed_at: r.get(15)?,
        expired_at: r.get(16)?,
        cancelling_at: r.get(17)?,
        cancelled_at: r.get(18)?,
        request_counts: RequestCounts {
            total: count(9)?,
            completed: count(19)?,
            failed: count(20)?,
        },
        metadata,
    })
}

/// Inserts a new batch row (status, timestamps and ids as in `b`).
pub fn insert_batch(db: &mut Connection, b: &BatchObject) -> Result<(), BatchError> {
    let metadata = b.metadata.as_ref().map(serde_json::to_string).transpose()?;
    db.execute(
        "INSERT INTO batches (id, endpoint, input_file_id, completion_window, status, metadata, \
         total, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            b.id,
            b.endpoint,
            b.input_file_id,
            b.completion_window,
            b.status.as_str(),
            metadata,
            b.request_counts.total as i64,
            b.created_at,
            b.expires_at
        ],
    )?;
    Ok(())
}

/// A batch by id, with its request counts.
pub fn get_batch(db: &mut Connection, id: &str) -> Result<Option<BatchObject>, BatchError> {
    Ok(db
        .query_row(
            &format!("SELECT {BATCH_COLUMNS} FROM batches b WHERE b.id = ?1"),
            params![id],
            batch_row,
        )
        .optional()?)
}

/// A page of batches, newest first (and whether more follow).
pub fn list_batches(
    db: &mut Connection,
    p: &ListParams,
) -> Result<(Vec<BatchObject>, bool), BatchError> {
    let after = match &p.after {
        Some(a) => match cursor(db, "batches", a)? {
            Some(seq) => Some(seq),
            None => return Ok((Vec::new(), false)),
        },
        None => None,
    };
    let sql = format!(
        "SELECT {BATCH_COLUMNS} FROM batches b WHERE (?1 IS NULL OR b.seq < ?1) \
         ORDER BY b.seq DESC LIMIT ?2"
    );
    let mut stmt = db.prepare(&sql)?;
    let mut rows: Vec<BatchObject> = stmt
        .query_map(params![after, p.limit as i64 + 1], batch_row)?
        .collect::<Result<_, _>>()?;
    let has_more = rows.len() > p.limit;
    rows.truncate(p.limit);
    Ok((rows, has_more))
}

/// Ids of the batches not yet in a terminal status, oldest first.
pub fn unfinished_batches(db: &mut Connection) -> Result<Vec<String>, BatchError> {
    let mut stmt = db.prepare(
        "SELECT id FROM batches WHERE status IN \
         ('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY seq",
    )?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Validation passed: the batch has `total` lines (also when it is already cancelling) and is
/// `in_progress` if it was `validating`.
pub fn set_in_progress(
    db: &mut Connection,
    id: &str,
    total: usize,
    now: i64,
) -> Result<(), BatchError> {
    let tx = db.transaction()?;
    tx.execute(
        "UPDATE batches SET total = ?2 WHERE id = ?1",
        params![id, total as i64],
    )?;
    tx.execute(
        "UPDATE batches SET status = 'in_progress', in_progress_at = ?2 \
         WHERE id = ?1 AND status = 'validating'",
        params![id, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// Validation failed: `failed` with `errors`.
pub fn set_failed(
    db: &mut Connection,
    id: &str,
    errors: &BatchErrors,
    total: usize,
    now: i64,
) -> Result<(), BatchError> {
    db.execute(
        "UPDATE batches SET status = 'failed', errors = ?2, total = ?3, failed_at = ?4 \
         WHERE id = ?1",
        params![id, serde_json::to_string(errors)?, total as i64, now],
    )?;
    Ok(())
}

/// Marks a batch `cancelling` if it is still validating or in progress; the batch as it is
/// afterwards (None: unknown id).
pub fn set_cancelling(
    db: &mut Connection,
    id: &str,
    now: i64,
) -> Result<Option<BatchObject>, BatchError> {
    db.execute(
        "UPDATE batches SET status = 'cancelling', cancelling_at = ?2 \
         WHERE id = ?1 AND status IN ('validating', 'in_progress')",
        params![id, now],
    )?;
    get_batch(db, id)
}

/// All lines are done (or the batch stops): `finalizing`.
pub fn set_finalizing(db: &mut Connection, id: &str, now: i64) -> Result<(), BatchError> {
    db.execute(
        "UPDATE batches SET status = 'finalizing', finalizing_at = ?2 \
         WHERE id = ?1 AND status = 'in_progress'",
        params![id, now],
    )?;
    Ok(())
}

/// Records a finished line (ignored if the line already has a row: a line finishes once).
pub fn record_line(
    db: &mut Connection,
    batch_id: &str,
    line: u64,
    custom_id: Option<&str>,
    ok: bool,
    result: &str,
) -> Result<(), BatchError> {
    db.execute(
        "INSERT OR IGNORE INTO batch_lines (batch_id, line, custom_id, ok, result) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![batch_id, line as i64, custom_id, ok as i64, result],
    )?;
    Ok(())
}

/// Lines of a batch that have finished.
pub fn done_lines(db: &mut Connection, batch_id: &str) -> Result<HashSet<u64>, BatchError> {
    let mut stmt = db.prepare("SELECT line FROM batch_lines WHERE batch_id = ?1")?;
    let lines = stmt
        .query_map(params![batch_id], |r| Ok(r.get::<_, i64>(0)?.max(0) as u64))?
        .collect::<Result<_, _>>()?;
    Ok(lines)
}

/// The output and error files' contents: finished lines in input order, `\n`-terminated.
pub fn result_files(db: &mut Connection, batch_id: &str) -> Result<(String, String), BatchError> {
    let mut stmt =
        db.prepare("SELECT ok, result FROM batch_lines WHERE batch_id = ?1 ORDER BY line")?;
    let mut rows = stmt.query(params![batch_id])?;
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(r) = rows.next()? {
        let ok: i64 = r.get(0)?;
        let line: String = r.get(1)?;
        let dest = if ok != 0 { &mut out } else { &mut err };
        dest.push_str(&line);
        dest.push('\n');
    }
    Ok((out, err))
}

/// Ends a batch in one transaction: adds the result files' rows and sets the final `status`
/// (completed, cancelled or expired) with its timestamp and the file ids.
pub fn finish(
    db: &mut Connection,
    batch_id: &str,
    status: BatchStatus,
    output: Option<&FileObject>,
    error: Option<&FileObject>,
    now: i64,
) -> Result<(), BatchError> {
    let tx = db.transaction()?;
    for f in [output, error].into_iter().flatten() {
        tx.execute(
            "INSERT OR REPLACE INTO files (id, bytes, created_at, filename, purpose) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![f.id, f.bytes as i64, f.created_at, f.filename, f.purpose],
        )?;
    }
    let column = match status {
        BatchStatus::Completed => "completed_at",
        BatchStatus::Cancelled => "cancelled_at",
        BatchStatus::Expired => "expired_at",
        _ => {
            return Err(BatchError::Conflict(format!(
                "a batch cannot finish as `{}`",
                status.as_str()
            )))
        }
    };
    tx.execute(
        &format!(
            "UPDATE batches SET status = ?2, {column} = ?3, output_file_id = ?4, \
             error_file_id = ?5 WHERE id = ?1"
        ),
        params![
            batch_id,
            status.as_str(),
            now,
            output.map(|f| f.id.as_str()),
            error.map(|f| f.id.as_str())
        ],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    fn batch(id: &str) -> BatchObject {
        BatchObject {
            id: id.into(),
            object: "batch",
            endpoint: "/v1/chat/completions".into(),
            errors: None,
            input_file_id: "file-x".into(),
            completion_window: "24h".into(),
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: 1,
            in_progress_at: None,
            expires_at: Some(86401),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: Some(serde_json::json!({"k": "v"})),
        }
    }

    #[test]
    fn lines_finish_once_and_count() {
        let mut c = db();
        insert_batch(&mut c, &batch("batch_a")).unwrap();
        set_in_progress(&mut c, "batch_a", 3, 2).unwrap();
        record_line(&mut c, "batch_a", 2, Some("b"), false, "{\"e\":1}").unwrap();
        record_line(&mut c, "batch_a", 1, Some("a"), true, "{\"o\":1}").unwrap();
        record_line(&mut c, "batch_a", 1, Some("a"), true, "{\"o\":2}").unwrap();
        let b = get_batch(&mut c, "batch_a").unwrap().unwrap();
        assert_eq!(b.status, BatchStatus::InProgress);
        assert_eq!(
            b.request_counts,
            RequestCounts {
                total: 3,
                completed: 1,
                failed: 1
            }
        );
        assert_eq!(b.metadata, Some(serde_json::json!({"k": "v"})));
        assert_eq!(done_lines(&mut c, "batch_a").unwrap().len(), 2);
        let (out, err) = result_files(&mut c, "batch_a").unwrap();
        assert_eq!(out, "{\"o\":1}\n");
        assert_eq!(err, "{\"e\":1}\n");
        assert_eq!(
            unfinished_batches(&mut c).unwrap(),
            vec!["batch_a".to_string()]
        );
        let f = FileObject::new(
            "file-o".into(),
            8,
            "o.jsonl".into(),
            "batch_output".into(),
            3,
        );
        finish(&mut c, "batch_a", BatchStatus::Completed, Some(&f), None, 4).unwrap();
        let b = get_batch(&mut c, "batch_a").unwrap().unwrap();
        assert_eq!(b.status, BatchStatus::Completed);
        assert_eq!(b.completed_at, Some(4));
        assert_eq!(b.output_file_id.as_deref(), Some("file-o"));
        assert!(get_file(&mut c, "file-o").unwrap().is_some());
        assert!(unfinished_batches(&mut c).unwrap().is_empty());
    }

    #[test]
    fn cancel_only_running_batches() {
        let mut c = db();
        insert_batch(&mut c, &batch("batch_a")).unwrap();
        let b = set_cancelling(&mut c, "batch_a", 5).unwrap().unwrap();
        assert_eq!(b.status, BatchStatus::Cancelling);
        assert_eq!(b.cancelling_at, Some(5));
        finish(&mut c, "batch_a", BatchStatus::Cancelled, None, None, 6).unwrap();
        let b = set_cancelling(&mut c, "batch_a", 7).unwrap().unwrap();
        assert_eq!(b.status, BatchStatus::Cancelled);
        assert!(set_cancelling(&mut c, "batch_nope", 7).unwrap().is_none());
    }

    #[test]
    fn pages() {
        let mut c = db();
        for i in 0..5 {
            insert_batch(&mut c, &batch(&format!("batch_{i}"))).unwrap();
        }
        let p = |after: Option<&str>| ListParams {
            after: after.map(str::to_string),
            limit: 2,
            ascending: false,
            purpose: None,
        };
        let (page, more) = list_batches(&mut c, &p(None)).unwrap();
        assert_eq!(
            page.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["batch_4", "batch_3"]
        );
        assert!(more);
        let (page, more) = list_batches(&mut c, &p(Some("batch_1"))).unwrap();
        assert_eq!(
            page.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["batch_0"]
        );
        assert!(!more);
        for i in 0..3 {
            let f = FileObject::new(format!("file-{i}"), 1, "f".into(), "batch".into(), i);
            insert_file(&mut c, &f).unwrap();
        }
        let mut q = p(None);
        q.ascending = true;
        let (page, more) = list_files(&mut c, &q).unwrap();
        assert_eq!(
            page.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["file-0", "file-1"]
        );
        assert!(more);
        q.purpose = Some("batch_output".into());
        assert!(list_files(&mut c, &q).unwrap().0.is_empty());
    }
}
