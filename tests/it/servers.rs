//! Throwaway PostgreSQL and MariaDB servers for the database tests: each in its own temporary data
//! directory, on a free loopback port, stopped when dropped. `scripts/test.sh` installs the Debian
//! packages; a server that cannot start fails the test with its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "vitalake";
pub const PASSWORD: &str = "Test-pw-0f-vitalake";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MariaDb,
}

pub struct Server {
    pub engine: Engine,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args` as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is not installed: run scripts/test.sh, which installs Debian's postgresql",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
}

fn check(output: std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "{what} did not start within 60 s; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Server {
    pub fn postgres() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(dir.path())
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        check(
            as_postgres(&postgres_bin("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .unwrap(),
            "initdb",
        );
        let port = free_port();
        let log = dir.path().join("server.log");
        let child = as_postgres(&postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start postgres");
        let server = Server {
            engine: Engine::Postgres,
            port,
            child,
            dir,
        };
        wait_until("PostgreSQL", &log, || {
            Command::new(postgres_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        server.admin(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        server.admin(&format!("CREATE DATABASE ikhospital OWNER {USER}"));
        server
    }

    pub fn mariadb() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let user = if is_root() {
            "root".to_string()
        } else {
            std::env::var("USER").unwrap_or_default()
        };
        check(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--user={user}"))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .output()
                .expect("MariaDB is not installed: run scripts/test.sh, which installs Debian's mariadb-server"),
            "mariadb-install-db",
        );
        let port = free_port();
        let log = dir.path().join("server.log");
        let socket = dir.path().join("mysql.sock");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--user={user}"))
            .args([
                "--bind-address=127.0.0.1",
                "--innodb-buffer-pool-size=128M",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let server = Server {
            engine: Engine::MariaDb,
            port,
            child,
            dir,
        };
        wait_until("MariaDB", &log, || {
            server
                .socket_client()
                .arg("-e")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        server.admin(&format!(
            "CREATE DATABASE ikhospital CHARACTER SET utf8mb4; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON ikhospital.* TO '{USER}'@'%';"
        ));
        server
    }

    fn socket_client(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("mysql.sock").display()
            ))
            .arg("-uroot");
        cmd
    }

    /// The URL `vitalake ingest db` takes (the password travels in the environment).
    pub fn url(&self) -> String {
        match self.engine {
            Engine::Postgres => format!("postgres://{USER}@127.0.0.1:{}/ikhospital", self.port),
            Engine::MariaDb => format!("mysql://{USER}@127.0.0.1:{}/ikhospital", self.port),
        }
    }

    /// The environment variable the URL's password comes from.
    pub fn password_var(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "PGPASSWORD",
            Engine::MariaDb => "MYSQL_PWD",
        }
    }

    /// Runs SQL as the administrator, on no database in particular.
    fn admin(&self, sql: &str) {
        let output = match self.engine {
            Engine::Postgres => Command::new(postgres_bin("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ])
                .env("PGPASSWORD", PASSWORD)
                .output()
                .unwrap(),
            Engine::MariaDb => self.socket_client().arg("-e").arg(sql).output().unwrap(),
        };
        check(output, "admin SQL");
    }

    /// Runs SQL in `ikhospital` as the application user, with the server's own client; returns
    /// the rows as `a|b` lines (PostgreSQL) or tab-separated (MariaDB).
    pub fn sql(&self, sql: &str) -> String {
        let output = self.client(false, sql.as_ref()).output().unwrap();
        check(output.clone(), &format!("SQL {sql}"));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Loads a SQL file into `ikhospital` with the server's own client.
    pub fn load(&self, file: &Path) {
        let output = self.client(true, file.as_os_str()).output().unwrap();
        check(output, &format!("loading {}", file.display()));
    }

    /// psql or mariadb as the application user, unaligned, without headers, running `sql` (or the
    /// file of that name).
    fn client(&self, is_file: bool, sql: &std::ffi::OsStr) -> Command {
        let port = self.port.to_string();
        match self.engine {
            Engine::Postgres => {
                let mut cmd = Command::new(postgres_bin("psql"));
                cmd.args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    USER,
                    "-d",
                    "ikhospital",
                ])
                .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-F", "|"])
                .arg(if is_file { "-f" } else { "-c" })
                .arg(sql)
                .env("PGPASSWORD", PASSWORD);
                cmd
            }
            Engine::MariaDb => {
                let mut cmd = Command::new("mariadb");
                cmd.arg("--no-defaults")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-P",
                        &port,
                        "-u",
                        USER,
                        "-D",
                        "ikhospital",
                        "-N",
                        "-B",
                    ])
                    .env("MYSQL_PWD", PASSWORD);
                if is_file {
                    cmd.stdin(std::fs::File::open(sql).unwrap());
                } else {
                    cmd.arg("-e").arg(sql);
                }
                cmd
            }
        }
    }
}
