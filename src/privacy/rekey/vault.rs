//! The vault's tokens (step 4 of a re-key), in chunks of pages as the rows,
//! in one stream or side by side ([`super::jobs`]).

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::jobs::{Chunk, Jobs};
use super::{CHUNK_CONFLICT_RETRIES, RekeyError, db};
use crate::database::statement::Statement;
use crate::privacy::masking::Masker;

/// Re-keys the vault's entries still at `to - 1`, chunk by chunk of pages
/// as the rows (an entry moved by its update lands past the pages listed,
/// already at `to`).
pub(super) async fn rekey_vault(
    client: &mut Client,
    jobs: &mut Jobs,
    masker: &Masker,
    to: u16,
    chunk_pages: u32,
) -> Result<u64, RekeyError> {
    const VAULT_PAGES: Statement = Statement::new(
        "SELECT pg_relation_size('user_logins_pii_vault') / current_setting('block_size')::int8",
        &[],
        "reading the vault's size",
    );
    let pages: i64 = VAULT_PAGES.value(&*client, &[]).await?;
    if jobs.side_by_side() {
        let step = i64::from(chunk_pages);
        let chunks = (0..pages.max(1))
            .step_by(usize::try_from(step).unwrap_or(usize::MAX))
            .map(|from| Chunk {
                rows_of: None,
                from,
                to: from + step,
            })
            .collect();
        let every = Duration::from_secs(3600);
        return jobs.run(masker, to, chunks, every, &mut |_| {}).await;
    }
    let mut done = 0u64;
    let mut page = 0i64;
    while page < pages.max(1) {
        let end = page + i64::from(chunk_pages);
        let mut tries = 0;
        done += loop {
            match rekey_vault_chunk(client, masker, to, page, end).await {
                Err(e) if e.is_conflict() && tries < CHUNK_CONFLICT_RETRIES => tries += 1,
                other => break other?,
            }
        };
        page = end;
    }
    Ok(done)
}

/// One chunk of the vault: pages `[from_page, to_page)`, in a transaction
/// of its own. An entry a function stored under the new version meanwhile
/// is the same value's (its twin): the old one goes, the new one stays,
/// also when the twin arrives while the chunk is written
/// (`login_etl_rekey_vault_chunk`).
pub(super) async fn rekey_vault_chunk(
    client: &mut Client,
    masker: &Masker,
    to: u16,
    from_page: i64,
    to_page: i64,
) -> Result<u64, RekeyError> {
    let old_version = (to - 1) as i16;
    let (lo, hi) = (format!("({from_page},0)"), format!("({to_page},0)"));
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a chunk of the vault"))?;
    const CHUNK_ENTRIES: Statement = Statement::new(
        "SELECT ctid::text, kind, token FROM user_logins_pii_vault \
         WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND key_version = $3",
        &[Type::TEXT, Type::TEXT, Type::INT2],
        "reading a chunk of the vault",
    );
    let rows = CHUNK_ENTRIES.rows(&tx, &[&lo, &hi, &old_version]).await?;
    if rows.is_empty() {
        tx.commit()
            .await
            .map_err(db("ending a chunk of the vault"))?;
        return Ok(0);
    }
    let tids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let kinds: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let news: Vec<String> = rows
        .iter()
        .map(|r| masker.rekey_text(r.get(2), to).as_str().to_owned())
        .collect();
    // As the owner (migrations/functions/login_etl_rekey_vault_chunk.sql): the entries move by a delete and an
    // insert that keeps a twin a function stored meanwhile.
    const REKEY_CHUNK: Statement = Statement::new(
        "SELECT login_etl_rekey_vault_chunk($1::text[]::tid[], $2, $3, $4)",
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT2,
        ],
        "re-keying a chunk of the vault",
    );
    let moved: i64 = REKEY_CHUNK
        .value(&tx, &[&tids, &kinds, &news, &old_version])
        .await?;
    tx.commit()
        .await
        .map_err(db("committing a chunk of the vault"))?;
    Ok(moved as u64)
}
