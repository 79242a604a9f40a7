//! The shared backend: PostgreSQL, so several kensa replicas behind a load balancer share
//! verdicts, idempotency and cursors.
//!
//! Cursor: a PostgreSQL sequence would hand out numbers at insert time, and a transaction that
//! took 41 may commit after one that took 42; a consumer reading at that moment sees 42, moves
//! its cursor past 41 and never sees it. Instead every inserting transaction locks the one row
//! of `verdict_cursor` (`FOR UPDATE`), numbers its verdicts after it and keeps the lock until it
//! commits, so cursors are assigned in commit order across all replicas: whoever sees cursor N
//! committed also sees every cursor below N. A rolled-back transaction gives its numbers back.
//!
//! Holding that lock through a commit serializes commits, so each replica has one writer task
//! that commits whatever inserts are waiting in one transaction (group commit, up to `GROUP`):
//! one lock turn and one WAL flush per group instead of per verdict. If a group fails, its
//! inserts are retried one by one so one bad row cannot fail its neighbours. (A retry of a
//! stored key never gets here: the inspector looks its key up first.)
//!
//! Wake-ups across replicas: every insert sends `pg_notify` (delivered at commit); each
//! replica listens on one connection and updates [`VerdictStore::subscribe`].
//!
//! TLS: `sslmode=require`, `verify-ca` and `verify-full` in the URL all connect with TLS and
//! verify the server's certificate and host name (against `sslrootcert=FILE`, or the system's
//! roots); kensa has no unverified TLS mode. Without one of them (or with `prefer`, the
//! default) it connects without TLS.

mod activity;
mod reviews;

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{AsyncMessage, NoTls, Row, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::dialect::Dialect;
use super::migrations::{self, CREATE_TABLE};
use super::query::Param;
use super::record::{RawRow, decode, now_ms};
use super::retention::{Pruned, RetentionPolicy};
use super::sql;
use super::{
    ConsumerLedger, Inserted, NewVerdict, StoreError, StoreStats, StoreUpkeep, StoredVerdict,
    VerdictQuery, VerdictStore, advance, to_sql_int as to_i64,
};

/// Connections per replica.
const POOL_SIZE: usize = 16;
/// Most inserts committed in one transaction.
const GROUP: usize = 256;
/// Inserts that may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;
/// How long a request waits for a connection (or to open one) before the store is unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the listener reconnects.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// The PostgreSQL verdict store.
pub struct PostgresStore {
    pool: Pool,
    jobs: mpsc::Sender<InsertJob>,
    cursor: watch::Receiver<u64>,
    _listener: DropGuard,
}

/// One insert waiting for the writer.
struct InsertJob {
    verdict: NewVerdict,
    json: String,
    answer: oneshot::Sender<Result<Inserted, StoreError>>,
}

impl PostgresStore {
    /// Connects, migrates (one replica at a time) and starts listening for other replicas'
    /// writes. The URL's `options=-csearch_path%3D<schema>` picks the schema; `password`, when
    /// given, is used instead of one in the URL.
    pub async fn connect(url: &str, password: Option<&str>) -> Result<PostgresStore, StoreError> {
        let (url, root_cert) = tls_settings(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        if let Some(password) = password {
            config.password(password);
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls_connector(root_cert.as_deref())?),
            _ => None,
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("kensa");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let schema = migrate(&pool).await?;
        let last = last_cursor(&pool).await?;
        let (cursor_tx, cursor) = watch::channel(last);
        let channel = channel_name(&schema);
        let cancel = CancellationToken::new();
        tokio::spawn(listen(
            config,
            tls,
            pool.clone(),
            channel.clone(),
            cursor_tx.clone(),
            cancel.clone(),
        ));
        let (jobs, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(pool.clone(), receiver, channel, cursor_tx));
        Ok(PostgresStore {
            pool,
            jobs,
            cursor,
            _listener: cancel.drop_guard(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

#[async_trait::async_trait]
impl VerdictStore for PostgresStore {
    async fn insert(&self, verdict: NewVerdict) -> Result<Inserted, StoreError> {
        let json = verdict
            .verdict_json()
            .map_err(|e| StoreError::Corrupt(format!("verdict does not serialize: {e}")))?;
        let (answer, answered) = oneshot::channel();
        let job = InsertJob {
            verdict,
            json,
            answer,
        };
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }

    async fn get(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<StoredVerdict>, StoreError> {
        by_key(&self.client().await?, station_id, inspection_id).await
    }

    async fn list(&self, query: &VerdictQuery) -> Result<Vec<StoredVerdict>, StoreError> {
        let (text, params) = query.to_sql(Dialect::Postgres);
        let refs = as_sql(&params);
        let client = self.client().await?;
        let statement = client.prepare_cached(&text).await.map_err(unavailable)?;
        let rows = client.query(&statement, &refs).await.map_err(unavailable)?;
        rows.iter()
            .map(|row| raw_row(row).and_then(decode))
            .collect()
    }

    async fn image(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(sql::SELECT_IMAGE, &[&station_id, &inspection_id])
            .await
            .map_err(unavailable)?;
        row.map(|row| row.try_get(0).map_err(corrupt)).transpose()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.cursor.clone()
    }

    /// Takes the cursor lock every insert needs, then lets it go: a database whose commits are
    /// stuck (a lock held, a stalled server) does not answer.
    async fn probe(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.query_one("SELECT last FROM verdict_cursor FOR UPDATE", &[])
            .await
            .map_err(unavailable)?;
        tx.rollback().await.map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl StoreUpkeep for PostgresStore {
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let client = self.client().await?;
        let mut pairs = Vec::new();
        for text in [sql::VERDICT_STATS, sql::IMAGE_STATS] {
            let row = client.query_one(text, &[]).await.map_err(unavailable)?;
            let count: i64 = row.try_get(0).map_err(corrupt)?;
            let bytes: i64 = row.try_get(1).map_err(corrupt)?;
            pairs.push((count.unsigned_abs(), bytes.unsigned_abs()));
        }
        let ((rows, bytes), (images, image_bytes)) = (pairs[0], pairs[1]);
        Ok(StoreStats {
            rows,
            bytes: bytes + image_bytes,
            images,
            image_bytes,
        })
    }

    async fn prune(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let mut pruned = Pruned::default();
        if let Some(cutoff) = policy.cutoff_ms(now_ms) {
            pruned.verdicts += tx
                .execute(sql::PRUNE_BY_AGE, &[&cutoff])
                .await
                .map_err(unavailable)?;
        }
        if let Some(rows) = policy.max_rows {
            pruned.verdicts += tx
                .execute(sql::PRUNE_BY_ROWS, &[&to_i64(rows)])
                .await
                .map_err(unavailable)?;
        }
        tx.execute(sql::PRUNE_ORPHAN_IMAGES, &[])
            .await
            .map_err(unavailable)?;
        tx.execute(super::reviews::PRUNE_ORPHANS, &[])
            .await
            .map_err(unavailable)?;
        if let Some(bytes) = policy.max_image_bytes {
            pruned.images += tx
                .execute(sql::PRUNE_IMAGES_BY_BYTES, &[&to_i64(bytes)])
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(pruned)
    }
}

#[async_trait::async_trait]
impl ConsumerLedger for PostgresStore {
    async fn consumer_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(sql::SELECT_CONSUMER_CURSOR, &[&name])
            .await
            .map_err(unavailable)?;
        let cursor: i64 = match row {
            Some(row) => row.try_get(0).map_err(corrupt)?,
            None => 0,
        };
        Ok(cursor.unsigned_abs())
    }

    async fn save_consumer_cursor(&self, name: &str, cursor: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(sql::SAVE_CONSUMER_CURSOR, &[&name, &to_i64(cursor)])
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let until = now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let client = self.client().await?;
        client
            .execute(sql::ACQUIRE_LEASE, &[&name, &holder, &until, &now_ms])
            .await
            .map(|changed| changed == 1)
            .map_err(unavailable)
    }
}

/// The writer task: group commit until the store is dropped.
async fn write_loop(
    pool: Pool,
    mut jobs: mpsc::Receiver<InsertJob>,
    channel: String,
    cursor: watch::Sender<u64>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match insert_group(&pool, &channel, &cursor, &group).await {
            Ok(results) => deliver(group, results.into_iter().map(Ok)),
            Err(error) if group.len() == 1 => deliver(group, [Err(error)]),
            Err(error) => {
                tracing::warn!(%error, inserts = group.len(), "group insert failed; retrying one by one");
                for job in group {
                    let result = insert_group(&pool, &channel, &cursor, std::slice::from_ref(&job))
                        .await
                        .and_then(|mut one| one.pop().ok_or_else(writer_gone));
                    deliver(vec![job], [result]);
                }
            }
        }
    }
}

fn deliver(group: Vec<InsertJob>, results: impl IntoIterator<Item = Result<Inserted, StoreError>>) {
    for (job, result) in group.into_iter().zip(results) {
        // The caller may have gone; the write stands either way.
        let _ = job.answer.send(result);
    }
}

/// Inserts a group in one transaction under the cursor lock; one result per job, in order.
async fn insert_group(
    pool: &Pool,
    channel: &str,
    cursor: &watch::Sender<u64>,
    group: &[InsertJob],
) -> Result<Vec<Inserted>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    let mut last: i64 = tx
        .query_one("SELECT last FROM verdict_cursor FOR UPDATE", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    let statement = tx
        .prepare_cached(&sql::insert_verdict(Dialect::Postgres, true))
        .await
        .map_err(unavailable)?;
    let first = last;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let (verdict, v) = (&job.verdict, &job.verdict.verdict);
        let seq = last + 1;
        let stored_at_ms = now_ms();
        let mut params = sql::insert_params(verdict, &job.json, stored_at_ms);
        params.push(Param::Int(seq));
        let inserted = tx
            .query_opt(&statement, &as_sql(&params))
            .await
            .map_err(unavailable)?;
        if inserted.is_none() {
            // Stored first by another request, here or on another replica, or earlier in
            // this group.
            let existing = by_key(&tx, &v.station_id, &v.inspection_id)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt("a conflicting verdict vanished during insert".into())
                })?;
            results.push(Inserted::Existing(existing));
            continue;
        }
        last = seq;
        if let Some(image) = &verdict.image {
            tx.execute(
                sql::INSERT_IMAGE,
                &[&seq, &image.as_ref(), &to_i64(image.len() as u64)],
            )
            .await
            .map_err(unavailable)?;
        }
        results.push(Inserted::New(
            verdict.stored(seq.unsigned_abs(), stored_at_ms),
        ));
    }
    if last > first {
        tx.execute("UPDATE verdict_cursor SET last = $1", &[&last])
            .await
            .map_err(unavailable)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&channel, &last.to_string()])
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    advance(cursor, last.unsigned_abs());
    Ok(results)
}

/// Applies pending migrations under an advisory lock (replicas starting together take turns);
/// returns the schema in use.
async fn migrate(pool: &Pool) -> Result<String, StoreError> {
    let schema = |e: tokio_postgres::Error| StoreError::Schema(e.to_string());
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(schema)?;
    let current: Option<String> = tx
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(schema)?
        .get(0);
    let Some(current) = current else {
        return Err(StoreError::Schema(
            "no schema to create tables in: the search_path names no existing schema".into(),
        ));
    };
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&current])
        .await
        .map_err(schema)?;
    tx.batch_execute(CREATE_TABLE).await.map_err(schema)?;
    let applied: Vec<i64> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(schema)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for migration in migrations::pending(migrations::POSTGRES, &applied)? {
        tx.batch_execute(migration.sql).await.map_err(|e| {
            StoreError::Schema(format!("migration {} failed: {e}", migration.version))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &now_ms()],
        )
        .await
        .map_err(schema)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            schema = %current,
            "PostgreSQL store migrated"
        );
    }
    tx.commit().await.map_err(schema)?;
    Ok(current)
}

async fn last_cursor(pool: &Pool) -> Result<u64, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let last: i64 = client
        .query_one("SELECT last FROM verdict_cursor", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    Ok(last.unsigned_abs())
}

/// Listens for other replicas' commits until cancelled, reconnecting after failures; after
/// each (re)connect it reads the cursor, so nothing missed while disconnected stays unseen.
async fn listen(
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    pool: Pool,
    channel: String,
    cursor: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let listened = match &tls {
            Some(tls) => listen_once(&config, tls.clone(), &pool, &channel, &cursor, &cancel).await,
            None => listen_once(&config, NoTls, &pool, &channel, &cursor, &cancel).await,
        };
        if let Err(error) = listened {
            tracing::warn!(%error, "PostgreSQL listener lost; reconnecting");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RELISTEN_AFTER) => {}
        }
    }
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    pool: &Pool,
    channel: &str,
    cursor: &watch::Sender<u64>,
    cancel: &CancellationToken,
) -> Result<(), StoreError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await.map_err(unavailable)?;
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = stream.next().await {
            if messages_tx.send(message).is_err() {
                return;
            }
        }
    });
    let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
    let result = async {
        client
            .batch_execute(&format!("LISTEN {quoted}"))
            .await
            .map_err(unavailable)?;
        advance(cursor, last_cursor(pool).await?);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                message = messages.recv() => match message {
                    Some(AsyncMessage::Notification(note)) => {
                        if let Ok(seq) = note.payload().parse::<u64>() {
                            advance(cursor, seq);
                        }
                    }
                    Some(_) => {}
                    None => return Err(StoreError::Unavailable("listener connection closed".into())),
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// The URL as tokio-postgres reads it, and the `sslrootcert` file: libpq's `verify-ca` and
/// `verify-full` become `require` (which kensa always verifies), and `sslrootcert`, which
/// tokio-postgres does not know, is taken out.
pub(crate) fn tls_settings(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root_cert = Some(path.to_string()),
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require".into()),
            _ => kept.push(pair.to_string()),
        }
    }
    if kept.is_empty() {
        return (base.to_string(), root_cert);
    }
    (format!("{base}?{}", kept.join("&")), root_cert)
}

/// A TLS connector that verifies the server against `root_cert` or the system's roots.
fn tls_connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect, StoreError> {
    crate::transport::tls::client_config(root_cert.map(std::path::Path::new))
        .map(MakeRustlsConnect::new)
        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL TLS: {e:#}")))
}

/// The notification channel of one schema (channel names are at most 63 bytes).
fn channel_name(schema: &str) -> String {
    let mut name = format!("kensa_verdicts_{schema}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

async fn by_key(
    client: &impl GenericClient,
    station_id: &str,
    inspection_id: &str,
) -> Result<Option<StoredVerdict>, StoreError> {
    let statement = client
        .prepare_cached(&sql::select_by_key())
        .await
        .map_err(unavailable)?;
    let row = client
        .query_opt(&statement, &[&station_id, &inspection_id])
        .await
        .map_err(unavailable)?;
    row.map(|row| raw_row(&row).and_then(decode)).transpose()
}

fn raw_row(row: &Row) -> Result<RawRow, StoreError> {
    Ok((
        row.try_get(0).map_err(corrupt)?,
        row.try_get(1).map_err(corrupt)?,
        row.try_get(2).map_err(corrupt)?,
        row.try_get(3).map_err(corrupt)?,
        row.try_get(4).map_err(corrupt)?,
        row.try_get(5).map_err(corrupt)?,
        row.try_get(6).map_err(corrupt)?,
        row.try_get(7).map_err(corrupt)?,
    ))
}

/// Parameters as the driver takes them.
fn as_sql<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Int(i) => i.to_sql_checked(ty, out),
            Param::Float(f) => f.to_sql_checked(ty, out),
            Param::Bool(b) => b.to_sql_checked(ty, out),
            Param::Text(text) => text.as_ref().to_sql_checked(ty, out),
            Param::MaybeText(text) => text.to_sql_checked(ty, out),
        }
    }

    /// Each variant checks its own type in `to_sql`.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn unavailable(error: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {}", with_sources(&error)))
}

/// An error and its causes ("db error" alone does not say that pg_hba.conf refused us).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn corrupt(error: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(format!("PostgreSQL row: {error}"))
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the PostgreSQL writer task stopped".into())
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL connection: {}", with_sources(&error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_settings_become_tokio_postgres_ones() {
        assert_eq!(
            tls_settings("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&options=x"),
            (
                "postgres://u@h/db?sslmode=require&options=x".to_string(),
                Some("/ca.pem".to_string())
            )
        );
        assert_eq!(tls_settings("postgres://u@h/db").0, "postgres://u@h/db");
    }

    #[test]
    fn channel_names_fit_postgres() {
        assert_eq!(channel_name("public"), "kensa_verdicts_public");
        assert_eq!(channel_name(&"s".repeat(100)).len(), 63);
    }
}
