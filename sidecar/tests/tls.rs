//! TLS on the worker and the frontend (`--tls-cert`, `--tls-key`,
//! `--tls-ca`, `--instances-tls`), with certificates made by the test: a
//! TLS server answers https clients that trust its CA and nobody else,
//! over HTTP and gRPC; a frontend over TLS in front of TLS workers answers
//! as a plain one; a bad certificate or key stops the server at start with
//! one line.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coded_sidecar::frontend::FrontendOptions;
use coded_sidecar::frontend::discovery::{Lookup, Resolver};
use coded_sidecar::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use coded_sidecar::grpc::proto::{ServerLiveRequest, ServerReadyRequest};
use coded_sidecar::protocol::client::{Client, ClientError, Encoding};
use coded_sidecar::tls::{ClientTrust, ServerTls, TlsOptions};
use coded_sidecar::worker::Server;
use common::certs::{self, Certs};
use common::grpc::{Grpc, assert_close, http_request, infer_request, output, rows};
use common::linear::{INPUTS, expected};
use common::{Linear, Running, options, start, start_frontend_grpc};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn tls_options(certs: &Certs) -> TlsOptions {
    TlsOptions {
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(certs.key.clone()),
    }
}

/// A worker serving the linear model over TLS, its URL by name.
async fn start_tls(certs: &Certs) -> Running {
    let mut o = options();
    o.http.tls = tls_options(certs);
    let mut w = start(o, Linear::default()).await;
    w.url = format!("https://localhost:{}", w.addr.port());
    w
}

fn trusting(certs: &Certs) -> ClientTrust {
    ClientTrust::from_ca_file(Some(&certs.ca)).expect("CA bundle loads")
}

async fn infer(client: &Client, data: &[f32]) -> Result<Vec<f32>, ClientError> {
    let request = http_request("input", &[data.len() / INPUTS, INPUTS], data);
    let response = client
        .infer("linear", None, &request, Encoding::Binary)
        .await?;
    Ok(response.outputs[0].data.clone())
}

fn expected_rows(data: &[f32]) -> Vec<f32> {
    data.chunks(INPUTS).flat_map(expected).collect()
}

async fn grpc_tls(addr: SocketAddr, ca: Option<&Certs>) -> Result<Grpc, tonic::transport::Error> {
    coded_sidecar::tls::init();
    let mut tls = ClientTlsConfig::new().domain_name("localhost");
    if let Some(certs) = ca {
        let pem = std::fs::read(&certs.ca).expect("read CA");
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("URI")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

#[tokio::test]
async fn a_tls_worker_answers_https_clients_that_trust_its_ca_only() {
    let certs = certs::make(&["localhost"]);
    let worker = start_tls(&certs).await;
    let data = rows(3, INPUTS, 1);

    let trusted = Client::with_trust(&worker.url, Duration::from_secs(5), &trusting(&certs), None)
        .expect("client");
    assert!(trusted.server_ready().await.expect("health over https"));
    assert_close(
        &infer(&trusted, &data).await.expect("infer over https"),
        &expected_rows(&data),
    );

    // The system roots alone do not know the test CA.
    let stranger = Client::new(&worker.url, Duration::from_secs(5)).expect("client");
    let err = infer(&stranger, &data)
        .await
        .expect_err("untrusted CA refused");
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    // Plain HTTP gets no answer from a TLS port.
    let plain =
        Client::new(&format!("http://{}", worker.addr), Duration::from_secs(5)).expect("client");
    assert!(infer(&plain, &data).await.is_err(), "plain HTTP answered");
    // A certificate for another name is refused even from a trusted CA.
    let by_address = Client::with_trust(
        &format!("https://{}", worker.addr),
        Duration::from_secs(5),
        &trusting(&certs),
        None,
    )
    .expect("client");
    assert!(infer(&by_address, &data).await.is_err(), "name not checked");
    // ... unless the client is told which name to expect there.
    let verified_as = Client::with_trust(
        &format!("https://{}", worker.addr),
        Duration::from_secs(5),
        &trusting(&certs),
        Some("localhost"),
    )
    .expect("client");
    assert_close(
        &infer(&verified_as, &data)
            .await
            .expect("verified as localhost"),
        &expected_rows(&data),
    );
}

#[tokio::test]
async fn grpc_over_tls_answers_as_the_model_and_refuses_strangers() {
    let certs = certs::make(&["localhost"]);
    let worker = start_tls(&certs).await;
    let addr = worker.grpc.expect("gRPC on");
    let mut c = grpc_tls(addr, Some(&certs))
        .await
        .expect("TLS gRPC connects");
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    let data = rows(2, INPUTS, 3);
    let response = c
        .model_infer(infer_request(
            "linear",
            "input",
            &[2, INPUTS as i64],
            &data,
            true,
        ))
        .await
        .expect("infer over TLS gRPC")
        .into_inner();
    assert_close(&output(&response), &expected_rows(&data));

    // Without the CA the handshake fails, at connect or at the first call.
    let refused = match grpc_tls(addr, None).await {
        Err(_) => true,
        Ok(mut c) => c.server_ready(ServerReadyRequest {}).await.is_err(),
    };
    assert!(refused, "an untrusted server was accepted");
    // A plaintext client is not served.
    let plain = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.server_ready(ServerReadyRequest {}).await.is_err(),
    };
    assert!(refused, "plaintext gRPC served on a TLS port");
}

#[tokio::test]
async fn a_tls_frontend_in_front_of_tls_workers_answers_as_a_plain_one() {
    let certs = certs::make(&["localhost"]);
    let tls_models = [start_tls(&certs).await, start_tls(&certs).await];
    let tls_parity = start_tls(&certs).await;
    let plain_models = [
        start(options(), Linear::default()).await,
        start(options(), Linear::default()).await,
    ];
    let plain_parity = start(options(), Linear::default()).await;

    let (plain_url, _, _plain) = start_frontend_grpc(&plain_models, &plain_parity, |_| {}).await;
    let (tls_addr, tls_grpc, _tls) = start_frontend_grpc(&tls_models, &tls_parity, |o| {
        o.http.tls = tls_options(&certs);
        o.tls_ca = Some(certs.ca.clone());
    })
    .await;
    let port = tls_addr.rsplit(':').next().expect("port");
    let tls_url = format!("https://localhost:{port}");

    let plain = Client::new(&plain_url, Duration::from_secs(10)).expect("client");
    let tls = Client::with_trust(&tls_url, Duration::from_secs(10), &trusting(&certs), None)
        .expect("client");
    for seed in 0..4 {
        let data = rows(5, INPUTS, seed);
        let over_tls = infer(&tls, &data).await.expect("TLS frontend answers");
        assert_close(
            &over_tls,
            &infer(&plain, &data).await.expect("plain answers"),
        );
        assert_close(&over_tls, &expected_rows(&data));
    }
    let mut c = grpc_tls(tls_grpc.expect("gRPC on"), Some(&certs))
        .await
        .expect("TLS gRPC connects");
    let data = rows(3, INPUTS, 9);
    let response = c
        .model_infer(infer_request(
            "linear",
            "input",
            &[3, INPUTS as i64],
            &data,
            false,
        ))
        .await
        .expect("frontend infer over TLS gRPC")
        .into_inner();
    assert_close(&output(&response), &expected_rows(&data));
}

/// Names resolve to the given addresses only.
fn fake_resolver(table: Vec<(&'static str, SocketAddr)>) -> Resolver {
    Arc::new(move |name: String| -> Lookup {
        let found: Vec<SocketAddr> = table
            .iter()
            .filter(|(n, _)| *n == name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h))
            .map(|(_, a)| *a)
            .collect();
        Box::pin(async move { Ok(found) })
    })
}

#[tokio::test]
async fn discovered_tls_instances_are_verified_as_their_service_name() {
    // The certificate names the Services, not the pods' addresses.
    let certs = certs::make(&["models.test", "parity.test"]);
    let models = [start_tls(&certs).await, start_tls(&certs).await];
    let parity = start_tls(&certs).await;
    let resolver = fake_resolver(vec![
        ("models.test", models[0].addr),
        ("models.test", models[1].addr),
        ("parity.test", parity.addr),
    ]);
    let mut o = FrontendOptions::parse([
        "--model-service",
        "models.test:1",
        "--parity-service",
        "parity.test:1",
        "--model-name",
        "linear",
        "--parity-model",
        "linear",
        "--port",
        "0",
        "--instances-tls",
    ])
    .expect("flags");
    o.tls_ca = Some(certs.ca.clone());
    let server = coded_sidecar::frontend::bind_with(&o, resolver)
        .await
        .expect("frontend starts: metadata read over https");
    let url = format!("http://{}", server.local_addr().expect("addr"));
    let _task = tokio::spawn(server.run(std::future::pending()));
    let client = Client::new(&url, Duration::from_secs(10)).expect("client");
    // Discovered instances get calls after their first probe.
    let mut ready = false;
    for _ in 0..100 {
        if client.server_ready().await.unwrap_or(false) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "discovered TLS instances never became ready");
    let data = rows(4, INPUTS, 5);
    assert_close(
        &infer(&client, &data)
            .await
            .expect("answers through TLS instances"),
        &expected_rows(&data),
    );
}

#[tokio::test]
async fn a_bad_certificate_or_key_stops_the_server_with_one_line() {
    let certs = certs::make(&["localhost"]);
    let other = certs::make(&["localhost"]);
    let missing = certs.dir.path().join("missing.crt");
    let not_pem = certs.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");

    let err = |cert: &std::path::Path, key: &std::path::Path| {
        ServerTls::load(cert, key).expect_err("refused").to_string()
    };
    let e = err(&missing, &certs.key);
    assert!(
        e.starts_with("cannot read the TLS certificate") && e.contains("missing.crt"),
        "{e}"
    );
    let e = err(&certs.cert, &missing);
    assert!(e.starts_with("cannot read the TLS key"), "{e}");
    let e = err(&not_pem, &certs.key);
    assert!(
        e.contains("not usable PEM") && e.contains("no CERTIFICATE"),
        "{e}"
    );
    let e = err(&certs.cert, &not_pem);
    assert!(
        e.contains("not usable PEM") && e.contains("no PRIVATE KEY"),
        "{e}"
    );
    // A key swapped for one of another certificate.
    let e = err(&certs.cert, &other.key);
    assert!(e.contains("does not belong to the certificate"), "{e}");
    // The key file given as the certificate and the other way round.
    assert!(err(&certs.key, &certs.cert).contains("not usable PEM"));
    for e in [err(&missing, &certs.key), err(&certs.cert, &other.key)] {
        assert!(!e.contains('\n'), "one line: {e}");
    }

    // The worker refuses to start on it, before it listens.
    let mut o = options();
    o.http.tls = TlsOptions {
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(other.key.clone()),
    };
    let failed = Server::bind(Arc::new(Linear::default()), &o).await;
    let e = failed.err().expect("bind refused").to_string();
    assert!(e.contains("does not belong"), "{e}");

    // A CA bundle that is not one.
    let e = ClientTrust::from_ca_file(Some(&not_pem))
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("CA bundle") && e.contains("not usable PEM"),
        "{e}"
    );
    let e = ClientTrust::from_ca_file(Some(&missing))
        .expect_err("refused")
        .to_string();
    assert!(e.starts_with("cannot read the CA bundle"), "{e}");
}

#[test]
fn tls_flags_go_together() {
    let err = FrontendOptions::parse(["--model-endpoints", "http://a:1", "--tls-cert", "c.pem"])
        .expect_err("a certificate without a key")
        .to_string();
    assert!(err.contains("--tls-key"), "{err}");
    let o = FrontendOptions::parse([
        "--model-endpoints",
        "http://a:1",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ])
    .expect("both");
    assert_eq!(
        o.http.tls.tls_cert.as_deref(),
        Some(std::path::Path::new("c.pem"))
    );
}

#[tokio::test]
async fn a_frontend_with_a_bad_key_fails_before_looking_for_instances() {
    let certs = certs::make(&["localhost"]);
    let other = certs::make(&["localhost"]);
    // Nothing listens there: without the early check the frontend would
    // wait for an instance to read the metadata from.
    let mut o = FrontendOptions::parse([
        "--model-endpoints",
        "http://127.0.0.1:9",
        "--parity-endpoints",
        "http://127.0.0.1:9",
        "--model-name",
        "linear",
        "--port",
        "0",
    ])
    .expect("flags");
    o.http.tls = TlsOptions {
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(other.key.clone()),
    };
    let e = tokio::time::timeout(Duration::from_secs(10), coded_sidecar::frontend::bind(&o))
        .await
        .expect("fails at once")
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("does not belong to the certificate"), "{e}");
}
