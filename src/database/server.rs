//! What the server says of itself: its PostgreSQL version, which the schema
//! guard, retention and rotate-key each check against what they need.

use tokio_postgres::Client;

const VERSION_SQL: &str =
    "SELECT current_setting('server_version_num')::int4, current_setting('server_version')";

/// The server's `server_version_num` and `server_version`.
pub async fn server_version(client: &Client) -> Result<(i32, String), tokio_postgres::Error> {
    let row = client.query_typed_one(VERSION_SQL, &[]).await?;
    Ok((row.get(0), row.get(1)))
}
