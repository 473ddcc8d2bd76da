//! The client's transport settings against a stand-in PoolService (no
//! container engine needed): TLS with a private CA, the bearer token over
//! it, and the default deadline of unary calls.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sandpool_client::{Client, Error, proto as pb};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Answers ListPools with one pool named "over-the-wire" and remembers the
/// authorization header; GetPool sleeps for 5 s.
#[derive(Default, Clone)]
struct Pools {
    seen_token: Arc<Mutex<Option<String>>>,
}

#[tonic::async_trait]
impl pb::pool_service_server::PoolService for Pools {
    async fn create_pool(
        &self,
        _: Request<pb::CreatePoolRequest>,
    ) -> Result<Response<pb::CreatePoolResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn get_pool(
        &self,
        _: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::GetPoolResponse>, Status> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Err(Status::unimplemented("too late"))
    }

    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        *self.seen_token.lock().expect("lock") = token;
        Ok(Response::new(pb::ListPoolsResponse {
            pools: vec![pb::Pool {
                spec: Some(pb::PoolSpec {
                    name: "over-the-wire".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }))
    }

    async fn delete_pool(
        &self,
        _: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn get_pool_stats(
        &self,
        _: Request<pb::GetPoolStatsRequest>,
    ) -> Result<Response<pb::GetPoolStatsResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    type WatchPoolStatsStream = tokio_stream::Empty<Result<pb::WatchPoolStatsResponse, Status>>;

    async fn watch_pool_stats(
        &self,
        _: Request<pb::WatchPoolStatsRequest>,
    ) -> Result<Response<Self::WatchPoolStatsStream>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

/// Serves `pools` on 127.0.0.1 with `builder`'s settings.
async fn serve_with(pools: Pools, builder: tonic::transport::Server) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut builder = builder;
    let router = builder.add_service(pb::pool_service_server::PoolServiceServer::new(pools));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    port
}

/// TLS (feature `tls`, on by default).
#[cfg(feature = "tls")]
mod tls {
    use std::{path::PathBuf, process::Command};

    use super::*;

    /// A private CA (PEM) and a certificate for "localhost" that it signed,
    /// with its key, made with the openssl command.
    struct Pki {
        ca: Vec<u8>,
        cert: Vec<u8>,
        key: Vec<u8>,
    }

    fn pki() -> Pki {
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "sandpool-tls-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("the openssl command");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-days",
                    "1",
                    "-subj",
                    "/CN=sandpool test CA",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "leaf.key",
                    "-out",
                    "leaf.csr",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ]);
        let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
        let pki = Pki {
            ca: read("ca.pem"),
            cert: read("leaf.pem"),
            key: read("leaf.key"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        pki
    }

    #[tokio::test]
    async fn tls_with_a_private_ca_carries_calls_and_the_token() {
        let pki = pki();
        let pools = Pools::default();
        let identity = tonic::transport::Identity::from_pem(&pki.cert, &pki.key);
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("server tls");
        let port = serve_with(pools.clone(), server).await;

        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        let client = Client::builder(format!("localhost:{port}"))
            .tls_config(tls)
            .token("s3cret")
            .connect()
            .await
            .expect("connect over TLS");
        let names: Vec<String> = client
            .list_pools()
            .await
            .expect("list over TLS")
            .into_iter()
            .map(|p| p.spec.unwrap_or_default().name)
            .collect();
        assert_eq!(names, ["over-the-wire"]);
        assert_eq!(
            pools.seen_token.lock().expect("lock").as_deref(),
            Some("Bearer s3cret")
        );

        // The system's roots do not trust a private CA: an https:// address
        // (TLS with the system roots) fails the handshake.
        let untrusted = Client::connect(format!("https://localhost:{port}")).await;
        assert!(
            matches!(untrusted, Err(Error::Connect { .. })),
            "{:?}",
            untrusted.err()
        );
        // Plaintext to a TLS server gets no answer it understands.
        let plain = match Client::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => c.list_pools().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(plain.is_err(), "plaintext must not work against TLS");
    }
}

#[tokio::test]
async fn unary_calls_have_a_default_deadline() {
    let port = serve_with(Pools::default(), tonic::transport::Server::builder()).await;
    let client = Client::builder(format!("127.0.0.1:{port}"))
        .timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");
    assert_eq!(client.timeout(), Duration::from_millis(300));
    let started = Instant::now();
    let err = client
        .get_pool("slow")
        .await
        .expect_err("past the deadline");
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Calls within it work.
    assert_eq!(client.list_pools().await.expect("list").len(), 1);
}
