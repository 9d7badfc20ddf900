//! A throwaway PostgreSQL server for tests that need their own: TLS, password
//! auth, stop/start. Runs as the `postgres` user (the binaries refuse root),
//! bound to 127.0.0.1 on a free port, in a temporary directory; stopped and
//! removed on drop.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Password of the `postgres` role on throwaway servers that use passwords.
pub const PASSWORD: &str = "initial-pw-9f3b";

pub struct PgServer {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

/// Options for [`PgServer::start`].
#[derive(Default)]
pub struct ServerOptions {
    /// Require TLS (hostssl only) with a server certificate for DNS:localhost.
    pub tls: bool,
    /// Require a password (scram-sha-256) instead of trust.
    pub password: bool,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pg_bin() -> PathBuf {
    let base = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(&base)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").join("bin")
}

impl PgServer {
    pub fn start(opts: ServerOptions) -> Self {
        let dir = PathBuf::from(
            String::from_utf8(
                run(Command::new("mktemp").args(["-d", "/tmp/login-etl-pg.XXXXXX"])).stdout,
            )
            .unwrap()
            .trim(),
        );
        let port = super::closed_port();
        let bin = pg_bin();
        let server = Self {
            dir: dir.clone(),
            port,
            bin: bin.clone(),
        };
        if opts.tls {
            make_certificates(&dir);
        }
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        let data = dir.join("data");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        run(Command::new("chown").arg("postgres").arg(&pwfile));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "--pwfile"])
            .arg(&pwfile)
            .arg("-D")
            .arg(&data));
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 40\n",
            dir.display()
        );
        if opts.tls {
            conf += &format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                dir.display()
            );
        }
        std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
        let method = if opts.password {
            "scram-sha-256"
        } else {
            "trust"
        };
        let kind = if opts.tls { "hostssl" } else { "host" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nlocal replication all trust\n{kind} all all 127.0.0.1/32 {method}\n"
            ),
        )
        .unwrap();
        server.ctl(&["start", "-w", "-t", "30"]);
        server
    }

    /// A streaming standby of this server (`pg_basebackup -R` over the
    /// Unix socket), on a port and in a directory of its own, started;
    /// asynchronous until `synchronous_standby_names` names it
    /// (`walreceiver`, its default application name).
    pub fn start_standby_of(primary: &Self) -> Self {
        let dir = PathBuf::from(
            String::from_utf8(
                run(Command::new("mktemp").args(["-d", "/tmp/login-etl-pg.XXXXXX"])).stdout,
            )
            .unwrap()
            .trim(),
        );
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        let data = dir.join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(primary.bin.join("pg_basebackup"))
            .arg("-h")
            .arg(&primary.dir)
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-D",
            ])
            .arg(&data));
        let port = super::closed_port();
        // After the primary's own lines (copied with the backup): the last wins.
        let conf = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text += &format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            dir.display()
        );
        std::fs::write(&conf, text).unwrap();
        let standby = Self {
            dir,
            port,
            bin: primary.bin.clone(),
        };
        standby.ctl(&["start", "-w", "-t", "30"]);
        standby
    }

    pub fn url(&self, host: &str, password: Option<&str>) -> String {
        match password {
            Some(pw) => format!("postgres://postgres:{pw}@{host}:{}/postgres", self.port),
            None => format!("postgres://postgres@{host}:{}/postgres", self.port),
        }
    }

    /// Runs SQL as the superuser over the Unix socket (no TLS, no password).
    pub fn psql(&self, sql: &str) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                sql,
            ]));
    }

    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// Stops the server in `mode`: `fast` (clients disconnected, a clean
    /// shutdown) or `immediate` (as a crash: recovery at the next start).
    pub fn stop_mode(&self, mode: &str) {
        self.ctl(&["stop", "-m", mode, "-w", "-t", "30"]);
    }

    pub fn start_again(&self) {
        self.ctl(&["start", "-w", "-t", "30"]);
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    fn ctl(&self, args: &[&str]) {
        run(&mut self.ctl_command(args));
    }

    /// The `pg_ctl` command with `args` (as the `postgres` user), for a
    /// caller that runs it without blocking (tests/soak).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(args);
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A direct RDS endpoint's name and an RDS Proxy endpoint's, which the
/// test server's certificate names too (reached with `hostaddr`).
pub const RDS_HOST: &str = "db.test.us-east-1.rds.amazonaws.com";
/// See [`RDS_HOST`].
pub const RDS_PROXY_HOST: &str = "etl.proxy-test.us-east-1.rds.amazonaws.com";

/// A CA, a server certificate for DNS:localhost (and [`RDS_HOST`],
/// [`RDS_PROXY_HOST`]) signed by it, and an unrelated CA.
fn make_certificates(dir: &std::path::Path) {
    let sh = |script: &str| run(Command::new("bash").arg("-ec").arg(script).current_dir(dir));
    sh(&format!("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=login-etl test CA' -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=unrelated CA' -keyout other-ca.key -out other-ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,DNS:%s,DNS:%s\\n' {RDS_HOST} {RDS_PROXY_HOST} > san.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt 2>/dev/null
        chmod 600 server.key"));
}
