//! Starting `kensa serve` with chosen flags on free ports, for the sweep and the growth table,
//! and stopping it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A `kensa serve` this bench started; stopped when dropped.
pub struct SpawnedServer {
    child: Child,
    /// Its HTTP base URL.
    pub url: String,
    _data: tempfile::TempDir,
}

impl SpawnedServer {
    /// Starts `bin serve` on the model repository with `flags` added (after `--store none`, so
    /// flags may choose another store), and waits until it is ready. The device and anything
    /// else not given comes from the `KENSA_*` environment, as for any `kensa serve`.
    /// With `cpus`, the server runs under `taskset -c CPUS` (it then sees only those cores).
    pub async fn start(
        bin: &Path,
        model_repository: &Path,
        flags: &[String],
        cpus: Option<&str>,
        client: &reqwest::Client,
    ) -> anyhow::Result<SpawnedServer> {
        let port = free_port()?;
        let data = tempfile::tempdir()?;
        let log = std::fs::File::create(data.path().join("kensa.log"))?;
        let mut command = match cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(cpus).arg(bin);
                taskset
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("serve")
            .arg(format!("--model-repository={}", model_repository.display()))
            .arg("--http-host=127.0.0.1")
            .arg(format!("--http-port={port}"))
            .arg("--grpc-host=127.0.0.1")
            .arg("--grpc-port=0")
            .arg(format!("--data-dir={}", data.path().display()))
            .arg("--store=none")
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let server = SpawnedServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        server.wait_ready(client).await?;
        Ok(server)
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        for _ in 0..600 {
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        bail!("kensa did not become ready within 60 s:\n{log}")
    }

    fn log_path(&self) -> PathBuf {
        self._data.path().join("kensa.log")
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now (the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
