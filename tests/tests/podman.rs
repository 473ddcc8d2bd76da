//! The same pools on Podman, through its Docker-compatible API. Needs a
//! podman service (scripts/engine-up.sh --podman) and the image in podman's
//! store (scripts/build-images.sh --podman python); CI sets
//! SANDPOOL_REQUIRE_PODMAN=1 so that a missing podman fails instead of
//! skipping.

use std::time::Duration;

use sandpool_client::proto as pb;
use sandpool_server::{
    backend::LABEL_MARKER,
    backend::{Backend, BackendKind, DockerBackend},
    sandbox::LABEL_SERVER,
};
use sandpool_tests::{TestServer, python_pool, secs};

fn podman() -> Option<DockerBackend> {
    let endpoint = DockerBackend::default_endpoint(BackendKind::Podman);
    let path = endpoint.trim_start_matches("unix://");
    if std::path::Path::new(path).exists() {
        return Some(DockerBackend::new(BackendKind::Podman, endpoint));
    }
    assert!(
        std::env::var("SANDPOOL_REQUIRE_PODMAN").is_err(),
        "SANDPOOL_REQUIRE_PODMAN is set but there is no podman socket at {path}"
    );
    eprintln!("skipping: no podman socket at {path} (scripts/engine-up.sh --podman starts one)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_work_on_podman() {
    let Some(podman) = podman() else { return };
    let server = TestServer::start().await;
    let mut spec = python_pool("pod");
    spec.backend = pb::Backend::Podman as i32;
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let id = server.server_id.clone();
    let mine = || async {
        podman
            .list_containers(LABEL_SERVER, Some(&id))
            .await
            .expect("podman answers")
            .into_iter()
            .filter(|c| !c.labels.contains_key(LABEL_MARKER))
            .collect::<Vec<_>>()
    };
    assert_eq!(mine().await.len(), 1, "the container lives in podman");

    let session = server.client.acquire("pod").await.expect("acquire");
    let container = session.container_id().to_string();
    let out = session
        .run_collect("import os\nopen('/sandbox/left', 'w').write('x')\nprint(os.getuid(), sorted(os.listdir('/sandbox')))")
        .await
        .expect("run");
    assert_eq!(
        out.stdout_text(),
        "1000 ['left', 'outputs']\n",
        "{}",
        out.stderr_text()
    );
    let out = session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text(
                    "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\nwhile True: pass".into(),
                )),
                language: String::new(),
            })),
            timeout: secs(1.0),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    let out = session
        .shell("cat /proc/self/status | grep CapEff; touch /usr/x 2>&1; true")
        .await
        .expect("shell");
    assert!(
        out.stdout_text().contains("0000000000000000"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("Read-only file system"),
        "{}",
        out.stdout_text()
    );
    session.release().await.expect("release");

    let again = server.client.acquire("pod").await.expect("acquire again");
    assert_eq!(again.container_id(), container);
    let out = again
        .shell("ls -A /sandbox; ls /proc | grep -c '^[0-9]'")
        .await
        .expect("shell");
    let text = out.stdout_text();
    assert!(
        text.starts_with("outputs\n"),
        "the reset emptied /sandbox: {text}"
    );
    again.release().await.expect("release");
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = podman
        .list_containers(LABEL_SERVER, Some(&id))
        .await
        .expect("podman answers");
    assert!(
        left.is_empty(),
        "podman containers (or the marker) left behind: {left:?}"
    );
}
