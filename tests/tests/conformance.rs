//! One backend conformance suite, run on Docker, Podman and Kubernetes (the
//! test API server in-process, its pods real Docker containers): the same
//! cases through the Backend trait (create with limits and labels, streamed
//! exec with exit codes, stdin, tar in and out, listing by label, removal)
//! and through a pool on the server (a timeout kills the whole tree, health,
//! a container deleted behind the pool's back is replaced).
//!
//! Podman skips when no podman socket exists, unless SANDPOOL_REQUIRE_PODMAN
//! is set (scripts/test.sh sets it).

mod k8s_common;

use std::{
    collections::HashMap,
    io::Read,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use sandpool_client::{RunEvent, proto as pb};
use sandpool_server::{
    ServerConfig,
    backend::{
        Backend, BackendKind, ContainerSpec, DockerBackend, ExecSpec, LABEL_MARKER, LABEL_POOL,
        LABEL_SERVER, Output, Resize, SharedBackend, TerminalSize, Tmpfs, exec_collect,
        wait_exit_code,
    },
};
use sandpool_tests::{TestServer, empty_config, python_pool, shell_run, wait_for};
use tokio::io::AsyncWriteExt;

const SANDBOX_USER: &str = "1000:1000";

/// An engine under test: its backend, a server config whose pools reach it,
/// and (Kubernetes) the API server that must outlive both.
struct Engine {
    backend: SharedBackend,
    config: ServerConfig,
    _k8s: Option<k8s_common::K8s>,
}

async fn engine(kind: BackendKind) -> Option<Engine> {
    match kind {
        BackendKind::Docker => Some(Engine {
            backend: std::sync::Arc::new(sandpool_tests::docker()),
            config: empty_config(),
            _k8s: None,
        }),
        BackendKind::Podman => {
            let endpoint = DockerBackend::default_endpoint(BackendKind::Podman);
            let path = endpoint.trim_start_matches("unix://");
            if !std::path::Path::new(path).exists() {
                assert!(
                    std::env::var("SANDPOOL_REQUIRE_PODMAN").is_err(),
                    "SANDPOOL_REQUIRE_PODMAN is set but there is no podman socket at {path}"
                );
                eprintln!("skipping: no podman socket at {path}");
                return None;
            }
            Some(Engine {
                backend: std::sync::Arc::new(DockerBackend::new(BackendKind::Podman, endpoint)),
                config: empty_config(),
                _k8s: None,
            })
        }
        BackendKind::Kubernetes => {
            let k8s = k8s_common::K8s::start("conformance").await;
            Some(Engine {
                backend: std::sync::Arc::new(k8s.backend()),
                config: k8s.config(),
                _k8s: Some(k8s),
            })
        }
    }
}

fn spec(server_id: &str) -> ContainerSpec {
    let suffix: u32 = rand::random();
    let scratch = |path: &str, owner| Tmpfs {
        path: path.to_string(),
        size_bytes: 64 << 20,
        mode: 0o755,
        owner,
    };
    ContainerSpec {
        name: format!("sandpool-conformance-w-{suffix:08x}"),
        image: sandpool_tests::python_image(),
        labels: HashMap::from([
            (LABEL_SERVER.to_string(), server_id.to_string()),
            (LABEL_POOL.to_string(), "conformance".to_string()),
        ]),
        main_user: "65534:65534".into(),
        memory_bytes: Some(256 << 20),
        nano_cpus: Some(500_000_000),
        cpu_period: None,
        cpu_quota: None,
        pids_limit: Some(128),
        nproc_limit: None,
        network: "none".into(),
        read_only_root: true,
        tmpfs: vec![
            scratch("/sandbox", Some((1000, 1000))),
            Tmpfs {
                mode: 0o1777,
                ..scratch("/tmp", None)
            },
        ],
        oci_runtime: None,
        env: vec!["HOME=/sandbox".into(), "LANG=C.UTF-8".into()],
        helper_caps: [
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "KILL",
            "SETGID",
            "SETUID",
        ]
        .map(String::from)
        .to_vec(),
        namespace: None,
    }
}

fn as_user(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: vec!["CONFORMANCE=yes".into()],
        user: SANDBOX_USER.into(),
        working_dir: Some("/sandbox".into()),
        stdin: false,
        privileged: false,
        terminal: None,
    }
}

async fn sh(backend: &dyn Backend, id: &str, script: &str) -> (i64, String, String) {
    let out = exec_collect(
        backend,
        id,
        as_user(&["/bin/sh", "-c", script]),
        None,
        1 << 20,
    )
    .await
    .expect("exec");
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The containers labelled with `server_id`, its liveness marker left out.
async fn sandboxes(
    backend: &dyn Backend,
    server_id: &str,
) -> Vec<sandpool_server::backend::ListedContainer> {
    backend
        .list_containers(LABEL_SERVER, Some(server_id))
        .await
        .expect("list")
        .into_iter()
        .filter(|c| !c.labels.contains_key(LABEL_MARKER))
        .collect()
}

/// The Backend trait's contract on one engine.
async fn backend_cases(backend: &dyn Backend, kind: BackendKind) {
    let server_id = sandpool_tests::unique_id("conf");
    // Alive on the engine: other servers on it (other suites) leave this
    // instance's containers alone.
    let liveness = backend
        .announce(&server_id, &sandpool_tests::python_image())
        .await
        .expect("announce");
    let started = Instant::now();
    let id = backend
        .create_container(&spec(&server_id))
        .await
        .expect("create");
    eprintln!("{kind}: create to running in {:?}", started.elapsed());
    assert!(backend.container_running(&id).await.expect("running"));

    // Labels, and listing by them.
    let listed = sandboxes(backend, &server_id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert!(listed[0].running);
    assert_eq!(
        listed[0].labels.get(LABEL_POOL).map(String::as_str),
        Some("conformance")
    );
    assert!(
        backend
            .list_containers(LABEL_SERVER, Some("nobody-at-all"))
            .await
            .expect("list")
            .is_empty()
    );

    // Limits, user, environment, working directory, read-only root, the
    // scratch mounts' owners, no network.
    let (code, out, err) = sh(
        backend,
        &id,
        "id -u; id -g; pwd; echo $CONFORMANCE; \
         cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         touch /rootfile 2>/dev/null && echo root-writable || echo root-readonly; \
         stat -c %u /sandbox; grep -c ':' /proc/net/dev; \
         grep CapEff /proc/self/status",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], &["1000", "1000", "/sandbox", "yes"], "{out}");
    assert_eq!(lines[4], (256u64 << 20).to_string(), "memory limit: {out}");
    assert_eq!(lines[5], "root-readonly");
    assert_eq!(lines[6], "1000", "/sandbox belongs to the sandbox user");
    assert_eq!(lines[7], "1", "only lo: {out}");
    assert_eq!(lines[8], "CapEff:\t0000000000000000", "no capability");
    let info = backend.inspect(&id).await.expect("inspect");
    assert!(info.networks.is_empty(), "{:?}", info.networks);
    assert!(
        info.env.iter().any(|e| e == "LANG=C.UTF-8"),
        "{:?}",
        info.env
    );

    // Output streams as it is produced; exit codes come back.
    let mut exec = backend
        .exec(
            &id,
            as_user(&[
                "/bin/sh",
                "-c",
                "echo first; sleep 0.6; echo second >&2; exit 7",
            ]),
        )
        .await
        .expect("exec");
    let t0 = Instant::now();
    let Some(first) = exec.output.next().await else {
        panic!(
            "no output; exit {:?}",
            wait_exit_code(backend, &exec.id).await
        );
    };
    let first = first.expect("chunk");
    assert_eq!(first, Output::Stdout(Bytes::from_static(b"first\n")));
    assert!(t0.elapsed() < Duration::from_millis(500), "not streamed");
    let mut rest = Vec::new();
    while let Some(item) = exec.output.next().await {
        rest.push(item.expect("chunk"));
    }
    assert_eq!(rest, vec![Output::Stderr(Bytes::from_static(b"second\n"))]);
    assert_eq!(wait_exit_code(backend, &exec.id).await.expect("exit"), 7);

    // Standard input, closed by the caller.
    let mut exec = backend
        .exec(
            &id,
            ExecSpec {
                stdin: true,
                ..as_user(&["/bin/sh", "-c", "tr a-z A-Z; echo done"])
            },
        )
        .await
        .expect("exec");
    let mut stdin = exec.stdin.take().expect("stdin");
    stdin.write_all(b"ping\n").await.expect("write");
    stdin.shutdown().await.expect("close stdin");
    let mut out = Vec::new();
    while let Some(item) = exec.output.next().await {
        if let Output::Stdout(d) = item.expect("chunk") {
            out.extend_from_slice(&d);
        }
    }
    assert_eq!(out, b"PING\ndone\n");
    assert_eq!(wait_exit_code(backend, &exec.id).await.expect("exit"), 0);

    // A terminal: one stdout stream, the size asked for, a resize that is
    // applied before the input written after it, input echoed.
    let mut exec = backend
        .exec(
            &id,
            ExecSpec {
                stdin: true,
                terminal: Some(TerminalSize {
                    rows: 24,
                    columns: 80,
                }),
                ..as_user(&[
                    "/bin/sh",
                    "-c",
                    "read a; stty size; read line; stty size; echo got-$line; echo err >&2",
                ])
            },
        )
        .await
        .expect("exec with a terminal");
    let mut stdin = exec.stdin.take().expect("stdin");
    let resize = exec.resize.take().expect("a resizer");
    let mut out = String::new();
    let mut stderr = 0;
    // The engine sizes the terminal once the exec runs: asked after the
    // first input.
    stdin.write_all(b"a\r").await.expect("write");
    while !out.contains("24 80") {
        let next = tokio::time::timeout(Duration::from_secs(20), exec.output.next());
        match next
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: no terminal size; it said {out:?}"))
        {
            Some(Ok(Output::Stdout(d))) => out.push_str(&String::from_utf8_lossy(&d)),
            Some(Ok(Output::Stderr(_))) => stderr += 1,
            other => panic!("{kind:?}: the terminal said {out:?}, then {other:?}"),
        }
    }
    let (done, applied) = tokio::sync::oneshot::channel();
    resize
        .send(Resize {
            size: TerminalSize {
                rows: 33,
                columns: 111,
            },
            done,
        })
        .expect("resize");
    let _ = applied.await;
    stdin.write_all(b"x\r").await.expect("write");
    while let Some(item) = exec.output.next().await {
        match item.expect("chunk") {
            Output::Stdout(d) => out.push_str(&String::from_utf8_lossy(&d)),
            Output::Stderr(_) => stderr += 1,
        }
    }
    assert_eq!(stderr, 0, "{kind:?}: a terminal has one stream");
    assert!(out.contains("33 111\r\n"), "{kind:?}: the resize: {out:?}");
    assert!(out.contains("got-x\r\nerr\r\n"), "{kind:?}: {out:?}");
    assert_eq!(wait_exit_code(backend, &exec.id).await.expect("exit"), 0);

    // A missing program is 126/127, as a shell says.
    let out = exec_collect(backend, &id, as_user(&["/no/such/program"]), None, 4096)
        .await
        .expect("exec");
    assert!(matches!(out.exit_code, 126 | 127), "{}", out.exit_code);

    // Tar in and out.
    let mut builder = tar::Builder::new(Vec::new());
    let content = b"conformance\n".repeat(10_000);
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "dir/file.txt", &content[..])
        .expect("tar");
    let archive = builder.into_inner().expect("tar");
    let unpacked = exec_collect(
        backend,
        &id,
        as_user(&["tar", "-x", "-f", "-", "-C", "/sandbox", "--no-same-owner"]),
        Some(Bytes::from(archive)),
        4096,
    )
    .await
    .expect("untar");
    assert_eq!(unpacked.exit_code, 0, "{}", unpacked.diagnostic());
    let packed = exec_collect(
        backend,
        &id,
        as_user(&["tar", "-c", "-f", "-", "-C", "/sandbox", "dir"]),
        None,
        8 << 20,
    )
    .await
    .expect("tar out");
    assert_eq!(packed.exit_code, 0, "{}", packed.diagnostic());
    let mut archive = tar::Archive::new(&packed.stdout[..]);
    let mut found = None;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").ends_with("file.txt") {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            found = Some(data);
        }
    }
    assert_eq!(
        found.as_deref(),
        Some(&content[..]),
        "the file came back whole"
    );

    // A privileged exec runs as root with the helper's capabilities only.
    let root = exec_collect(
        backend,
        &id,
        ExecSpec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "id -u; grep CapEff /proc/self/status".into(),
            ],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: "0:0".into(),
            working_dir: Some("/".into()),
            stdin: false,
            privileged: true,
            terminal: None,
        },
        None,
        4096,
    )
    .await
    .expect("root exec");
    assert_eq!(root.exit_code, 0, "{}", root.diagnostic());
    assert!(String::from_utf8_lossy(&root.stdout).starts_with("0\n"));

    // Removal: gone, listed no more, removing again is fine, execs say gone.
    backend.remove_container(&id).await.expect("remove");
    assert!(!backend.container_running(&id).await.expect("running?"));
    assert!(sandboxes(backend, &server_id).await.is_empty());
    backend.remove_container(&id).await.expect("remove again");
    match backend.exec(&id, as_user(&["true"])).await {
        Err(sandpool_server::backend::Error::ContainerGone { .. }) => {}
        Err(other) => panic!("exec in a removed container: {other}"),
        Ok(_) => panic!("exec in a removed container started"),
    }
    drop(liveness.hold);
    let _ = backend.remove_container(&liveness.id).await;
    backend
        .forget_instance(&server_id)
        .await
        .expect("forget the instance");
}

/// The same behaviour through a pool on the server.
async fn pool_cases(engine: &Engine, kind: BackendKind) {
    let server = TestServer::start_with(engine.config.clone()).await;
    let mut spec = python_pool("conf");
    spec.backend = match kind {
        BackendKind::Docker => pb::Backend::Docker,
        BackendKind::Podman => pb::Backend::Podman,
        BackendKind::Kubernetes => pb::Backend::Kubernetes,
    } as i32;
    let config = spec.config.as_mut().expect("config");
    config.min_pool_size = Some(1);
    config.max_pool_size = Some(1);
    let started = Instant::now();
    server.pool(spec).await;
    eprintln!("{kind}: pool warm in {:?}", started.elapsed());

    let session = server.client.acquire("conf").await.expect("acquire");
    // Streamed code with its exit code.
    let mut stream = session
        .run("import sys, time\nprint('a', flush=True)\ntime.sleep(0.5)\nprint('b', file=sys.stderr)\nsys.exit(3)")
        .await
        .expect("run");
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push((Instant::now(), event.expect("event")));
    }
    let at = |want: &dyn Fn(&RunEvent) -> bool| {
        events
            .iter()
            .find(|(_, e)| want(e))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{kind}: event missing from {events:?}"))
    };
    let a = at(&|e| matches!(e, RunEvent::Stdout(d) if d.starts_with(b"a")));
    let end = at(&|e| matches!(e, RunEvent::Exit(_)));
    assert!(
        end - a >= Duration::from_millis(400),
        "stdout was not streamed"
    );
    let Some((_, RunEvent::Exit(exit))) = events.last() else {
        panic!("no exit event")
    };
    assert_eq!(exit.exit_code, 3);

    // Stdin.
    let out = session
        .run_with(
            "import sys\nprint(sys.stdin.read().upper())",
            sandpool_client::RunOptions::new().stdin("hello"),
        )
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.stdout_text().trim(), "HELLO");

    // A timeout kills the whole tree (a detached grandchild included), and
    // the container stays usable.
    let t0 = Instant::now();
    let out = session
        .run_request(shell_run(
            "(setsid sh -c 'sleep 300' &) ; sleep 300 & sleep 300",
            1.0,
        ))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let left = session
        .shell("ps -eo args | grep -c '^sleep 300' || true")
        .await
        .expect("ps");
    assert_eq!(left.stdout_text().trim(), "0", "the tree is gone");

    // Files: a tar in, a directory out as tar.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "x/y.txt", &b"xyz"[..])
        .expect("tar");
    session
        .upload_tar("/sandbox/in", builder.into_inner().expect("tar"))
        .await
        .expect("upload tar");
    let out = session.shell("cat /sandbox/in/x/y.txt").await.expect("cat");
    assert_eq!(out.stdout_text(), "xyz");
    let (_, tar_bytes) = session.download("/sandbox/in").await.expect("download");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let names: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert!(names.iter().any(|n| n.ends_with("y.txt")), "{names:?}");
    let container = session.container_id().to_string();
    session.release().await.expect("release");

    // Health: the reset container is idle again, and healthy.
    wait_for(
        "the container idle again",
        Duration::from_secs(20),
        || async {
            let stats = server.stats("conf").await;
            (stats.state_counts.unwrap_or_default().idle == 1).then_some(())
        },
    )
    .await;

    // Deleted behind the pool's back: replaced, never handed out (on
    // Podman this found that its event names differ from Docker's).
    {
        let t0 = Instant::now();
        engine
            .backend
            .remove_container(&container)
            .await
            .expect("remove behind the back");
        let session = server
            .client
            .acquire("conf")
            .await
            .expect("acquire after removal");
        assert_ne!(
            session.container_id(),
            container,
            "a removed container was handed out"
        );
        let out = session.run_collect("print(6 * 7)").await.expect("run");
        assert_eq!(out.stdout_text().trim(), "42");
        eprintln!("{kind}: replacement leased and ran in {:?}", t0.elapsed());
        session.release().await.expect("release");
    }

    let id = server.server_id.clone();
    server.stop().await;
    let left: Vec<_> = engine
        .backend
        .list_containers(LABEL_SERVER, Some(&id))
        .await
        .expect("list")
        .into_iter()
        .filter(|c| !c.labels.contains_key(LABEL_MARKER))
        .collect();
    assert!(left.is_empty(), "{kind}: left behind: {left:?}");
}

async fn conformance(kind: BackendKind) {
    let Some(engine) = engine(kind).await else {
        return;
    };
    backend_cases(&*engine.backend, kind).await;
    pool_cases(&engine, kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_conforms() {
    conformance(BackendKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_conforms() {
    conformance(BackendKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_conforms() {
    conformance(BackendKind::Kubernetes).await;
}
