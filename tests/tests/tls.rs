//! TLS and mutual TLS on the real server, with certificates made for the
//! test by openssl: encrypted calls work, plaintext ones do not, and with
//! client certificates each certificate is an identity that owns its leases.

use std::{path::Path, process::Command};

use sandpool_client::{Client, ClientBuilder, proto as pb};
use sandpool_server::config::TlsConfig;
use sandpool_tests::{TestServer, empty_config, python_pool};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1, and client
/// certificates for `clients`.
fn make_certificates(dir: &Path, clients: &[&str]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=sandpool-test-ca",
        ],
    );
    let sign = |name: &str, cn: &str, ext: &str| {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    };
    sign(
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    for client in clients {
        sign(client, client, "extendedKeyUsage=clientAuth\n");
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read pem")
}

fn tls_client(dir: &Path, addr: std::net::SocketAddr, identity: Option<&str>) -> ClientBuilder {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dir, "ca.pem")))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            read(dir, &format!("{name}.pem")),
            read(dir, &format!("{name}.key")),
        ));
    }
    Client::builder(format!("https://{addr}")).tls_config(tls)
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sandpool-tls-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let dir = temp_dir();
    make_certificates(&dir, &["alice", "bob"]);

    // TLS: encrypted calls run code; plaintext ones get nowhere.
    let mut config = empty_config();
    config.tls = Some(TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
    });
    let server = TestServer::start_with_client(config, |addr| tls_client(&dir, addr, None)).await;
    server.pool(python_pool("secure")).await;
    let session = server
        .client
        .acquire("secure")
        .await
        .expect("acquire over TLS");
    assert_eq!(
        session
            .run_collect("print('over tls')")
            .await
            .expect("run")
            .stdout_text(),
        "over tls\n"
    );
    session.release().await.expect("release");
    let plain = Client::connect(format!("http://{}", server.addr))
        .await
        .expect("a TCP connection");
    assert!(
        plain.list_pools().await.is_err(),
        "plaintext must not reach a TLS server"
    );
    server.stop().await;

    // Mutual TLS: a certificate is required, and it owns its leases.
    let mut config = empty_config();
    config.tls = Some(TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: Some(dir.join("ca.pem")),
    });
    let server =
        TestServer::start_with_client(config, |addr| tls_client(&dir, addr, Some("alice"))).await;
    server.pool(python_pool("mtls")).await;
    let session = server.client.acquire("mtls").await.expect("alice acquires");
    assert_eq!(
        session
            .run_collect("print(1)")
            .await
            .expect("run")
            .stdout_text(),
        "1\n"
    );
    let anonymous = tls_client(&dir, server.addr, None).connect().await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(client) => client.list_pools().await.is_err(),
    };
    assert!(refused, "no client certificate, no service");
    let bob = tls_client(&dir, server.addr, Some("bob"))
        .connect()
        .await
        .expect("bob connects");
    let status = bob
        .sessions()
        .run(pb::RunRequest {
            lease_id: session.lease_id().into(),
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text("print(2)".into())),
                language: String::new(),
            })),
            ..Default::default()
        })
        .await
        .expect_err("bob cannot use alice's lease");
    assert_eq!(status.code(), tonic::Code::NotFound);
    session.release().await.expect("release");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
