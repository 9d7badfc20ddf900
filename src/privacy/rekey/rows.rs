//! The rows (step 3 of a re-key): partition by partition, in chunks of
//! pages, each chunk its own short transaction, in one stream or side by
//! side ([`super::jobs`]); the partitions listed again until a listing
//! brings nothing new (`maintain` may make one out of DEFAULT meanwhile).

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use super::jobs::{Chunk, Jobs};
use super::{CHUNK_CONFLICT_RETRIES, Progress, RekeyError, RekeyOptions, db};
use crate::database::statement::Statement;
use crate::privacy::masking::Masker;
use crate::table::partitions::{HOLD_PARTITION_STEP, Partition, Segment};

/// A partition's segment (see [`Segment`]) and the relation holding it.
fn segments_of(partitions: &[Partition]) -> Vec<(Segment, String)> {
    let default = partitions
        .iter()
        .find(|p| p.is_default)
        .map(|p| p.name.clone());
    crate::table::partitions::segments(partitions)
        .into_iter()
        .filter_map(|s| {
            let rel = match s {
                Segment::Range(lo, hi) => partitions
                    .iter()
                    .find(|p| !p.is_default && p.lo == lo && p.hi == hi)
                    .map(|p| p.name.clone()),
                Segment::Gap(..) | Segment::Null => default.clone(),
            }?;
            Some((s, rel))
        })
        .collect()
}

/// Re-keys the rows still at `to - 1`, chunk by chunk; listing the
/// partitions again until a listing brings none it has not visited.
pub(super) async fn rekey_rows(
    client: &mut Client,
    jobs: &mut Jobs,
    masker: &Masker,
    to: u16,
    options: RekeyOptions,
    chunks_left: &mut Option<u64>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64, RekeyError> {
    let mut walk = Walk {
        masker,
        to,
        options,
        began: Instant::now(),
        last_report: Instant::now(),
        estimate: 0,
        done: 0,
    };
    let mut visited: HashSet<(Segment, String)> = HashSet::new();
    loop {
        let partitions = crate::table::partitions::partitions(client)
            .await
            .map_err(db("listing the partitions"))?;
        let todo: Vec<(Segment, String)> = segments_of(&partitions)
            .into_iter()
            .filter(|s| !visited.contains(s))
            .collect();
        if todo.is_empty() {
            return Ok(walk.done);
        }
        walk.estimate = estimate_rows(client).await?;
        if jobs.side_by_side() {
            let chunks = chunks_of(client, &todo, options.chunk_pages, chunks_left).await?;
            walk.side_by_side(jobs, chunks, progress).await?;
            visited.extend(todo);
        } else {
            for (segment, rel) in todo {
                if !walk
                    .one_stream(client, (segment, &rel), chunks_left, progress)
                    .await?
                {
                    return Ok(walk.done);
                }
                visited.insert((segment, rel));
            }
        }
        if *chunks_left == Some(0) {
            return Ok(walk.done);
        }
    }
}

/// The planner's estimate of the table's rows (`reltuples`), for progress.
async fn estimate_rows(client: &Client) -> Result<i64, RekeyError> {
    const ESTIMATE: Statement = Statement::new(super::ROWS_ESTIMATE, &[], "estimating the rows");
    Ok(ESTIMATE.value(client, &[]).await?)
}

/// The chunks of `todo`'s partitions, `chunk_pages` each, at most
/// `chunks_left` of them (which it counts down).
async fn chunks_of(
    client: &Client,
    todo: &[(Segment, String)],
    chunk_pages: u32,
    chunks_left: &mut Option<u64>,
) -> Result<VecDeque<Chunk>, RekeyError> {
    let mut chunks = VecDeque::new();
    for (segment, rel) in todo {
        let Some(pages) = pages_of(client, rel).await? else {
            continue;
        };
        let mut page = 0i64;
        while page < pages.max(1) {
            let end = page + i64::from(chunk_pages);
            let rows_of = Some((*segment, rel.clone()));
            chunks.push_back(Chunk {
                rows_of,
                from: page,
                to: end,
            });
            page = end;
        }
    }
    if let Some(n) = chunks_left.as_mut() {
        chunks.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
        *n -= chunks.len() as u64;
    }
    Ok(chunks)
}

/// One walk over the rows: what it re-keys to, and how far it got.
struct Walk<'m> {
    masker: &'m Masker,
    to: u16,
    options: RekeyOptions,
    began: Instant,
    last_report: Instant,
    estimate: i64,
    done: u64,
}

impl Walk<'_> {
    /// `chunks` re-keyed side by side on `jobs`.
    async fn side_by_side(
        &mut self,
        jobs: &mut Jobs,
        chunks: VecDeque<Chunk>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), RekeyError> {
        let (before, estimate, began) = (self.done, self.estimate, self.began);
        let mut tick = |moved: u64| progress(progress_at(before + moved, estimate, began));
        let every = self.options.progress_every;
        self.done += jobs
            .run(self.masker, self.to, chunks, every, &mut tick)
            .await?;
        Ok(())
    }

    /// One partition's chunks, one after another on `client`; false when
    /// `chunks_left` ran out before its end.
    async fn one_stream(
        &mut self,
        client: &mut Client,
        (segment, rel): (Segment, &str),
        chunks_left: &mut Option<u64>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<bool, RekeyError> {
        let Some(pages) = pages_of(client, rel).await? else {
            return Ok(true);
        };
        let mut page = 0i64;
        while page < pages.max(1) {
            if *chunks_left == Some(0) {
                return Ok(false);
            }
            let end = page + i64::from(self.options.chunk_pages);
            let mut tries = 0;
            self.done += loop {
                let at = (&segment, rel);
                match rekey_chunk(client, self.masker, self.to, at, page, end).await {
                    Err(e) if e.is_conflict() && tries < CHUNK_CONFLICT_RETRIES => tries += 1,
                    other => break other?,
                }
            };
            page = end;
            if let Some(n) = chunks_left.as_mut() {
                *n -= 1;
            }
            if self.last_report.elapsed() >= self.options.progress_every {
                self.last_report = Instant::now();
                progress(progress_at(self.done, self.estimate, self.began));
            }
        }
        Ok(true)
    }
}

/// A partition's size in pages; `None` when retention dropped it since
/// the walk listed it.
async fn pages_of(client: &Client, rel: &str) -> Result<Option<i64>, RekeyError> {
    const PAGES: Statement = Statement::new(
        "SELECT (pg_relation_size(to_regclass($1)) / current_setting('block_size')::int8)",
        &[Type::TEXT],
        "reading a partition's size",
    );
    Ok(PAGES.value(client, &[&rel]).await?)
}

/// Where the rows stand after `done` of about `estimate` since `began`.
fn progress_at(done: u64, estimate: i64, began: Instant) -> Progress {
    let rate = done as f64 / began.elapsed().as_secs_f64().max(1e-3);
    let left = (estimate as f64 - done as f64).max(0.0);
    Progress {
        done,
        estimate: estimate.max(0) as u64,
        rate,
        eta_seconds: if rate > 0.0 { left / rate } else { 0.0 },
    }
}

/// One chunk: pages `[from_page, to_page)` of `segment`'s partition `rel`,
/// in a transaction of its own; the rows it moved to version `to`. Only
/// `rel`'s rows: a page and line number (ctid) names a row within one
/// table, and the segment's range may also cover a partition `maintain`
/// made out of the DEFAULT one since the walk listed the partitions.
pub(super) async fn rekey_chunk(
    client: &mut Client,
    masker: &Masker,
    to: u16,
    (segment, rel): (&Segment, &str),
    from_page: i64,
    to_page: i64,
) -> Result<u64, RekeyError> {
    let (cond, bounds) = segment.condition(5);
    let (lo, hi) = (format!("({from_page},0)"), format!("({to_page},0)"));
    let old_version = (to - 1) as i16;
    let tx = client.transaction().await.map_err(db("starting a chunk"))?;
    if segment.in_default() {
        // maintain must not move these rows to a new partition under us.
        HOLD_PARTITION_STEP.rows(&tx, &[]).await?;
    }
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&lo, Type::TEXT),
        (&hi, Type::TEXT),
        (&old_version, Type::INT2),
        (&rel, Type::TEXT),
    ];
    params.extend(Segment::date_params(&bounds));
    // to_regclass: a partition retention dropped since the walk listed it
    // matches nothing (a cast would fail the run with 42P01).
    let rows = tx
        .query_typed(
            &format!(
                "SELECT ctid::text, encode(masked_ip, 'hex'), encode(masked_device_id, 'hex'), \
                 coalesce(user_id_text, user_id::text) FROM user_logins_rows \
                 WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND key_version = $3 \
                 AND tableoid = to_regclass($4) AND {cond}"
            ),
            &params,
        )
        .await
        .map_err(db("reading a chunk of rows"))?;
    let moved = if rows.is_empty() {
        0
    } else {
        let at = (segment, rel, from_page, to_page);
        update_chunk(&tx, at, &Moved::of(&rows, masker, to), to).await?
    };
    tx.commit().await.map_err(db("committing a chunk"))?;
    Ok(moved)
}

/// The chunk's rows at `to - 1`, within its pages of `rel`, updated to
/// their new tokens at version `to` by the owner's
/// `login_etl_rekey_rows_chunk` (which also counts them; the rotate role
/// holds no UPDATE on the table); the rows moved.
async fn update_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    (segment, rel, from_page, to_page): (&Segment, &str, i64, i64),
    moved: &Moved,
    to: u16,
) -> Result<u64, RekeyError> {
    let old_version = (to - 1) as i16;
    let (days_null, lo_day, hi_day) = match *segment {
        Segment::Null => (true, None, None),
        Segment::Range(lo, hi) | Segment::Gap(lo, hi) => (false, lo, hi),
    };
    const UPDATE: Statement = Statement::new(
        "SELECT login_etl_rekey_rows_chunk($1, $2, $3, $4, $5, $6, $7::text[]::tid[], $8, $9, $10, $11)",
        &[
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::BOOL,
            Type::DATE,
            Type::DATE,
            Type::TEXT_ARRAY,
            Type::VARCHAR_ARRAY,
            Type::VARCHAR_ARRAY,
            Type::INT8_ARRAY,
            Type::INT2,
        ],
        "re-keying a chunk of rows",
    );
    let params: [&(dyn ToSql + Sync); 11] = [
        &rel,
        &from_page,
        &to_page,
        &days_null,
        &lo_day,
        &hi_day,
        &moved.tids,
        &moved.ips,
        &moved.devices,
        &moved.tags,
        &old_version,
    ];
    let moved: i64 = UPDATE.value(tx, &params).await?;
    Ok(moved as u64)
}

/// A chunk's rows at the new version: their ctids, new tokens and user
/// tags (a row without one, from before tags, gets one too; none under
/// user keys derived from the masking key).
struct Moved {
    tids: Vec<String>,
    ips: Vec<Option<String>>,
    devices: Vec<Option<String>>,
    tags: Vec<Option<i64>>,
}

impl Moved {
    fn of(rows: &[tokio_postgres::Row], masker: &Masker, to: u16) -> Self {
        let rekey = |text: Option<&str>| text.map(|t| masker.rekey_text(t, to).as_str().to_owned());
        // Tags under the erasure key's user keys only (as the function
        // writes them: BatchKeys::tags); with derived ones, none.
        let users = (!masker.users().is_derived())
            .then(|| masker.users().at(to).expect("a re-key's masker reaches its version"));
        let mut moved = Moved {
            tids: Vec::with_capacity(rows.len()),
            ips: Vec::with_capacity(rows.len()),
            devices: Vec::with_capacity(rows.len()),
            tags: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            moved.tids.push(r.get::<_, String>(0));
            moved.ips.push(rekey(r.get(1)));
            moved.devices.push(rekey(r.get(2)));
            let user_id: Option<&str> = r.get(3);
            moved.tags.push(user_id.zip(users.as_ref()).map(|(u, k)| k.user_key(u).tag()));
        }
        moved
    }
}
