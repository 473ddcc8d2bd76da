//! Libraries: pool-wide at warm-up (network only then), per lease from
//! uploaded package files (gone after the reset), and per-lease setup.
//! No package index is reachable here, so the tests serve their own: a
//! wheel built by the test, from a "simple" index on the host that the
//! containers reach over the engine's bridge network during installs.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sandpool_client::{AcquireOptions, proto as pb};
use sandpool_tests::{
    TestServer, build_wheel, code_of, docker_cli, language_pool, python_pool, wait_for,
};
use tonic::Code;

/// A PEP 503 "simple" index serving the wheel, on all interfaces.
struct Index {
    child: Child,
    url: String,
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_index(dir: &std::path::Path, wheel: &std::path::Path) -> Index {
    let project = dir.join("simple/sandpooldemo");
    std::fs::create_dir_all(&project).expect("index dir");
    let name = wheel
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    std::fs::copy(wheel, dir.join(&name)).expect("copy wheel");
    let mut page = std::fs::File::create(project.join("index.html")).expect("page");
    writeln!(
        page,
        "<html><body><a href=\"../../{name}\">{name}</a></body></html>"
    )
    .expect("write");
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server");
    // Containers reach the host at the bridge network's gateway.
    let gateway = bridge_gateway();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Index {
        child,
        url: format!("http://{gateway}:{port}/simple"),
    }
}

/// The host's address on Docker's default bridge (docker0).
fn bridge_gateway() -> String {
    let listed = docker_cli(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ]);
    if !listed.is_empty() {
        return listed;
    }
    // Docker 20.10 leaves the default bridge's gateway out of IPAM: ask the
    // interface.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .expect("docker0 has an IPv4 address")
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sandpool-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_libraries_install_at_warm_up_and_the_network_is_cut_after() {
    let dir = temp_dir("index");
    let wheel = build_wheel(&dir);
    let index = serve_index(&dir.join("www"), &wheel);
    let server = TestServer::start().await;
    let mut spec = python_pool("libs");
    spec.libraries = vec!["sandpooldemo==1.0".into()];
    spec.package_index_url = index.url.clone();
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;

    let session = server.client.acquire("libs").await.expect("acquire");
    let probe = r#"
import os, sandpooldemo
print(sandpooldemo.VALUE)
print(sorted(os.listdir('/sys/class/net')))
try:
    open(os.path.join(os.path.dirname(sandpooldemo.__file__), 'evil.py'), 'w')
    print('writable')
except OSError:
    print('read-only')
"#;
    let out = session.run_collect(probe).await.expect("run");
    assert_eq!(
        out.stdout_text(),
        "42\n['lo']\nread-only\n",
        "{}",
        out.stderr_text()
    );
    let container = session.container_id().to_string();
    session.release().await.expect("release");
    // Pool libraries survive the reset.
    let again = server.client.acquire("libs").await.expect("acquire");
    assert_eq!(again.container_id(), container);
    let out = again
        .run_collect("import sandpooldemo; print(sandpooldemo.VALUE)")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "42\n");
    again.release().await.expect("release");

    // A pool that allows installs on leases: the container joins the
    // network only while the installer runs.
    let mut spec = python_pool("lease-net");
    spec.lease_installs = Some(true);
    spec.package_index_url = index.url.clone();
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire("lease-net").await.expect("acquire");
    let out = session
        .run_collect("import os; print(sorted(os.listdir('/sys/class/net')))")
        .await
        .expect("run");
    assert_eq!(
        out.stdout_text(),
        "['lo']\n",
        "no network before the install"
    );
    let done = server
        .client
        .sessions()
        .install_libraries(pb::InstallLibrariesRequest {
            lease_id: session.lease_id().into(),
            libraries: vec!["sandpooldemo".into()],
        })
        .await
        .expect("install by name over the network")
        .into_inner();
    assert!(
        done.log.contains("Successfully installed sandpooldemo"),
        "{}",
        done.log
    );
    let out = session
        .run_collect("import os, sandpooldemo; print(sandpooldemo.VALUE, sorted(os.listdir('/sys/class/net')))")
        .await
        .expect("run");
    assert_eq!(
        out.stdout_text(),
        "42 ['lo']\n",
        "installed, and the network is cut again: {}",
        out.stderr_text()
    );
    session.release().await.expect("release");

    // A library the index does not have fails the pool, with pip's words.
    let mut spec = python_pool("broken-libs");
    spec.libraries = vec!["sandpool-no-such-package".into()];
    spec.package_index_url = index.url.clone();
    let pool = server
        .client
        .create_pool(spec, true)
        .await
        .expect("created");
    assert_eq!(pool.phase, pb::PoolPhase::Failing as i32);
    assert!(
        pool.status_message.contains("installing libraries"),
        "{}",
        pool.status_message
    );
    assert!(
        pool.status_message.contains("No matching distribution")
            || pool.status_message.contains("Could not find"),
        "{}",
        pool.status_message
    );
    server.stop().await;
    drop(index);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_installs_from_an_uploaded_wheel_are_gone_after_the_reset() {
    let dir = temp_dir("wheel");
    let wheel = build_wheel(&dir);
    let server = TestServer::start().await;
    let mut spec = python_pool("lease-libs");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire("lease-libs").await.expect("acquire");
    let bytes = std::fs::read(&wheel).expect("wheel");
    session
        .upload("/sandbox/pkgs/sandpooldemo-1.0-py3-none-any.whl", bytes)
        .await
        .expect("upload");
    let mut sessions = server.client.sessions();
    let done = sessions
        .install_libraries(pb::InstallLibrariesRequest {
            lease_id: session.lease_id().into(),
            libraries: vec!["/sandbox/pkgs/sandpooldemo-1.0-py3-none-any.whl".into()],
        })
        .await
        .expect("install")
        .into_inner();
    assert!(
        done.log.contains("Successfully installed sandpooldemo"),
        "{}",
        done.log
    );
    let out = session
        .run_collect("import sandpooldemo; print(sandpooldemo.VALUE)")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "42\n", "{}", out.stderr_text());

    // Names need the network, which this pool does not allow on leases.
    let status = sessions
        .install_libraries(pb::InstallLibrariesRequest {
            lease_id: session.lease_id().into(),
            libraries: vec!["requests".into()],
        })
        .await
        .expect_err("no network for leases");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("lease_installs"),
        "{}",
        status.message()
    );
    let status = sessions
        .install_libraries(pb::InstallLibrariesRequest {
            lease_id: session.lease_id().into(),
            libraries: vec!["numpy; rm -rf /".into()],
        })
        .await
        .expect_err("not a package name");
    assert_eq!(status.code(), Code::InvalidArgument);

    let container = session.container_id().to_string();
    session.release().await.expect("release");
    let next = server.client.acquire("lease-libs").await.expect("acquire");
    assert_eq!(next.container_id(), container);
    let out = next.run_collect("import sandpooldemo").await.expect("run");
    assert_eq!(
        out.exit_code(),
        1,
        "the lease's library is gone: {}",
        out.stdout_text()
    );
    assert!(out.stderr_text().contains("ModuleNotFoundError"));
    next.release().await.expect("release");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_places_env_and_files_for_the_lease_only() {
    let server = TestServer::start().await;
    let mut spec = python_pool("setup");
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let options = AcquireOptions::new("setup")
        .env("PROJECT", "apollo")
        .file("/sandbox/data/input.txt", &b"hello file"[..]);
    let session = server
        .client
        .acquire_with(options)
        .await
        .expect("acquire with setup");
    let out = session
        .run_collect(
            "import os\nprint(os.environ['PROJECT'], open('/sandbox/data/input.txt').read())",
        )
        .await
        .expect("run");
    assert_eq!(
        out.stdout_text(),
        "apollo hello file\n",
        "{}",
        out.stderr_text()
    );
    let out = session.shell("echo $PROJECT").await.expect("shell");
    assert_eq!(
        out.stdout_text(),
        "apollo\n",
        "commands get the lease's env too"
    );
    let container = session.container_id().to_string();
    session.release().await.expect("release");

    let plain = server.client.acquire("setup").await.expect("acquire");
    assert_eq!(plain.container_id(), container);
    let out = plain
        .run_collect("import os\nprint(os.environ.get('PROJECT'), os.path.exists('/sandbox/data/input.txt'))")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "None False\n");
    plain.release().await.expect("release");

    // Bad setup is refused before any lease is granted.
    let options = AcquireOptions::new("setup").file("/etc/evil", &b"x"[..]);
    let err = server
        .client
        .acquire_with(options)
        .await
        .err()
        .expect("outside the roots");
    assert_eq!(code_of(&err), Code::InvalidArgument);
    let options = AcquireOptions::new("setup").env("BAD NAME", "x");
    let err = server
        .client
        .acquire_with(options)
        .await
        .err()
        .expect("bad env name");
    assert_eq!(code_of(&err), Code::InvalidArgument);
    wait_for("no lease left", Duration::from_secs(5), || async {
        (server.stats("setup").await.active_leases == 0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_installs_from_an_uploaded_npm_tarball() {
    let server = TestServer::start().await;
    server.pool(language_pool("npm", "javascript")).await;
    let session = server.client.acquire("npm").await.expect("acquire");
    // A package of our own, packed in the container (npm pack needs no network).
    let manifest = r#"{"name": "sandpool-demo", "version": "1.0.0", "main": "index.js"}"#;
    session
        .upload("/sandbox/src/package.json", manifest.as_bytes().to_vec())
        .await
        .expect("upload");
    session
        .upload(
            "/sandbox/src/index.js",
            &b"module.exports = { answer: 42 };\n"[..],
        )
        .await
        .expect("upload");
    let packed = session
        .shell("mkdir -p /sandbox/pkgs && cd /sandbox/src && npm pack --silent --pack-destination /sandbox/pkgs && rm -rf /sandbox/src")
        .await
        .expect("npm pack");
    assert_eq!(packed.exit_code(), 0, "{}", packed.stderr_text());
    let done = server
        .client
        .sessions()
        .install_libraries(pb::InstallLibrariesRequest {
            lease_id: session.lease_id().into(),
            libraries: vec!["/sandbox/pkgs/sandpool-demo-1.0.0.tgz".into()],
        })
        .await
        .expect("npm install of the tarball")
        .into_inner();
    assert!(done.duration.is_some());
    let out = session
        .run_collect("const demo = require('sandpool-demo');\nconsole.log(demo.answer);")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "42\n", "{}", out.stderr_text());
    let container = session.container_id().to_string();
    session.release().await.expect("release");
    let next = server.client.acquire("npm").await.expect("acquire");
    assert_eq!(next.container_id(), container);
    let out = next
        .run_collect("require('sandpool-demo')")
        .await
        .expect("run");
    assert_ne!(out.exit_code(), 0, "gone after the reset");
    assert!(
        out.stderr_text().contains("Cannot find module"),
        "{}",
        out.stderr_text()
    );
    next.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libraries_the_image_already_has_need_no_index() {
    // llm-sandbox users often list what the image ships (numpy, matplotlib):
    // that must not need a package index, which no container here reaches.
    let server = TestServer::start().await;
    let mut spec = python_pool("preinstalled");
    spec.libraries = vec!["numpy".into(), "matplotlib>=3.0".into()];
    server.pool(spec).await;
    let session = server
        .client
        .acquire("preinstalled")
        .await
        .expect("acquire");
    let out = session
        .run_collect("import numpy, matplotlib; print('ok')")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "ok\n");
    session.release().await.expect("release");
    server.stop().await;
}
