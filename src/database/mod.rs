//! The database connection every part shares (the function's sink,
//! `poll`, the operator commands): where its settings come from, with
//! PostgreSQL's own conventions ([`settings`], [`pgpass`]), how the role
//! proves who it is (a password, or an RDS IAM token: [`iam`]), TLS
//! ([`tls`]), the one way a connection is opened ([`connector`]), what
//! it refuses to run under ([`stored_settings`]), the server's version
//! ([`server`]), a statement as the code declares it ([`statement`]), and
//! what a failed one's SQLSTATE says can be done about it ([`sqlstate`]).

pub mod connector;
pub mod iam;
pub mod pgpass;
pub mod server;
pub mod settings;
pub mod sqlstate;
pub mod statement;
pub mod stored_settings;
pub mod tls;

