//! moto's server (SQS, Secrets Manager, KMS over plain HTTP) on a free
//! 127.0.0.1 port, one per test, stopped on drop. `make test` installs it
//! and passes its path in MOTO_SERVER; it also starts
//! tests/moto_forkserver.py and passes its socket in MOTO_FORKSERVER: a
//! server forked from a warm process (milliseconds, where a cold start
//! costs a second of CPU), as separate as a process of its own.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::closed_port;

pub enum Moto {
    Started(Child),
    /// The fork's connection: closing it stops the fork (it watches it).
    Forked(UnixStream),
}

impl Drop for Moto {
    fn drop(&mut self) {
        match self {
            Moto::Started(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Moto::Forked(conn) => {
                // The fork exits when it reads the end of this connection,
                // which then ends on its side too: stopped on return.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = std::io::Read::read_to_end(conn, &mut Vec::new());
            }
        }
    }
}

pub fn start_moto() -> (Moto, u16) {
    if let Ok(socket) = std::env::var("MOTO_FORKSERVER") {
        return forked(&socket);
    }
    let port = closed_port();
    let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} ({e}); run the tests with `make test`, which installs moto")
        });
    let moto = Moto::Started(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

/// A server from the fork server at `socket`: it answers "<port> <pid>"
/// once the fork listens.
fn forked(socket: &str) -> (Moto, u16) {
    let conn = UnixStream::connect(socket).unwrap_or_else(|e| {
        panic!("no moto fork server at MOTO_FORKSERVER={socket} ({e}): unset it to start moto_server per test")
    });
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .expect("the moto fork server answers with a port");
    let port = line
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the moto fork server answered {line:?}, not a port"));
    (Moto::Forked(conn), port)
}

/// The SDK's configuration for moto at `endpoint`, built without touching
/// the process's environment (the other tests of a binary read it).
pub async fn moto_sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}
