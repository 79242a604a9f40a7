//! TLS on both ports with certificates made here (rcgen, test-only): HTTPS and gRPC over TLS
//! with tokens, mutual TLS with the client certificate's subject as the identity, a required
//! client certificate, and certificates replaced on reload without a restart.

mod common;

use std::path::{Path, PathBuf};

use common::{TestServer, samples, write_clients};
use kensa::api::proto::kensa_v1 as pb;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// The name the server certificate is for; clients resolve it to the test server.
const HOST: &str = "kensa.test";
const MES: &str = "mes-token-over-tls-0123456789abcdef";

/// A test CA and what it signed, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kensa test CA");
        let ca = params.self_signed(&key).unwrap();
        let ca_pem = ca.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        Pki {
            dir,
            ca_pem,
            ca,
            ca_key: key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs a certificate; writes `<name>.pem` and `<name>.key`; returns (cert PEM, key PEM).
    fn sign(&self, name: &str, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert, key) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.path(&format!("{name}.pem")), &cert).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), &key).unwrap();
        (cert, key)
    }

    fn server(&self) -> String {
        let mut params = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign("server", params).0
    }

    /// A client certificate with subject `CN=<cn>, O=Plant`; its PEM identity (cert + key).
    fn client(&self, cn: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Plant");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = self.sign(cn, params);
        format!("{cert}{key}").into_bytes()
    }
}

fn https(server: &TestServer, ca_pem: &str, identity: Option<Vec<u8>>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(HOST, server.server.http_addr)
        .tls_info(true);
    if let Some(identity) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&identity).unwrap());
    }
    builder.build().unwrap()
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://{HOST}:{}{path}", server.server.http_addr.port())
}

async fn tls_server(pki: &Pki, clients: &Path, extra: &[&str]) -> TestServer {
    let mut args = vec![
        format!("--tls-cert={}", pki.path("server.pem").display()),
        format!("--tls-key={}", pki.path("server.key").display()),
        format!("--tls-client-ca={}", pki.path("ca.pem").display()),
        format!("--auth-clients={}", clients.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_unready(&args).await;
    let client = https(&server, &pki.ca_pem, None);
    for _ in 0..600 {
        if let Ok(response) = client.get(url(&server, "/readyz")).send().await
            && response.status() == 200
        {
            return server;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the TLS server did not become ready");
}

fn client_file(pki: &Pki) -> PathBuf {
    let clients = write_clients(pki.dir.path(), &[("mes", MES, &["mes"], None)]);
    let mut text = std::fs::read_to_string(&clients).unwrap();
    text.push_str("[[client]]\nname = \"aoi-08\"\nsubject = \"CN=aoi-08, O=Plant\"\nscopes = [\"station\"]\nstations = [\"aoi-08\"]\n");
    std::fs::write(&clients, text).unwrap();
    clients
}

async fn submit(client: &reqwest::Client, server: &TestServer, station: &str) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(samples()[0].image.clone()).file_name("unit.png"),
        )
        .text("station_id", station.to_string());
    client
        .post(url(server, "/v1/inspections"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_speak_tls_and_a_client_certificate_identifies_a_station() {
    let pki = Pki::new();
    let first = pki.server();
    let server = tls_server(&pki, &client_file(&pki), &[]).await;

    let anonymous = https(&server, &pki.ca_pem, None);
    let response = anonymous
        .get(url(&server, "/v1/verdicts"))
        .bearer_auth(MES)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(submit(&anonymous, &server, "aoi-08").await.status(), 401);
    let plain = reqwest::get(format!("http://{}/healthz", server.server.http_addr)).await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "no plain HTTP on a TLS port"
    );

    let station = https(&server, &pki.ca_pem, Some(pki.client("aoi-08")));
    assert_eq!(
        submit(&station, &server, "aoi-08").await.status(),
        200,
        "the certificate is the identity"
    );
    assert_eq!(submit(&station, &server, "aoi-09").await.status(), 403);
    let stranger = https(&server, &pki.ca_pem, Some(pki.client("aoi-99")));
    let refused = submit(&stranger, &server, "aoi-99").await;
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("CN=aoi-99"),
        "{body}"
    );

    // gRPC over TLS, with the token in the metadata.
    let channel = tonic::transport::Channel::from_shared(format!(
        "https://{HOST}:{}",
        server.server.grpc_addr.port()
    ))
    .unwrap()
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
            .domain_name(HOST),
    )
    .unwrap()
    .connect_with_connector(tower::service_fn({
        let address = server.server.grpc_addr;
        move |_| async move {
            tokio::net::TcpStream::connect(address)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    }))
    .await
    .unwrap();
    let mut grpc = pb::inspection_service_client::InspectionServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::GetVerdictRequest {
        station_id: "aoi-08".into(),
        inspection_id: "none".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {MES}").parse().unwrap());
    let status = grpc.get_verdict(request).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "authenticated over TLS: {status:?}"
    );

    // New certificates on reload, without a restart.
    let second = pki.server();
    assert_ne!(first, second);
    server.server.reloader().reload();
    let fresh = https(&server, &pki.ca_pem, None);
    let response = fresh.get(url(&server, "/healthz")).send().await.unwrap();
    let served = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .unwrap()
        .to_vec();
    let expected = rustls_pem(&second);
    assert_eq!(served, expected, "the reloaded certificate is served");
}

/// The DER bytes of a PEM certificate.
fn rustls_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_refuses_clients_without_one() {
    let pki = Pki::new();
    pki.server();
    let server = TestServer::start_unready(&[
        &format!("--tls-cert={}", pki.path("server.pem").display()),
        &format!("--tls-key={}", pki.path("server.key").display()),
        &format!("--tls-client-ca={}", pki.path("ca.pem").display()),
        "--tls-require-client-cert",
        &format!("--auth-clients={}", client_file(&pki).display()),
    ])
    .await;
    let station = https(&server, &pki.ca_pem, Some(pki.client("aoi-08")));
    let mut ready = false;
    for _ in 0..600 {
        if let Ok(response) = station.get(url(&server, "/readyz")).send().await
            && response.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready);
    assert_eq!(submit(&station, &server, "aoi-08").await.status(), 200);
    let without = https(&server, &pki.ca_pem, None);
    assert!(
        without.get(url(&server, "/healthz")).send().await.is_err(),
        "the handshake fails without a client certificate"
    );
}
