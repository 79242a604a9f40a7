//! The flags of the service's network edge (who may do what, TLS, connection and request
//! limits) and what they become: the access [`Gate`], the TLS configurations and the limits of
//! each port. Kept apart from `config` so the edge's settings live beside their rules.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::access::{ClientTable, Gate, GateConfig};
use crate::transport::http::HttpLimits;
use crate::transport::tls::{ReloadableTls, TlsFiles};

/// Who may see `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsAuth {
    /// Anyone who reaches the port (metrics carry no verdicts, notes or station ids).
    Open,
    /// Clients with the `metrics` scope.
    Token,
}

/// Access, TLS and connection limits of both ports.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Client file (TOML): each client's name, SHA-256 of its bearer token (or its TLS client
    /// certificate subject), scopes and optionally the stations it may submit for. Re-read on
    /// SIGHUP. Without it, authentication is off, which kensa allows only on loopback
    /// addresses unless --no-auth is given.
    #[arg(long, env = "KENSA_AUTH_CLIENTS", value_name = "FILE")]
    pub auth_clients: Option<PathBuf>,
    /// Serve without authentication on any address (every caller may do everything); logs a
    /// warning at start. For a trusted, isolated network only.
    #[arg(long, env = "KENSA_NO_AUTH", conflicts_with = "auth_clients")]
    pub no_auth: bool,
    /// Who may read /metrics: `open` or `token` (the `metrics` scope).
    #[arg(long, env = "KENSA_METRICS_AUTH", value_enum, default_value = "open")]
    pub metrics_auth: MetricsAuth,
    /// Browser origins allowed to call the HTTP API (CORS), comma-separated; none by default.
    #[arg(
        long,
        env = "KENSA_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_origins: Vec<String>,
    /// Requests per second each client may make (by client name, or by address when
    /// authentication is off); 0 turns the limit off. Probes are not limited.
    #[arg(long, env = "KENSA_RATE_LIMIT", default_value_t = 200.0)]
    pub rate_limit: f64,
    /// Burst each client may make above its rate.
    #[arg(long, env = "KENSA_RATE_BURST", default_value_t = 400.0)]
    pub rate_burst: f64,
    /// Requests being answered at once, all clients and both ports together (503 beyond).
    #[arg(long, env = "KENSA_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// PEM certificate chain: serve TLS on both ports (with --tls-key). Re-read on SIGHUP.
    #[arg(
        long,
        env = "KENSA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Re-read on SIGHUP.
    #[arg(
        long,
        env = "KENSA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates of client certificates (mutual TLS); a verified certificate's
    /// subject identifies a client of the client file.
    #[arg(
        long,
        env = "KENSA_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate from --tls-client-ca.
    #[arg(
        long,
        env = "KENSA_TLS_REQUIRE_CLIENT_CERT",
        requires = "tls_client_ca"
    )]
    pub tls_require_client_cert: bool,
    /// Connections open at once per port; one more is closed at once.
    #[arg(long, env = "KENSA_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Time a new connection has to finish its TLS handshake (without TLS: to send its first
    /// bytes).
    #[arg(long, env = "KENSA_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// HTTP/1.1: time to send a request's headers, and the longest a keep-alive connection may
    /// sit idle between requests.
    #[arg(long, env = "KENSA_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a request body may take to arrive (408 after it).
    #[arg(long, env = "KENSA_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// HTTP/2 (both ports): streams at once per connection.
    #[arg(long, env = "KENSA_HTTP2_MAX_STREAMS", default_value_t = 128)]
    pub http2_max_streams: u32,
    /// HTTP/2 (both ports): keep-alive ping interval; a peer silent for as long again is
    /// dropped.
    #[arg(long, env = "KENSA_HTTP2_KEEP_ALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keep_alive: Duration,
}

/// Application protocols offered by TLS on the HTTP port.
const HTTP_ALPN: &[&str] = &["h2", "http/1.1"];
/// Application protocols offered by TLS on the gRPC port.
const GRPC_ALPN: &[&str] = &["h2"];

/// The TLS configurations of both ports.
pub struct PortTls {
    /// The HTTP port's.
    pub http: Arc<ReloadableTls>,
    /// The gRPC port's.
    pub grpc: Arc<ReloadableTls>,
}

impl PortTls {
    /// Re-reads the certificate files of both ports (SIGHUP).
    pub fn reload(&self) -> anyhow::Result<()> {
        self.http.reload()?;
        self.grpc.reload()
    }
}

impl EdgeArgs {
    /// The access gate. Without a client file, authentication is off: allowed when both ports
    /// listen on loopback addresses (the quick start) or with --no-auth, each with a warning;
    /// refused otherwise, so a plant-network bind never starts open by accident.
    pub fn gate(&self, binds: &[IpAddr]) -> anyhow::Result<Gate> {
        let clients = match &self.auth_clients {
            Some(path) => {
                let table = ClientTable::load(path)?;
                tracing::info!(clients = table.len(), file = %path.display(), "authentication on");
                Some(table)
            }
            None if self.no_auth => {
                tracing::warn!(
                    "AUTHENTICATION IS OFF (--no-auth): anyone who reaches the ports may submit, \
                     read every verdict and note, and change what admin routes change"
                );
                None
            }
            None if binds.iter().all(IpAddr::is_loopback) => {
                tracing::warn!(
                    "authentication is off: no --auth-clients file, serving loopback only; give a \
                     client file before listening on other addresses"
                );
                None
            }
            None => bail!(
                "no --auth-clients file while listening on a non-loopback address ({}): give a \
                 client file, or --no-auth to serve every caller (see README, Security)",
                binds
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Ok(Gate::new(GateConfig {
            clients,
            metrics_open: self.metrics_auth == MetricsAuth::Open,
            rate: self.rate_limit,
            burst: self.rate_burst,
            max_in_flight: self.max_in_flight,
        }))
    }

    /// The TLS configurations, when TLS is on.
    pub fn tls(&self) -> anyhow::Result<Option<PortTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
            require_client_cert: self.tls_require_client_cert,
        };
        let load = |alpn| ReloadableTls::load(files.clone(), alpn).context("TLS");
        Ok(Some(PortTls {
            http: Arc::new(load(HTTP_ALPN)?),
            grpc: Arc::new(load(GRPC_ALPN)?),
        }))
    }

    /// The limits of an HTTP connection.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_read_timeout: self.header_read_timeout,
            max_streams: self.http2_max_streams,
            keep_alive: self.http2_keep_alive,
        }
    }

    /// The CORS layer for the allowed origins; None when there are none.
    pub fn cors(&self) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
        use axum::http::{HeaderName, HeaderValue, Method, header};
        if self.cors_origins.is_empty() {
            return Ok(None);
        }
        let origins = self
            .cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o.trim()).with_context(|| format!("CORS origin {o:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let exposed = [
            "x-kensa-cursor",
            "x-kensa-replayed",
            "x-kensa-label",
            "x-kensa-confidence",
            "x-kensa-is-defect",
            "x-kensa-inspection-id",
        ]
        .map(HeaderName::from_static);
        Ok(Some(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers(exposed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    fn edge(args: &[&str]) -> EdgeArgs {
        Flags::parse_from(std::iter::once("kensa").chain(args.iter().copied())).edge
    }

    #[test]
    fn authentication_is_off_only_on_loopback_or_by_the_explicit_flag() {
        let loopback: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let plant: [IpAddr; 2] = ["0.0.0.0".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        assert!(!edge(&[]).gate(&loopback).unwrap().authenticates());
        let error = edge(&[]).gate(&plant).unwrap_err().to_string();
        assert!(
            error.contains("--auth-clients") && error.contains("--no-auth"),
            "{error}"
        );
        assert!(!edge(&["--no-auth"]).gate(&plant).unwrap().authenticates());
    }
}
