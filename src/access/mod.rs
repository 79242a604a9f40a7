//! Who may do what, the same on every protocol: the front doors ask the [`Gate`] once per
//! request (HTTP middleware, a gRPC layer in front of every service, reflection included) with
//! what the operation requires ([`scopes`], one table per protocol) and what the caller
//! presented (a bearer token, or the subject of its TLS client certificate). The gate also
//! applies the per-client rate limit and the global limit on requests being answered at once.

pub mod rate;
pub mod scopes;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use scopes::{Requirement, Scope};
pub use tokens::{Caller, ClientTable};

use crate::error::Error;
use rate::RateLimiter;

/// Who is at the other end of a connection, as the transport saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: SocketAddr,
    /// The subject of its verified TLS client certificate (mutual TLS), RFC 4514 style.
    pub subject: Option<String>,
}

/// The gate's settings.
#[derive(Debug)]
pub struct GateConfig {
    /// The client file; None turns authentication off (every caller may do everything).
    pub clients: Option<ClientTable>,
    /// Whether `/metrics` is open to anyone (else it needs the `metrics` scope).
    pub metrics_open: bool,
    /// Requests per second per client (0: no limit).
    pub rate: f64,
    /// Burst per client.
    pub burst: f64,
    /// Requests being answered at once, all clients together.
    pub max_in_flight: usize,
}

/// Authentication, authorization and admission limits, shared by every front door.
#[derive(Debug)]
pub struct Gate {
    clients: Option<ClientTable>,
    metrics_open: bool,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
}

/// A request let in: who made it, and its place among the requests in flight (released when
/// this is dropped).
#[derive(Debug)]
pub struct Admitted {
    /// The caller, for checks that depend on the request's content (stations).
    pub caller: Caller,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Gate {
    /// A gate with these settings.
    pub fn new(config: GateConfig) -> Gate {
        Gate {
            clients: config.clients,
            metrics_open: config.metrics_open,
            rate: RateLimiter::new(config.rate, config.burst),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        }
    }

    /// A gate that lets everyone in without limits (tests, `kensa infer`).
    pub fn open() -> Gate {
        Gate::new(GateConfig {
            clients: None,
            metrics_open: true,
            rate: 0.0,
            burst: 1.0,
            max_in_flight: Semaphore::MAX_PERMITS,
        })
    }

    /// Whether callers must authenticate.
    pub fn authenticates(&self) -> bool {
        self.clients.is_some()
    }

    /// Reads the client file again (SIGHUP); the old clients stay on error.
    pub fn reload(&self) -> anyhow::Result<Option<usize>> {
        self.clients.as_ref().map(ClientTable::reload).transpose()
    }

    /// Lets a request in or says why not: 401 without valid credentials, 403 without the
    /// scope, 429 past the client's rate, 503 past the global limit. Open operations (probes)
    /// are neither authenticated nor limited.
    pub fn admit(
        &self,
        requirement: Requirement,
        authorization: Option<&str>,
        peer: Option<&Peer>,
    ) -> Result<Admitted, Error> {
        let open = match requirement {
            Requirement::Open => true,
            Requirement::Metrics => self.metrics_open,
            Requirement::Known | Requirement::Scope(_) => false,
        };
        if open {
            return Ok(Admitted {
                caller: Caller::default(),
                _slot: None,
            });
        }
        let caller = self.identify(authorization, peer)?;
        let needed = match requirement {
            Requirement::Scope(scope) => Some(scope),
            Requirement::Metrics => Some(Scope::Metrics),
            Requirement::Open | Requirement::Known => None,
        };
        if let Some(scope) = needed
            && !caller.holds(scope)
        {
            return Err(Error::Forbidden(format!(
                "client {:?} lacks the {scope} scope this needs",
                &*caller.name
            )));
        }
        let client = match (&self.clients, peer) {
            (None, Some(peer)) => peer.address.ip().to_string(),
            _ => caller.name.to_string(),
        };
        self.rate
            .take(&client)
            .map_err(|retry_after| Error::RateLimited { retry_after })?;
        let slot = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| Error::Unavailable("too many requests in flight"))?;
        Ok(Admitted {
            caller,
            _slot: Some(slot),
        })
    }

    /// [`Gate::admit`] with the credentials of an HTTP request (both ports are HTTP): the
    /// `authorization` header and the peer the transport put into the extensions.
    pub fn admit_request(
        &self,
        requirement: Requirement,
        headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Result<Admitted, Error> {
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.admit(requirement, authorization, extensions.get::<Peer>())
    }

    fn identify(&self, authorization: Option<&str>, peer: Option<&Peer>) -> Result<Caller, Error> {
        let Some(clients) = &self.clients else {
            return Ok(Caller::default());
        };
        if let Some(value) = authorization {
            let token = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or_else(|| {
                    Error::Unauthenticated("authorization must be `Bearer <token>`".into())
                })?;
            return clients
                .by_token(token)
                .ok_or_else(|| Error::Unauthenticated("unknown token".into()));
        }
        if let Some(subject) = peer.and_then(|p| p.subject.as_deref()) {
            return clients.by_subject(subject).ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "client certificate {subject:?} is not in the client file"
                ))
            });
        }
        Err(Error::Unauthenticated(
            "a bearer token is required (Authorization: Bearer <token>)".into(),
        ))
    }
}
