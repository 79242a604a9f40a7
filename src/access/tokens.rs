//! The client file: who the clients are, what each may do, and how each proves it (a bearer
//! token, stored only as its SHA-256, or a TLS client certificate subject). Read at start and
//! again on SIGHUP; a file that does not parse on reload keeps the clients already loaded.
//!
//! ```toml
//! [[client]]
//! name = "aoi-07"
//! token_sha256 = "<64 hex digits: sha256 of the token>"
//! scopes = ["station"]
//! stations = ["aoi-07"]          # optional: the station ids it may submit for
//!
//! [[client]]
//! name = "aoi-08"
//! subject = "CN=aoi-08,O=Plant"  # mutual TLS: the client certificate's subject
//! scopes = ["station"]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::scopes::Scope;

/// Who a request comes from and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client's name from the client file (`local` when authentication is off), for logs.
    pub name: Arc<str>,
    /// What it may do; None means everything (authentication off).
    scopes: Option<Arc<BTreeSet<Scope>>>,
    /// The stations it may submit for; None means any.
    stations: Option<Arc<BTreeSet<String>>>,
}

impl Default for Caller {
    /// The caller when authentication is off, and of `kensa infer`: allowed everything.
    fn default() -> Self {
        Caller {
            name: Arc::from("local"),
            scopes: None,
            stations: None,
        }
    }
}

impl Caller {
    /// The client file's name for a caller that presented a token; None when authentication is
    /// off. Records that name who did something (a review) use it over what a body claims.
    pub fn identified(&self) -> Option<&str> {
        self.scopes.is_some().then_some(&*self.name)
    }

    /// A caller allowed nothing: what a handler assumes when no gate has vouched for the
    /// request, so a route left outside the gate fails closed.
    pub fn nobody() -> Caller {
        Caller {
            name: Arc::from("nobody"),
            scopes: Some(Arc::new(BTreeSet::new())),
            stations: Some(Arc::new(BTreeSet::new())),
        }
    }

    /// The caller the access gate put into a request's extensions; nobody when no gate vouched
    /// for the request.
    pub fn of(extensions: &axum::http::Extensions) -> Caller {
        extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::nobody)
    }

    /// Whether the caller holds `scope`.
    pub fn holds(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }

    /// Whether the caller may submit inspections under `station_id`.
    pub fn may_submit_for(&self, station_id: &str) -> bool {
        self.stations
            .as_ref()
            .is_none_or(|s| s.contains(station_id))
    }
}

/// One `[[client]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    scopes: Vec<Scope>,
    #[serde(default)]
    stations: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

/// The clients of one version of the file.
#[derive(Debug, Default)]
struct Clients {
    by_token: Vec<([u8; 32], Caller)>,
    by_subject: Vec<(String, Caller)>,
}

/// The loaded client file, replaced whole on reload.
#[derive(Debug)]
pub struct ClientTable {
    path: PathBuf,
    clients: RwLock<Arc<Clients>>,
}

impl ClientTable {
    /// Reads the client file; an error names the file and the entry.
    pub fn load(path: &Path) -> anyhow::Result<ClientTable> {
        let clients = read(path)?;
        Ok(ClientTable {
            path: path.to_path_buf(),
            clients: RwLock::new(Arc::new(clients)),
        })
    }

    /// Reads the file again; on error the clients already loaded stay in force.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let clients = read(&self.path)?;
        let count = clients.by_token.len() + clients.by_subject.len();
        if let Ok(mut current) = self.clients.write() {
            *current = Arc::new(clients);
        }
        Ok(count)
    }

    /// How many clients the table holds.
    pub fn len(&self) -> usize {
        let clients = self.current();
        clients.by_token.len() + clients.by_subject.len()
    }

    /// Whether the table holds no client.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<Clients> {
        match self.clients.read() {
            Ok(clients) => Arc::clone(&clients),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The client whose token this is. The token is hashed and compared with every entry in
    /// constant time, so neither the match nor its position shows in the timing.
    pub fn by_token(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let clients = self.current();
        let mut found = None;
        for (hash, caller) in &clients.by_token {
            if constant_time_eq(hash, &digest) {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// The client whose TLS certificate subject this is.
    pub fn by_subject(&self, subject: &str) -> Option<Caller> {
        self.current()
            .by_subject
            .iter()
            .find(|(s, _)| s == subject)
            .map(|(_, caller)| caller.clone())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

fn read(path: &Path) -> anyhow::Result<Clients> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the client file {}", path.display()))?;
    let file: ClientFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid client file", path.display()))?;
    let mut clients = Clients::default();
    let mut names = BTreeSet::new();
    for entry in file.client {
        let where_ = || format!("{}: client {:?}", path.display(), entry.name);
        if entry.name.trim().is_empty() || !names.insert(entry.name.clone()) {
            bail!("{}: every client needs a name of its own", where_());
        }
        if entry.scopes.is_empty() {
            bail!("{}: names no scopes", where_());
        }
        let caller = Caller {
            name: Arc::from(entry.name.as_str()),
            scopes: Some(Arc::new(entry.scopes.iter().copied().collect())),
            stations: entry
                .stations
                .map(|s| Arc::new(s.into_iter().collect::<BTreeSet<_>>())),
        };
        match (entry.token_sha256, entry.subject) {
            (Some(hex), None) => clients
                .by_token
                .push((parse_digest(&hex).with_context(where_)?, caller)),
            (None, Some(subject)) => clients.by_subject.push((subject, caller)),
            _ => bail!("{}: give exactly one of token_sha256 and subject", where_()),
        }
    }
    Ok(clients)
}

fn parse_digest(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!(
            "token_sha256 must be 64 hex digits (sha256sum of the token), not {} characters",
            hex.len()
        );
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .context("token_sha256 must be hex digits")?;
    }
    Ok(digest)
}

/// The `token_sha256` line of a token, as `printf %s TOKEN | sha256sum` prints it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_and_reload_keeps_the_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.toml");
        let token = "aoi07-0123456789abcdefghijklmnop";
        std::fs::write(
            &path,
            format!(
                "[[client]]\nname = \"aoi-07\"\ntoken_sha256 = \"{}\"\nscopes = [\"station\"]\nstations = [\"aoi-07\"]\n\n[[client]]\nname = \"cell\"\nsubject = \"CN=aoi-08\"\nscopes = [\"station\", \"mes\"]\n",
                token_sha256(token)
            ),
        )
        .unwrap();
        let table = ClientTable::load(&path).unwrap();
        let caller = table.by_token(token).unwrap();
        assert_eq!(&*caller.name, "aoi-07");
        assert!(caller.holds(Scope::Station) && !caller.holds(Scope::Mes));
        assert!(caller.may_submit_for("aoi-07") && !caller.may_submit_for("aoi-08"));
        assert!(table.by_token("aoi07-0123456789abcdefghijklmnoq").is_none());
        assert!(table.by_subject("CN=aoi-08").unwrap().holds(Scope::Mes));
        std::fs::write(&path, "[[client]]\nname = 3\n").unwrap();
        assert!(table.reload().is_err());
        assert!(table.by_token(token).is_some());
        assert!(Caller::default().holds(Scope::Admin));
    }
}
