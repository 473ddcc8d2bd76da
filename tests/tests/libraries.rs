//! Libraries: pool-wide at warm-up (network only then), per lease from
//! uploaded package files (gone after the reset), and per-lease setup.
//! No package index is reachable here, so the tests serve their own: a
//! wheel built by the test, from a "simple" index on the host that the
//! containers reach over the engine's bridge network during installs.

use std::time::Duration;

use sandpool_client::{AcquireOptions, proto as pb};
use sandpool_tests::{
    TestServer, build_wheel, code_of, docker_networks, language_pool,
    packages::{build_sdist, serve_index, serve_projects, temp_dir},
    python_pool, wait_for,
};
use tonic::Code;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_left_by_a_pool_library_install_is_gone_before_the_first_lease() {
    let dir = temp_dir("daemon-lib");
    let hook = "    subprocess.Popen(['/bin/sleep', '1007'], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)";
    let sdist = build_sdist(&dir, "sandpooldaemon", hook);
    let index = serve_projects(&dir.join("www"), &[("sandpooldaemon", &sdist)]);
    let server = TestServer::start().await;
    let mut spec = python_pool("daemon-lib");
    spec.libraries = vec!["sandpooldaemon==1.0".into()];
    spec.package_index_url = index.url.clone();
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire("daemon-lib").await.expect("acquire");
    let out = session
        .shell("python3 -c 'import sandpooldaemon; print(sandpooldaemon.VALUE)'; ps -eo user=,args= | grep -c '[s]leep 1007' || true; touch /opt/sandpool/lib/python/sandpooldaemon/x 2>/dev/null && echo writable || echo read-only")
        .await
        .expect("probe");
    assert_eq!(
        out.stdout_text(),
        "7\n0\nread-only\n",
        "the install's daemon outlived the warm-up, or the library is writable: {}",
        out.stderr_text()
    );
    session.release().await.expect("release");
    server.stop().await;
    drop(index);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_cancelled_midway_leaves_the_container_on_no_network() {
    let dir = temp_dir("slow-lib");
    let sdist = build_sdist(&dir, "sandpoolslow", "    time.sleep(60)");
    let index = serve_projects(&dir.join("www"), &[("sandpoolslow", &sdist)]);
    let server = TestServer::start().await;
    let mut spec = python_pool("slow-net");
    spec.lease_installs = Some(true);
    spec.package_index_url = index.url.clone();
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    server.pool(spec).await;
    let session = server.client.acquire("slow-net").await.expect("acquire");
    let container = session.container_id().to_string();
    assert!(docker_networks(&container).is_empty());
    let mut sessions = server.client.sessions();
    let call = sessions.install_libraries(pb::InstallLibrariesRequest {
        lease_id: session.lease_id().into(),
        libraries: vec!["sandpoolslow".into()],
    });
    // The client gives up mid-install: the call is dropped.
    let joined = wait_for_network(&container, true);
    let raced = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            _ = call => panic!("the slow install finished"),
            _ = joined => {}
        }
    })
    .await;
    assert!(
        raced.is_ok(),
        "the container never joined the install network"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for(
        "the network to be taken away",
        Duration::from_secs(5),
        || async { docker_networks(&container).is_empty().then_some(()) },
    )
    .await;
    // The installer is gone too, and the lease goes on.
    let out = session
        .run_collect("import os; print(sorted(os.listdir('/sys/class/net')))")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "['lo']\n");
    // Killed with the call (the kill does not wait for the exit).
    wait_for(
        "the cancelled installer to exit",
        Duration::from_secs(5),
        || async {
            let out = session
                .shell("ps -eo args= | grep -c '[p]ip install' || true")
                .await
                .ok()?;
            (out.stdout_text() == "0\n").then_some(())
        },
    )
    .await;
    session.release().await.expect("release");
    server.stop().await;
    drop(index);
    let _ = std::fs::remove_dir_all(dir);
}

/// Resolves once the container is (or, with `on` false, is no longer) on
/// some network.
async fn wait_for_network(container: &str, on: bool) {
    loop {
        if docker_networks(container).is_empty() != on {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
