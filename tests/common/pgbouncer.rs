//! A throwaway PgBouncer in transaction mode (as RDS Proxy pools) in front
//! of the local PostgreSQL: bound to 127.0.0.1 on a free port, run as the
//! `postgres` user (it refuses root), stopped by its PID on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_size` server connections per database/user.
    pub fn start(upstream_port: u16, pool_size: u32) -> Self {
        Self::start_for(upstream_port, pool_size, &[])
    }

    /// Like [`start`](Self::start), also letting `users` in (trust
    /// authentication still needs each user in the auth file).
    pub fn start_for(upstream_port: u16, pool_size: u32, users: &[&str]) -> Self {
        let bin = which("pgbouncer").unwrap_or_else(|| {
            panic!("pgbouncer is not installed: run the tests with `make test`, which installs Debian's pgbouncer")
        });
        let dir = PathBuf::from(
            String::from_utf8(
                Command::new("mktemp")
                    .args(["-d", "/tmp/login-etl-pgbouncer.XXXXXX"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap()
            .trim(),
        );
        let port = super::closed_port();
        let userlist: String = std::iter::once("postgres")
            .chain(users.iter().copied())
            .map(|u| format!("\"{u}\" \"\"\n"))
            .collect();
        std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/userlist.txt\n\
                 pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin)
            .arg("-d")
            .arg(dir.join("pgbouncer.ini"))
            .output()
            .unwrap();
        let bouncer = Self { port, dir };
        assert!(
            out.status.success(),
            "pgbouncer did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            bouncer.log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
}
