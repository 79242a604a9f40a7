//! TLS to the services kensa depends on, against throwaway servers this test starts itself with
//! certificates made here: a PostgreSQL cluster that accepts TLS connections only
//! (`sslmode=verify-full` with `sslrootcert`), and a Mosquitto broker with a TLS listener and a
//! password (the publisher with `tls`, a user and a password).

mod common;
mod store_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kensa::metrics::Metrics;
use kensa::publish::mqtt::{self, MqttConfig, Publisher};
use kensa::store::{self, OpenOptions, StoreLocation};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`.
fn certificates(dir: &Path) -> PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as the `postgres` user when this test runs as root
/// (PostgreSQL refuses to run as root).
fn postgres_command(program: &Path) -> Command {
    if root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs a PostgreSQL tool and insists that it succeeds.
fn as_postgres(program: &Path, args: &[&str]) {
    let output = postgres_command(program)
        .args(args)
        .output()
        .expect("the PostgreSQL tools run");
    assert!(
        output.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL cluster in a temporary folder that takes TLS connections only.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (Debian package postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let ca = certificates(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if root() {
            for path in [dir.path(), &data] {
                let status = Command::new("chown")
                    .arg("postgres:")
                    .arg(path)
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        let data_text = data.to_str().unwrap();
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data_text,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        for file in ["server.pem", "server.key"] {
            std::fs::copy(dir.path().join(file), data.join(file)).unwrap();
            if root() {
                assert!(
                    Command::new("chown")
                        .arg("postgres:")
                        .arg(data.join(file))
                        .status()
                        .unwrap()
                        .success()
                );
            }
            assert!(
                Command::new("chmod")
                    .arg("600")
                    .arg(data.join(file))
                    .status()
                    .unwrap()
                    .success()
            );
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let port = common::free_port();
        let options = format!(
            "-p {port} -k {data_text} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
             -c ssl_cert_file=server.pem -c ssl_key_file=server.key"
        );
        let log = data.join("server.log");
        as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_text,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
        TlsPostgres {
            bin,
            data,
            port,
            ca,
            _dir: dir,
        }
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = postgres_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_verified_tls_to_postgres() {
    let server = TlsPostgres::start();
    let verified = server.url(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        server.ca.display()
    ));
    let location = StoreLocation::parse(&verified, Path::new("/unused")).unwrap();
    let opened = store::open(&location, &OpenOptions::default())
        .await
        .expect("a verified TLS connection");
    opened
        .verdicts
        .insert(store_support::simple("aoi-07", "over-tls"))
        .await
        .unwrap();
    assert!(
        opened
            .verdicts
            .get("aoi-07", "over-tls")
            .await
            .unwrap()
            .is_some()
    );
    drop(opened);

    // The cluster takes TLS only, so a plain connection is refused: the one above was TLS.
    let plain = StoreLocation::parse(&server.url(""), Path::new("/unused")).unwrap();
    let error = store::open(&plain, &OpenOptions::default())
        .await
        .err()
        .expect("plain is refused");
    assert!(error.to_string().contains("pg_hba.conf"), "{error}");
    // Another CA's certificate is not trusted.
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = certificates(other.path());
    let untrusted = server.url(&format!(
        "?sslmode=require&sslrootcert={}",
        wrong_ca.display()
    ));
    let location = StoreLocation::parse(&untrusted, Path::new("/unused")).unwrap();
    assert!(
        store::open(&location, &OpenOptions::default())
            .await
            .is_err()
    );
}

/// A Mosquitto broker with a TLS listener that wants a user name and password.
struct TlsBroker {
    child: Child,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    fn start(user: &str, password: &str) -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        let ca = certificates(dir.path());
        let passwords = dir.path().join("passwords");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(status.success());
        // The broker drops root for its own user, which must read these files.
        assert!(
            Command::new("chmod")
                .args(["-R", "a+rX"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
        let port = common::free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 allow_anonymous false\npassword_file {passwords}\npersistence false\n",
                ca = ca.display(),
                dir = dir.path().display(),
                passwords = passwords.display(),
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsBroker {
            child,
            port,
            ca,
            _dir: dir,
        }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_speaks_tls_with_a_password_to_the_broker() {
    let broker = TlsBroker::start("kensa", "s3cret-broker-password");
    let fixture = store_support::sqlite().await;
    fixture
        .store
        .insert(store_support::simple("aoi-07", "u1"))
        .await
        .unwrap();
    let config = |password: &str| MqttConfig {
        host: "127.0.0.1".into(),
        port: broker.port,
        client_id: format!("kensa-{}", uuid::Uuid::new_v4().simple()),
        topic_prefix: "kensa-tls".into(),
        keep_alive: Duration::from_secs(5),
        tls: Some(Some(broker.ca.clone())),
        credentials: Some(("kensa".into(), password.into())),
        max_packet_bytes: mqtt::packet_limit(4096),
    };
    let run = |password: &str| {
        let metrics = Arc::new(Metrics::new());
        let cancel = CancellationToken::new();
        let publisher = Publisher {
            store: fixture.store.clone(),
            reviews: fixture.reviews.clone(),
            ledger: fixture.ledger().clone(),
            metrics: Arc::clone(&metrics),
        };
        let task = mqtt::spawn(publisher, config(password), cancel.clone());
        (metrics, cancel, task)
    };

    let (metrics, cancel, task) = run("wrong password");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metrics.mqtt_published.get(),
        0,
        "a wrong password publishes nothing"
    );
    assert_eq!(metrics.mqtt_connected.get(), 0);
    cancel.cancel();
    task.await.unwrap();

    let (metrics, cancel, task) = run("s3cret-broker-password");
    let started = Instant::now();
    while metrics.mqtt_published.get() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was published over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metrics.mqtt_connected.get(), 1);
    cancel.cancel();
    task.await.unwrap();
}
