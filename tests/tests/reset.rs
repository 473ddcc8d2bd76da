//! Resets that leave nothing: after a lease planted processes of its own
//! (one after `env -i`), IPC objects, message queues and files in every
//! writable place, the next lease on the same container sees none of it;
//! and nothing a lease planted (PATH, LD_PRELOAD from the pool's
//! runtime.env) runs as part of the server's own commands.

use std::time::{Duration, Instant};

use sandpool_client::proto as pb;
use sandpool_server::ServerConfig;
use sandpool_tests::{
    LEFTOVERS_PROBE, PLANT_LEFTOVERS, TestServer, clean_leftovers, empty_config, python_image,
    python_pool, runsc_available, shell_run,
};

async fn one_container_pool(
    server: &TestServer,
    name: &str,
    tweak: impl FnOnce(&mut pb::PoolSpec),
) {
    let mut spec = python_pool(name);
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    tweak(&mut spec);
    server.pool(spec).await;
}

/// Plants leftovers in a lease, releases it, and returns what the next
/// lease on the same container sees.
async fn leftovers_after_reset(server: &TestServer, pool: &str) -> String {
    let first = server.client.acquire(pool).await.expect("acquire");
    let container = first.container_id().to_string();
    let out = first.shell(PLANT_LEFTOVERS).await.expect("plant");
    assert_eq!(out.stdout_text(), "planted\n", "{}", out.stderr_text());
    let out = first
        .run_collect("import subprocess\nsubprocess.Popen(['python3', '-c', 'import time\\nwhile True: time.sleep(1)'], start_new_session=True)\nprint('daemon')")
        .await
        .expect("daemon");
    assert_eq!(out.stdout_text(), "daemon\n");
    first.release().await.expect("release");

    let second = server.client.acquire(pool).await.expect("acquire again");
    assert_eq!(
        second.container_id(),
        container,
        "the same container, reset"
    );
    let out = second.run_collect(LEFTOVERS_PROBE).await.expect("probe");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    second.release().await.expect("release");
    out.stdout_text().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_lease_survives_the_reset() {
    let server = TestServer::start().await;
    one_container_pool(&server, "wipe", |_| {}).await;
    assert_eq!(
        leftovers_after_reset(&server, "wipe").await,
        clean_leftovers()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_root_is_reset_too() {
    // A writable root is the operator's choice (the policy floor refuses it
    // at run time): a pool of the config file.
    let text = format!(
        "[[pools]]\nname = \"rwroot\"\nlanguage = \"python\"\nimage = \"{}\"\n\
         min_pool_size = 1\nmax_pool_size = 1\n[pools.runtime]\nread_only_root = false\n",
        python_image()
    );
    let mut config =
        ServerConfig::from_toml(&text, std::path::Path::new("<rwroot>")).expect("config");
    let defaults = empty_config();
    config.server_id = defaults.server_id;
    config.shutdown_grace = defaults.shutdown_grace;
    let server = TestServer::start_with(config).await;
    server.wait_idle("rwroot").await;
    let session = server.client.acquire("rwroot").await.expect("acquire");
    let out = session
        .shell("touch /var/tmp/probe && echo writable")
        .await
        .expect("probe");
    assert_eq!(
        out.stdout_text(),
        "writable\n",
        "/var/tmp is writable on this pool"
    );
    session.release().await.expect("release");
    assert_eq!(
        leftovers_after_reset(&server, "rwroot").await,
        clean_leftovers()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_gvisor_leaves_nothing() {
    if !runsc_available() {
        return;
    }
    let server = TestServer::start().await;
    one_container_pool(&server, "gvwipe", |spec| {
        spec.runtime
            .get_or_insert_with(Default::default)
            .oci_runtime = Some("runsc".into());
    })
    .await;
    assert_eq!(
        leftovers_after_reset(&server, "gvwipe").await,
        clean_leftovers()
    );
    server.stop().await;
}

/// A shared object whose constructor, in any process that is not one of the
/// lease's own runs (those carry SANDPOOL_RUN_ID), leaves a mark and exits
/// at once: a server command that loads it does nothing else.
const EVIL_SO: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void hijack(void) {
    if (getenv("SANDPOOL_RUN_ID")) return;
    close(open("/sandbox/preload-ran", O_CREAT | O_WRONLY, 0644));
    close(open("/dev/shm/preload-ran", O_CREAT | O_WRONLY, 0644));
    _exit(0);
}
"#;

/// Every program the server's own commands might look up through PATH.
const PLANTED: &[&str] = &[
    "sh", "find", "rm", "mkdir", "chmod", "chown", "ipcrm", "env", "setpriv", "sleep", "cat",
    "kill", "ls", "mv", "cp", "stat", "tar", "readlink", "dirname", "python3", "tail", "head",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_lease_plants_runs_in_the_servers_commands() {
    let server = TestServer::start().await;
    one_container_pool(&server, "planted", |spec| {
        spec.runtime = Some(pb::RuntimeConfig {
            env: [
                (
                    "PATH".to_string(),
                    "/home/sandbox/bin:/usr/local/bin:/usr/bin:/bin".to_string(),
                ),
                (
                    "LD_PRELOAD".to_string(),
                    "/home/sandbox/evil.so".to_string(),
                ),
            ]
            .into(),
            ..Default::default()
        });
    })
    .await;
    let first = server.client.acquire("planted").await.expect("acquire");
    let container = first.container_id().to_string();
    first
        .upload("/sandbox/evil.c", EVIL_SO.as_bytes().to_vec())
        .await
        .expect("upload");
    let mut plant = String::from(
        "set -e; /usr/bin/gcc -shared -fPIC -o /home/sandbox/evil.so /sandbox/evil.c; /bin/rm /sandbox/evil.c; /bin/mkdir -p /home/sandbox/bin\n",
    );
    for name in PLANTED {
        plant.push_str(&format!(
            "/usr/bin/printf '#!/bin/sh\\n: > /sandbox/planted-{name}-ran; : > /dev/shm/planted-{name}-ran; exit 0\\n' > /home/sandbox/bin/{name}; /bin/chmod 755 /home/sandbox/bin/{name}\n"
        ));
    }
    plant.push_str("echo secret > /sandbox/left; echo planted");
    let out = first.exec(&["/bin/sh", "-c", &plant]).await.expect("plant");
    assert_eq!(out.stdout_text(), "planted\n", "{}", out.stderr_text());
    // The lease's own runs do get the pool's environment.
    let out = first
        .exec(&["/bin/sh", "-c", "echo $PATH"])
        .await
        .expect("env");
    assert!(out.stdout_text().starts_with("/home/sandbox/bin:"));
    // A kill, a listing and a file transfer: server commands during the lease.
    let out = first
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Command(pb::Command {
                argv: vec!["/bin/sleep".into(), "100".into()],
                shell: String::new(),
            })),
            timeout: sandpool_tests::secs(1.0),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    first.list_artifacts().await.expect("list");
    first.download("/sandbox/left").await.expect("download");
    first
        .upload("/sandbox/up", b"x".to_vec())
        .await
        .expect("upload");
    let out = first
        .exec(&["/bin/ls", "-A", "/sandbox", "/dev/shm"])
        .await
        .expect("ls");
    assert!(
        !out.stdout_text().contains("-ran"),
        "a server command during the lease ran a planted program: {}",
        out.stdout_text()
    );
    first.release().await.expect("release");

    let second = server
        .client
        .acquire("planted")
        .await
        .expect("acquire again");
    assert_eq!(second.container_id(), container);
    let out = second
        .exec(&["/bin/ls", "-A", "/sandbox", "/dev/shm", "/home/sandbox"])
        .await
        .expect("ls");
    assert_eq!(
        out.stdout_text(),
        "/dev/shm:\n\n/home/sandbox:\n\n/sandbox:\noutputs\n",
        "the reset ran something the lease planted, or did not wipe: {}",
        out.stderr_text()
    );
    second.release().await.expect("release");
    server.stop().await;
}

/// Release to idle again, as the pool reports it, over back-to-back cycles
/// on a pool of one container.
async fn reset_times(server: &TestServer, pool: &str, cycles: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..cycles {
        let session = server.client.acquire(pool).await.expect("acquire");
        let out = session
            .shell("echo x > /sandbox/f; sleep 1000 & echo ok")
            .await
            .expect("run");
        assert_eq!(out.stdout_text(), "ok\n");
        let released = Instant::now();
        session.release().await.expect("release");
        loop {
            let counts = server.stats(pool).await.state_counts.unwrap_or_default();
            if counts.idle == 1 {
                break;
            }
            assert!(
                released.elapsed() < Duration::from_secs(10),
                "no reset within 10s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(released.elapsed());
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_time() {
    let server = TestServer::start().await;
    one_container_pool(&server, "resettime", |_| {}).await;
    let mut times = reset_times(&server, "resettime", 8).await;
    times.sort();
    println!(
        "reset (release to idle, polled every 5 ms): min {:?} median {:?} max {:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() / 2] < Duration::from_secs(2));
    // A run that timed out does not slow the reset down.
    let session = server.client.acquire("resettime").await.expect("acquire");
    let out = session
        .run_request(shell_run("sleep 100", 0.5))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout);
    session.release().await.expect("release");
    server.stop().await;
}
