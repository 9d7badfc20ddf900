//! The `user_logins` schema, embedded in the binary, and how it is applied.

use tokio_postgres::Client;

/// The idempotent migration (creates or upgrades `user_logins`).
pub const MIGRATION_SQL: &str = include_str!("../migrations/0001_user_logins.sql");

/// Advisory lock key ("LOGINETL" in ASCII): many cold starts at once apply
/// the schema one after the other instead of racing on `CREATE INDEX`.
pub const MIGRATION_LOCK_KEY: i64 = 0x4C4F_4749_4E45_544C;

/// Applies [`MIGRATION_SQL`] in one transaction under the advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(MIGRATION_SQL).await?;
    tx.commit().await
}
