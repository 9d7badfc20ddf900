//! The function's write against floors that do not move: the same rows,
//! transformed beforehand, written by the sink (`PgSink::insert`: the COPY
//! path at 1,000 rows, the INSERT path at 10, with every guard of the write
//! transaction) and loaded into
//!
//! - `floor_plain`, a plain table of `user_logins_rows`'s columns with no
//!   constraint, trigger or index beyond the unique key: binary COPY at
//!   1,000, one `BEGIN; INSERT ...; COMMIT` round trip at 10;
//! - `floor_upstream`, the upstream DDL's seven columns (docs/semantics.md, "Schema"): the
//!   same, without the columns login-etl adds.
//!
//! The paths run in turn within each round (A B C, then B C A, ...) on
//! rows of their own, and each round's ratio is taken pair by pair, so the
//! machine's drift hits all alike; the median ratio is reported, and the
//! fastest write against the fastest floor. `cargo bench --bench floor`
//! (make bench) fails when the write at 1,000 rows costs more than
//! [`GATE`] times the plain table's COPY (the lower of the rounds' median
//! and the fastest against the fastest), or at 10 rows its one INSERT
//! round trip (the rounds' median): a ratio
//! taken in one run, not a wall-clock bound. Under `cargo test --benches`
//! (make bench-check) a short form runs in test mode and reports,
//! unjudged: unoptimized, the sink's client-side code weighs too much.
//! `cargo bench --bench floor -- --short` (CI's make bench-gate, an
//! optimized build without LTO) judges the short form at 1,000 rows. Under `cargo bench`
//! (make bench) more rounds, and the bytes per row on disk and in WAL
//! after about 100,000 rows each, of these three, of `floor_narrow`, the
//! row issue 75's levers alone make: tokens as 32-byte `bytea`,
//! the message id as `uuid`, columns in alignment order, fillfactor 100,
//! and of `floor_lean` and `floor_lean_dated`, docs/narrow-row.md's
//! layout C keyed without the date (the function's own since schema 23,
//! as a plain table) and with it. `-- --bytes` measures the bytes alone (the same in test mode:
//! `cargo test --bench floor -- --bytes`). `FLOOR_TEN_ONLY=N` runs N rounds
//! at 10 rows and nothing else (judged as the run would judge them: not
//! with `-- --short`); `FLOOR_CROSSOVER=N`
//! times the sink's COPY path against its INSERT path from 10 to 500 rows,
//! fresh and redelivered (where `COPY_MIN_ROWS` belongs), N rounds each,
//! and nothing else.

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use login_etl::contract::LoginRow;
use login_etl::ingest::sink::PgSink;
use login_etl::privacy::keys::Versions;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::{Config, startup};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// The most the function's write may cost against the plain table's floor:
/// its COPY at 1,000 rows, its INSERT at 10 (issue 75).
const GATE: f64 = 1.3;

const PLAIN_SQL: &str = "CREATE TABLE floor_plain (LIKE user_logins_rows); \
    ALTER TABLE floor_plain ADD UNIQUE (sent_at, message_id)";

/// docs/semantics.md, "Schema": as users' Postgres images create it.
const UPSTREAM_SQL: &str = "CREATE TABLE floor_upstream(user_id varchar(128), device_type varchar(32), \
    masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer, \
    create_date date)";

const UPSTREAM_COPY: &str = "COPY floor_upstream (user_id, device_type, masked_ip, masked_device_id, \
    locale, app_version, create_date) FROM STDIN BINARY";

/// The narrow row (issue 75's levers): fixed-width columns first, widest
/// alignment first (no padding between them), then the variable-length
/// ones; tokens as their 32 bytes, the SQS message id as `uuid` (a
/// non-UUID id would keep its text in `message_id_text`, NULL otherwise).
/// Rows land at the right edge of both, so fillfactor 100.
const NARROW_SQL: &str = "CREATE TABLE floor_narrow(sent_at timestamptz NOT NULL, create_date date NOT NULL, \
    app_version integer, key_version smallint NOT NULL, message_id uuid NOT NULL, masked_ip bytea, \
    masked_device_id bytea, user_id varchar(128), device_type varchar(32), locale varchar(32), \
    app_version_text varchar(32), defects text[], extra jsonb, message_id_text varchar(128)) \
    WITH (fillfactor = 100); \
    ALTER TABLE floor_narrow ADD UNIQUE (sent_at, message_id, create_date) WITH (fillfactor = 100)";

const NARROW_COPY: &str = "COPY floor_narrow (sent_at, create_date, app_version, key_version, message_id, \
    masked_ip, masked_device_id, user_id, device_type, locale, app_version_text) FROM STDIN BINARY";

/// docs/narrow-row.md's layout C, keyed by (sent_at, message_id) alone:
/// partitioned by `sent_at`, not `create_date` (a view gives it back), so
/// the key needs no date; `user_id` and the message id as `uuid` where
/// they are one in canonical form (their text beside them only where not),
/// the version's text only where its value does not render back to it.
const LEAN_SQL: &str = "CREATE TABLE floor_lean(sent_at timestamptz NOT NULL, app_version integer, \
    key_version smallint NOT NULL, message_id uuid NOT NULL, user_id uuid, masked_ip bytea, \
    masked_device_id bytea, device_type varchar(32), locale varchar(32), app_version_text varchar(32), \
    user_id_text varchar(128), message_id_text varchar(128), defects text[], extra jsonb) \
    WITH (fillfactor = 100); \
    ALTER TABLE floor_lean ADD UNIQUE (sent_at, message_id) WITH (fillfactor = 100)";

const LEAN_COPY: &str = "COPY floor_lean (sent_at, app_version, key_version, message_id, user_id, \
    masked_ip, masked_device_id, device_type, locale, app_version_text, user_id_text) FROM STDIN BINARY";

/// Layout C partitioned by day of `create_date`, as `user_logins` is: the
/// key must hold the date, and every partition function stays as it is.
const LEAN_DATED_SQL: &str = "CREATE TABLE floor_lean_dated(sent_at timestamptz NOT NULL, app_version integer, \
    create_date date NOT NULL, key_version smallint NOT NULL, message_id uuid NOT NULL, user_id uuid, \
    masked_ip bytea, masked_device_id bytea, device_type varchar(32), locale varchar(32), \
    app_version_text varchar(32), user_id_text varchar(128), message_id_text varchar(128), defects text[], \
    extra jsonb) WITH (fillfactor = 100); \
    ALTER TABLE floor_lean_dated ADD UNIQUE (sent_at, message_id, create_date) WITH (fillfactor = 100)";

const LEAN_DATED_COPY: &str = "COPY floor_lean_dated (sent_at, app_version, create_date, key_version, \
    message_id, user_id, masked_ip, masked_device_id, device_type, locale, app_version_text, user_id_text) \
    FROM STDIN BINARY";

/// Where a batch goes.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The function's sink, every guard on.
    Function,
    /// The plain table of the same columns.
    Plain,
    /// The upstream DDL's table.
    Upstream,
    /// The narrow row's table (bytes per row only).
    Narrow,
    /// Layout C keyed without the date (bytes per row only).
    Lean,
    /// Layout C keyed with the date (bytes per row only).
    LeanDated,
}

const PATHS: [Path; 3] = [Path::Function, Path::Plain, Path::Upstream];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Function => "the function's write",
            Path::Plain => "plain table, same columns",
            Path::Upstream => "upstream DDL's table",
            Path::Narrow => "narrow row (the issue's levers)",
            Path::Lean => "layout C, no date in the key",
            Path::LeanDated => "layout C, the date in the key",
        }
    }
}

/// `rows`' seven upstream columns into the upstream table by binary COPY.
async fn copy_upstream(client: &Client, rows: &[LoginRow<'_>]) {
    let sink = client.copy_in_unnamed(UPSTREAM_COPY).await.unwrap();
    let types = [
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::INT4,
        Type::DATE,
    ];
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    for r in rows {
        let ip = r.masked_ip.as_ref().map(|t| t.as_str());
        let device = r.masked_device_id.as_ref().map(|t| t.as_str());
        writer
            .as_mut()
            .write(&[
                &r.user_id.as_ref(),
                &r.device_type.as_deref(),
                &ip,
                &device,
                &r.locale.as_deref(),
                &r.app_version,
                &r.create_date,
            ])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
}

/// A value sent as its raw bytes, as binary COPY takes a `uuid`.
#[derive(Debug)]
struct Raw16([u8; 16]);

impl tokio_postgres::types::ToSql for Raw16 {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Lowercase hex (a token, a UUID without its dashes) as bytes.
fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A row's values for a binary COPY, each owned.
type Values = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

/// `rows` by binary COPY (`sql`, of columns of `types`), each as `values`
/// makes it.
async fn copy_values(
    client: &Client,
    sql: &str,
    types: &[Type],
    rows: &[LoginRow<'_>],
    values: impl Fn(&LoginRow<'_>) -> Values,
) {
    let sink = client.copy_in_unnamed(sql).await.unwrap();
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, types));
    for r in rows {
        let row = values(r);
        let row: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            row.iter().map(|v| v.as_ref() as _).collect();
        writer.as_mut().write(&row).await.unwrap();
    }
    writer.finish().await.unwrap();
}

/// A row's tokens as their 32 bytes.
fn token_bytes(r: &LoginRow<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    (
        r.masked_ip.as_ref().map(|t| unhex(t.as_str())),
        r.masked_device_id.as_ref().map(|t| unhex(t.as_str())),
    )
}

/// `rows` into the narrow row's table by binary COPY.
async fn copy_narrow(client: &Client, rows: &[LoginRow<'_>]) {
    use Type as T;
    let types = [
        T::TIMESTAMPTZ,
        T::DATE,
        T::INT4,
        T::INT2,
        T::UUID,
        T::BYTEA,
        T::BYTEA,
        T::VARCHAR,
        T::VARCHAR,
        T::VARCHAR,
        T::VARCHAR,
    ];
    copy_values(client, NARROW_COPY, &types, rows, |r| {
        let id = canonical_uuid(r.message_id).expect("the bench's message ids are UUIDs");
        let (ip, device) = token_bytes(r);
        vec![
            Box::new(r.sent_at),
            Box::new(r.create_date),
            Box::new(r.app_version),
            Box::new(r.key_version as i16),
            Box::new(id),
            Box::new(ip),
            Box::new(device),
            Box::new(r.user_id.to_string()),
            Box::new(r.device_type.as_deref().map(str::to_owned)),
            Box::new(r.locale.as_deref().map(str::to_owned)),
            Box::new(r.app_version_text.as_deref().map(str::to_owned)),
        ]
    })
    .await;
}

/// A UUID in canonical form (lowercase, hyphenated) as its 16 bytes.
fn canonical_uuid(text: &str) -> Option<Raw16> {
    let shape = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    shape.then(|| Raw16(unhex(text).try_into().unwrap()))
}

/// `rows` into a lean table (`dated`: the one with `create_date`) by
/// binary COPY (the bench's message ids are UUIDs; a user id or a version
/// text that does not come back from the column kept beside it).
async fn copy_lean(client: &Client, rows: &[LoginRow<'_>], dated: bool) {
    use Type as T;
    let mut types = vec![T::TIMESTAMPTZ, T::INT4];
    types.extend(dated.then_some(T::DATE));
    types.extend([
        T::INT2,
        T::UUID,
        T::UUID,
        T::BYTEA,
        T::BYTEA,
        T::VARCHAR,
        T::VARCHAR,
        T::VARCHAR,
        T::VARCHAR,
    ]);
    let copy = if dated { LEAN_DATED_COPY } else { LEAN_COPY };
    copy_values(client, copy, &types, rows, |r| {
        let id = canonical_uuid(r.message_id).expect("the bench's message ids are UUIDs");
        let user = canonical_uuid(&r.user_id);
        let user_text = user.is_none().then(|| r.user_id.to_string());
        let rendered = r
            .app_version
            .map(|v| format!("{}.{}.{}", v / 1_000_000, v / 1_000 % 1_000, v % 1_000));
        let version_text = r
            .app_version_text
            .as_deref()
            .filter(|t| rendered.as_deref() != Some(*t))
            .map(str::to_owned);
        let (ip, device) = token_bytes(r);
        let mut values: Values = vec![Box::new(r.sent_at), Box::new(r.app_version)];
        if dated {
            values.push(Box::new(r.create_date));
        }
        values.extend::<Values>(vec![
            Box::new(r.key_version as i16),
            Box::new(id),
            Box::new(user),
            Box::new(ip),
            Box::new(device),
            Box::new(r.device_type.as_deref().map(str::to_owned)),
            Box::new(r.locale.as_deref().map(str::to_owned)),
            Box::new(version_text),
            Box::new(user_text),
        ]);
        values
    })
    .await;
}

/// One batch along `path`: COPY at 1,000 rows, one INSERT round trip at 10
/// (the function chooses the same way: `COPY_MIN_ROWS`).
async fn write(path: Path, sink: &mut PgSink, client: &Client, rows: &[LoginRow<'_>]) {
    let copy = rows.len() >= login_etl::ingest::sink::COPY_MIN_ROWS;
    match path {
        Path::Function => {
            let report = sink.insert(rows, Versions::at(1), false).await.unwrap();
            assert_eq!(report.inserted as usize, rows.len());
            assert_eq!(report.copied, copy);
        }
        Path::Plain if copy => copy_rows_into(client, "floor_plain", rows).await,
        Path::Upstream if copy => copy_upstream(client, rows).await,
        Path::Narrow => copy_narrow(client, rows).await,
        Path::Lean => copy_lean(client, rows, false).await,
        Path::LeanDated => copy_lean(client, rows, true).await,
        Path::Plain => {
            let sql = bare_insert(rows).replacen(
                "INSERT INTO user_logins_rows",
                "INSERT INTO floor_plain",
                1,
            );
            client.batch_execute(&sql).await.unwrap();
        }
        Path::Upstream => {
            let lit = |s: Option<&str>| {
                s.map_or("NULL".into(), |s| format!("'{}'", s.replace('\'', "''")))
            };
            let values: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "({}, {}, {}, {}, {}, {}, '{}')",
                        lit(Some(&r.user_id)),
                        lit(r.device_type.as_deref()),
                        lit(r.masked_ip.as_ref().map(|t| t.as_str())),
                        lit(r.masked_device_id.as_ref().map(|t| t.as_str())),
                        lit(r.locale.as_deref()),
                        r.app_version.map_or("NULL".into(), |v| v.to_string()),
                        r.create_date
                    )
                })
                .collect();
            let sql = format!(
                "BEGIN; INSERT INTO floor_upstream VALUES {}; COMMIT",
                values.join(", ")
            );
            client.batch_execute(&sql).await.unwrap();
        }
    }
}

/// Median per-row cost of each path and the median of the function's
/// ratio to the plain table, round by round.
async fn compare(
    sink: &mut PgSink,
    client: &Client,
    masker: &Masker,
    n: usize,
    rounds: usize,
    seed: &mut u64,
) -> (Ratio, [Duration; 3]) {
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut this = [Duration::ZERO; 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            *seed += 1;
            let event = bench_event(n, *seed);
            let batch = login_etl::SqsBatch::from(&event);
            let rows = rows_of(&batch, masker);
            let started = Instant::now();
            write(PATHS[i], sink, client, &rows).await;
            this[i] = started.elapsed();
        }
        ratios.push(this[0].as_secs_f64() / this[1].as_secs_f64());
        for i in 0..3 {
            times[i].push(this[i]);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let fastest = |t: &[Duration]| t.iter().min().copied().unwrap_or_default();
    let least = fastest(&times[0]).as_secs_f64() / fastest(&times[1]).as_secs_f64();
    let medians = times.map(|mut t| median(&mut t));
    (
        Ratio {
            median: ratios[ratios.len() / 2],
            least,
        },
        medians,
    )
}

/// The function's write against the plain table's floor, two ways.
struct Ratio {
    /// The median of the rounds' ratios (what docs/performance.md quotes).
    median: f64,
    /// The fastest write against the fastest floor. Another process's load
    /// only ever adds time, so the fastest of each is the nearest to its
    /// own cost; a round slowed on one side alone (CI runs builds beside
    /// the benches) moves the median, not this. A lucky floor moves this.
    least: f64,
}

/// Bytes per row on disk (heap, TOAST and indexes, over every partition)
/// and in WAL, for `rows` more rows along `path` in batches of 1,000, after
/// a CHECKPOINT.
async fn bytes_per_row(
    path: Path,
    sink: &mut PgSink,
    client: &Client,
    masker: &Masker,
    rows: usize,
    seed: &mut u64,
) -> (f64, f64) {
    let table = match path {
        Path::Function => "user_logins_rows",
        Path::Plain => "floor_plain",
        Path::Upstream => "floor_upstream",
        Path::Narrow => "floor_narrow",
        Path::Lean => "floor_lean",
        Path::LeanDated => "floor_lean_dated",
    };
    // A partitioned table's bytes are its partitions' (the tree lists none
    // for a plain table, whose own size is all there is).
    let size_sql = format!(
        "SELECT greatest((SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('{table}')), \
         pg_total_relation_size('{table}'))::int8"
    );
    let size =
        |sql: String| async move { client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) };
    client.batch_execute("CHECKPOINT").await.unwrap();
    let (before, lsn): (i64, String) = (
        size(size_sql.clone()).await,
        client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0),
    );
    for _ in 0..rows / 1_000 {
        *seed += 1;
        let event = bench_event(1_000, *seed);
        let batch = login_etl::SqsBatch::from(&event);
        write(path, sink, client, &rows_of(&batch, masker)).await;
    }
    let wal: i64 = client
        .query_one(
            "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::int8",
            &[&lsn],
        )
        .await
        .unwrap()
        .get(0);
    let after = size(size_sql).await;
    let n = (rows / 1_000 * 1_000) as f64;
    ((after - before) as f64 / n, wal as f64 / n)
}

/// Each table's bytes per row after 100,000 rows, and against the
/// upstream DDL's table's (issue 75's bound: on disk at most 1.0x, WAL
/// 1.25x).
async fn print_bytes_per_row(
    sink: &mut PgSink,
    client: &Client,
    masker: &Masker,
    seed: &mut u64,
    cpu: &str,
    server: &str,
) {
    println!(
        "bytes per row after 100,000 rows, batches of 1,000 (on disk: heap, TOAST, indexes; WAL; {cpu}, PostgreSQL {server}):"
    );
    let mut measured = Vec::new();
    for path in [
        Path::Function,
        Path::Plain,
        Path::Upstream,
        Path::Narrow,
        Path::Lean,
        Path::LeanDated,
    ] {
        let (disk, wal) = bytes_per_row(path, sink, client, masker, 100_000, seed).await;
        measured.push((path, disk, wal));
    }
    let (_, up_disk, up_wal) = measured[2];
    for (path, disk, wal) in measured {
        println!(
            "         {:<32} {disk:>7.0} B on disk {wal:>7.0} B WAL   ({:.2}x, {:.2}x the upstream table's)",
            path.name(),
            disk / up_disk,
            wal / up_wal
        );
    }
}

/// Where COPY starts to pay: at each size, the sink's INSERT path against
/// its COPY path (opened as for a batch of `COPY_MIN_ROWS`, whatever the
/// rows), taking turns on rows of their own, `rounds` rounds; prints the
/// median of the rounds' COPY / INSERT ratios (below 1: COPY is cheaper),
/// and the same for a redelivery of those rows (every row a duplicate: the
/// COPY fails on the first and the batch takes the INSERT path after it).
async fn crossover(sink: &mut PgSink, masker: &Masker, rounds: usize, seed: &mut u64, print: bool) {
    use login_etl::ingest::sink::COPY_MIN_ROWS;
    let rounds = rounds.max(1);
    if print {
        println!("COPY against INSERT, the sink's two paths ({rounds} rounds, median):");
    }
    for n in [10, 20, 50, 100, 200, 500] {
        // [fresh rows, their redelivery]: ratios, then each path's times.
        let mut ratios: [Vec<f64>; 2] = Default::default();
        let mut times: [[Vec<Duration>; 2]; 2] = Default::default();
        for round in 0..rounds {
            let mut this = [[Duration::ZERO; 2]; 2];
            for k in 0..2 {
                let copy = (round + k) % 2 == 1;
                *seed += 1;
                let event = bench_event(n, *seed);
                let batch = login_etl::SqsBatch::from(&event);
                let rows = rows_of(&batch, masker);
                let refs: Vec<_> = rows.iter().collect();
                for (again, t) in this.iter_mut().enumerate() {
                    let started = Instant::now();
                    let expected = if copy { COPY_MIN_ROWS.max(n) } else { 0 };
                    let mut writer = sink.start_batch(expected, None).await.unwrap();
                    for row in &rows {
                        writer.push(row).await;
                    }
                    let report = writer
                        .finish(&refs, Versions::at(1), false, None)
                        .await
                        .unwrap();
                    t[usize::from(copy)] = started.elapsed();
                    let written = if again == 0 { n } else { 0 };
                    assert_eq!(
                        (report.copied, report.inserted as usize),
                        (copy && again == 0, written)
                    );
                }
            }
            for again in 0..2 {
                let [insert, copy] = this[again];
                ratios[again].push(copy.as_secs_f64() / insert.as_secs_f64());
                times[again][0].push(insert);
                times[again][1].push(copy);
            }
        }
        if !print {
            continue;
        }
        for (again, what) in ["", ", redelivered"].iter().enumerate() {
            ratios[again].sort_by(f64::total_cmp);
            let [insert, copy] = &mut times[again];
            println!(
                "{n:>6} rows{what}: INSERT {:.2} ms, COPY {:.2} ms; COPY / INSERT {:.2}",
                ms(median(insert)),
                ms(median(copy)),
                ratios[again][ratios[again].len() / 2]
            );
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `-- --short` (CI's make bench-gate): the short form's rounds, judged
    // in the optimized build it runs in, without the bytes per row.
    let full = full_run() && !std::env::args().any(|a| a == "--short");
    let (db, url) = create_db("floor").await;
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("MASKING_KEY", KEY),
        ("RUN_MIGRATIONS", "true"),
    ];
    let config = Config::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    // The build migrates (masking-only: most teams' profile).
    let _handler = startup::build(&config).await.unwrap();
    let mut sink = startup::sink(&config.db, None).await.unwrap();
    let client = connect(&url).await;
    client.batch_execute(PLAIN_SQL).await.unwrap();
    client.batch_execute(UPSTREAM_SQL).await.unwrap();
    client.batch_execute(NARROW_SQL).await.unwrap();
    client.batch_execute(LEAN_SQL).await.unwrap();
    client.batch_execute(LEAN_DATED_SQL).await.unwrap();
    let masker = Masker::new(&MaskingKey::from_hex(KEY, "bench").unwrap());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let server: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let mut seed = 70_000_000;
    if std::env::args().any(|a| a == "--bytes") {
        print_bytes_per_row(&mut sink, &client, &masker, &mut seed, &cpu, &server).await;
        drop(sink);
        drop(client);
        drop_db(&db).await;
        return;
    }
    if let Ok(rounds) = std::env::var("FLOOR_CROSSOVER") {
        let rounds = rounds.parse().expect("FLOOR_CROSSOVER: a number of rounds");
        println!("the sink's INSERT and COPY paths ({cpu}, PostgreSQL {server})");
        // Untimed: each path's first batch (plans, caches).
        crossover(&mut sink, &masker, 1, &mut seed, false).await;
        crossover(&mut sink, &masker, rounds, &mut seed, true).await;
        drop(sink);
        drop(client);
        drop_db(&db).await;
        return;
    }
    println!("the function's write against fixed floors ({cpu}, PostgreSQL {server})");
    // More rounds at 1,000 rows: a steadier median and more chances for
    // each path's fastest round to meet a quiet moment beside CI's builds.
    let (rounds_1000, rounds_10) = if full { (61, 101) } else { (61, 15) };
    // FLOOR_TEN_ONLY=N: N rounds of 10 rows alone (a lever tried on the
    // batch of 10, before against after), nothing at 1,000, no bytes.
    let ten_only = std::env::var("FLOOR_TEN_ONLY").ok().map(|v| {
        v.parse::<usize>()
            .expect("FLOOR_TEN_ONLY: a number of rounds")
            .max(1)
    });
    let (rounds_1000, rounds_10) = match ten_only {
        Some(rounds) => (0, rounds),
        None => (rounds_1000, rounds_10),
    };
    // Untimed: each path's first batch (connections, plans, caches).
    compare(&mut sink, &client, &masker, 10, 1, &mut seed).await;
    if ten_only.is_none() {
        compare(&mut sink, &client, &masker, 1_000, 1, &mut seed).await;
    }
    // (batch size, the ratio judged) for the gate.
    let mut judged = Vec::new();
    for (n, rounds) in [(10, rounds_10), (1_000, rounds_1000)] {
        if rounds == 0 {
            continue;
        }
        let (ratio, medians) = compare(&mut sink, &client, &masker, n, rounds, &mut seed).await;
        println!("{n:>6} rows a batch, {rounds} rounds (median per row):");
        for (path, t) in PATHS.iter().zip(medians) {
            println!(
                "         {:<32} {:>8.2} µs/row  ({:.2} ms a batch)",
                path.name(),
                t.as_secs_f64() * 1e6 / n as f64,
                ms(t)
            );
        }
        // What the gate judges. At 1,000 rows the lower of the two ratios:
        // each is raised by a noise of its own (a round slowed on one side
        // raises the median, a lucky floor the fastest pair; alone here the
        // fastest pairs read 1.21 to 1.30 while the medians read 1.19 to
        // 1.22), and a real cost raises both. At 10 a commit's fsync is
        // most of a batch and varies alone (a floor's lucky fsync made the
        // fastest pair 2.0 beside a median of 1.01): the median, in the full
        // run only (beside a build it read 1.23, too near the gate for CI's
        // short form). Test mode judges nothing (see the end).
        let judge = if cfg!(debug_assertions) {
            None
        } else if n >= 500 {
            Some(ratio.median.min(ratio.least))
        } else {
            full.then_some(ratio.median)
        };
        println!(
            "         the function's write / the plain table's {}: {:.2} (median of the rounds' ratios), {:.2} (fastest against fastest){}",
            if n >= 500 { "COPY" } else { "INSERT" },
            ratio.median,
            ratio.least,
            judge.map_or(String::new(), |r| format!("; judged {r:.2}, gate {GATE}"))
        );
        judged.extend(judge.map(|r| (n, r)));
    }
    if full && ten_only.is_none() {
        print_bytes_per_row(&mut sink, &client, &masker, &mut seed, &cpu, &server).await;
    }
    drop(sink);
    drop(client);
    drop_db(&db).await;
    // Judged in an optimized build only: in test mode (make bench-check)
    // the sink's own client-side code runs unoptimized beside a COPY that
    // is mostly the server's, which moved the ratio by up to 0.4.
    if cfg!(debug_assertions) {
        println!(
            "(test mode: the {GATE}x gate is judged by `cargo bench --bench floor`, an optimized build)"
        );
        return;
    }
    for (n, ratio) in judged {
        assert!(
            ratio <= GATE,
            "the function's write at {n} rows a batch costs {ratio:.2}x the plain table's {} of the same rows (at most {GATE}): a guard, trigger or round trip on the hot path costs too much (docs/performance.md)",
            if n >= 500 { "COPY" } else { "INSERT" }
        );
    }
}
