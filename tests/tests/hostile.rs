//! The hostile-code suite: what untrusted code does on purpose, against the
//! real engines. Each case runs on a lease of its own while a neighbour
//! lease on the same server runs `print` in a loop, and asserts that
//!
//! - the server keeps answering, and the neighbour's runs succeed with a
//!   median within 2x of their unloaded median (measured just before);
//! - the hostile run ends within its timeout + 1 s (by the run's own clock),
//!   with a typed end reason;
//! - the next lease on that container (or its replacement) sees nothing of
//!   it (`LEFTOVERS_PROBE`: processes, IPC, message queues, files).
//!
//! The slowdown is a ratio measured within the test, so the suite runs
//! alone, in a stage of its own (the tests are `#[ignore]`d for the normal
//! run):
//!
//!     cargo test -p sandpool-tests --test hostile -- --ignored --test-threads=1
//!
//! Every case runs on Docker (runc); the engine-sensitive ones also on
//! Podman and on gVisor (runsc). Each prints one line of numbers.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use sandpool_client::{RunOutput, Session, proto as pb};
use sandpool_tests::{
    LEFTOVERS_PROBE, TestServer, clean_leftovers, fork_bomb_run,
    packages::{bridge_gateway, build_sdist, serve_projects, temp_dir},
    python_pool, runsc_available, secs, shell_run,
};

/// How long after its timeout a hostile run may take to end.
const KILL_SLACK: Duration = Duration::from_secs(1);
/// How much slower the neighbour's median run may get.
const MAX_SLOWDOWN: f64 = 2.0;
/// Neighbour runs measured unloaded, and at least while loaded.
const SAMPLES: usize = 10;
const NEIGHBOUR: &str = "print(1)";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Docker,
    Podman,
    Gvisor,
}

/// A server with a neighbour lease on Docker and a one-container pool
/// `hostile` on `engine`.
struct Arena {
    server: TestServer,
    neighbour: Session,
    engine: Engine,
}

impl Arena {
    /// `None` when `engine` is not available here (gVisor without runsc).
    async fn start(engine: Engine) -> Option<Self> {
        Self::start_with(engine, |_| {}).await
    }

    async fn start_with(engine: Engine, tweak: impl FnOnce(&mut pb::PoolSpec)) -> Option<Self> {
        if engine == Engine::Gvisor && !runsc_available() {
            return None;
        }
        let server = TestServer::start().await;
        let mut neighbour = python_pool("neighbour");
        neighbour.config.as_mut().expect("config").max_pool_size = Some(1);
        server.pool(neighbour).await;
        let neighbour = server.client.acquire("neighbour").await.expect("acquire");
        let mut spec = python_pool("hostile");
        let config = spec.config.as_mut().expect("config");
        config.max_pool_size = Some(1);
        config.min_pool_size = Some(1);
        match engine {
            Engine::Docker => {}
            Engine::Podman => spec.backend = pb::Backend::Podman as i32,
            Engine::Gvisor => {
                spec.runtime
                    .get_or_insert_with(Default::default)
                    .oci_runtime = Some("runsc".into());
            }
        }
        tweak(&mut spec);
        server.pool(spec).await;
        Some(Self {
            server,
            neighbour,
            engine,
        })
    }

    /// Neighbour runs one after the other: `count` of them, and on until
    /// `done` is set. Every one must succeed.
    async fn neighbour_runs(&self, count: usize, done: &AtomicBool) -> Vec<Duration> {
        let mut times = Vec::new();
        while times.len() < count || !done.load(Ordering::SeqCst) {
            let started = Instant::now();
            let out = self
                .neighbour
                .run_collect(NEIGHBOUR)
                .await
                .expect("the neighbour's run");
            assert_eq!(
                out.stdout_text(),
                "1\n",
                "the neighbour's run failed: {}",
                out.stderr_text()
            );
            times.push(started.elapsed());
        }
        times
    }

    /// Runs `hostile` while the neighbour loops, and checks the neighbour's
    /// slowdown and that the server still answers. Returns what `hostile`
    /// returned and a line of numbers.
    async fn under_load<T>(&self, hostile: impl Future<Output = T>) -> (T, String) {
        let idle = AtomicBool::new(true);
        // Warm the neighbour's path, then its unloaded median.
        self.neighbour_runs(3, &idle).await;
        let unloaded = median(self.neighbour_runs(SAMPLES, &idle).await);
        let done = AtomicBool::new(false);
        let hostile = async {
            let result = hostile.await;
            done.store(true, Ordering::SeqCst);
            result
        };
        let (result, loaded) = tokio::join!(hostile, self.neighbour_runs(SAMPLES / 2, &done));
        let n = loaded.len();
        let loaded = median(loaded);
        let ratio = loaded.as_secs_f64() / unloaded.as_secs_f64();
        assert!(
            ratio <= MAX_SLOWDOWN,
            "the neighbour's median run went from {unloaded:?} to {loaded:?} ({ratio:.2}x)"
        );
        let answered =
            tokio::time::timeout(Duration::from_secs(2), self.server.client.list_pools())
                .await
                .expect("the server answers within 2 s")
                .expect("ListPools");
        assert!(!answered.is_empty());
        (
            result,
            format!("neighbour median {unloaded:.1?} -> {loaded:.1?} ({ratio:.2}x, {n} runs)"),
        )
    }

    /// A hostile run on a fresh lease of `hostile`, under load; checks its
    /// end (reason among `ends`, within its timeout + 1 s), hands its output
    /// (or the error it ended with) to `check`, then checks what the next
    /// lease sees (on the same container, with `keeps_container`). Prints
    /// the case's numbers.
    async fn case(
        &self,
        name: &str,
        request: pb::RunRequest,
        ends: &[pb::EndReason],
        keeps_container: bool,
        check: impl FnOnce(&Result<RunOutput, sandpool_client::Error>),
    ) {
        let timeout = request
            .timeout
            .as_ref()
            .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
            .expect("hostile runs have a timeout");
        let session = self
            .server
            .client
            .acquire("hostile")
            .await
            .expect("acquire");
        let container = session.container_id().to_string();
        let ((result, by_client), load) = self
            .under_load(async {
                let started = Instant::now();
                let result = match session.run_request(request).await {
                    Ok(stream) => stream.collect().await,
                    Err(e) => Err(e),
                };
                (result, started.elapsed())
            })
            .await;
        let end = match &result {
            Ok(out) => {
                assert!(
                    ends.contains(&out.end_reason()),
                    "{name}: the run ended {:?} (exit {:?}), expected one of {ends:?}; stderr: {}",
                    out.end_reason(),
                    out.exit,
                    tail(&out.stderr_text())
                );
                // The run's own clock (start of its process to its end);
                // the client's adds the exec's start and the calls.
                assert!(
                    out.duration() <= timeout + KILL_SLACK,
                    "{name}: the run ended {:?} after it started; its timeout was {timeout:?}",
                    out.duration()
                );
                format!("{:?} after {:.2?}", out.end_reason(), out.duration())
            }
            // gVisor only: a sandbox the code took down ends the run with
            // the container gone (typed), never a hang: at worst after the
            // server's kill deadlines (4 s for the warden's answer, 2 s for
            // a one-shot exec).
            Err(e) if self.engine == Engine::Gvisor => {
                assert_eq!(
                    e.reason().as_deref(),
                    Some("CONTAINER_GONE"),
                    "{name}: the run failed with {e:?}"
                );
                assert!(
                    by_client <= timeout + Duration::from_millis(6500),
                    "{name}: the run failed only after {by_client:?}"
                );
                format!("CONTAINER_GONE after {by_client:.2?}")
            }
            Err(e) => panic!("{name}: the run failed: {e:?}"),
        };
        check(&result);
        let gone = session.lost().is_some() || result.is_err();
        if gone {
            drop(session);
        } else {
            session.release().await.expect("release");
        }
        let next = self.next_lease_sees().await;
        println!(
            "hostile {:?} {name}: {end} (timeout {timeout:?}, {by_client:.2?} by the client); \
             {load}; next lease on {} container: clean",
            self.engine,
            if next == container {
                "the same"
            } else {
                "a replacement"
            },
        );
        if keeps_container {
            assert_eq!(next, container, "{name}: the container did not survive");
        }
    }

    /// Acquires `hostile` again and checks that the lease sees nothing of
    /// earlier ones; returns its container.
    async fn next_lease_sees(&self) -> String {
        let next = self
            .server
            .client
            .acquire("hostile")
            .await
            .expect("the next lease");
        let out = next.run_collect(LEFTOVERS_PROBE).await.expect("probe");
        assert_eq!(
            out.stdout_text().trim(),
            clean_leftovers(),
            "the next lease sees what an earlier one left: {}",
            out.stderr_text()
        );
        let container = next.container_id().to_string();
        next.release().await.expect("release");
        container
    }

    async fn stop(self) {
        self.neighbour
            .release()
            .await
            .expect("release the neighbour");
        self.server.stop().await;
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(400);
    text.get(start..).unwrap_or(text)
}

fn python_run(code: &str, timeout: f64) -> pb::RunRequest {
    pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(code.into())),
            language: String::new(),
        })),
        timeout: secs(timeout),
        ..Default::default()
    }
}

fn stdout_of(result: &Result<RunOutput, sandpool_client::Error>) -> String {
    match result {
        Ok(out) => out.stdout_text(),
        Err(e) => panic!("the run failed: {e:?}"),
    }
}

// ---- the cases ----------------------------------------------------------

async fn fork_bomb(arena: &Arena) {
    arena
        .case(
            "fork bomb",
            fork_bomb_run(3.0),
            &[pb::EndReason::Timeout],
            false,
            |_| {},
        )
        .await;
}

/// Touches every page it allocates, so the memory limit is really reached.
const MEMORY_BOMB: &str = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n";

async fn memory_bomb(arena: &Arena) {
    arena
        .case(
            "memory bomb",
            python_run(MEMORY_BOMB, 20.0),
            // The kernel's OOM killer (SIGKILL), or Python's MemoryError.
            &[pb::EndReason::Signaled, pb::EndReason::Exited],
            false,
            |result| {
                if let Ok(out) = result {
                    assert_ne!(out.exit_code(), 0, "the memory bomb exited 0");
                }
            },
        )
        .await;
}

async fn gigabyte_to_stdout(arena: &Arena) {
    arena
        .case(
            "1 GB to stdout",
            shell_run("head -c 1073741824 /dev/zero | tr '\\0' x", 30.0),
            &[pb::EndReason::OutputLimit],
            true,
            |result| {
                if let Ok(out) = result {
                    let bytes = out.stdout_text().len() as u64;
                    assert!(
                        bytes <= 11 << 20,
                        "{bytes} bytes reached the client past a 10 MiB cap"
                    );
                }
            },
        )
        .await;
}

async fn fill_the_disks(arena: &Arena) {
    let line = "for d in /sandbox /tmp /dev/shm; do \
                  dd if=/dev/zero of=$d/fill bs=1M 2>/dev/null; \
                  echo \"$d $(du -sm $d/fill | cut -f1)\"; \
                done; echo filled";
    arena
        .case(
            "fill /sandbox, /tmp, /dev/shm",
            shell_run(line, 30.0),
            // Full file systems (ENOSPC), or the memory limit (the mounts
            // are memory-backed) killing the writer.
            &[pb::EndReason::Exited, pb::EndReason::Signaled],
            false,
            |_| {},
        )
        .await;
}

/// Allocates and touches 64 MiB of SysV shared memory and leaves it.
const SYSV_SHM: &str = r#"
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
libc.shmat.restype = ctypes.c_void_p
size = 64 << 20
shm = libc.shmget(0, size, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
assert shm >= 0, ctypes.get_errno()
addr = libc.shmat(shm, None, 0)
ctypes.memset(addr, 1, size)
print('left', shm)
"#;

async fn sysv_shared_memory(arena: &Arena) {
    arena
        .case(
            "SysV shared memory left allocated",
            python_run(SYSV_SHM, 10.0),
            &[pb::EndReason::Exited],
            true,
            |result| assert!(stdout_of(result).starts_with("left "), "{result:?}"),
        )
        .await;
}

async fn daemons(arena: &Arena) {
    let line = "setsid sleep 1001 </dev/null >/dev/null 2>&1 & \
                nohup sleep 1002 </dev/null >/dev/null 2>&1 & \
                env -i /usr/bin/setsid /bin/sh -c 'trap \"\" TERM HUP; exec sleep 1003' \
                  </dev/null >/dev/null 2>&1 & \
                sleep 0.2; echo started";
    arena
        .case(
            "setsid/nohup daemons, one after env -i",
            shell_run(line, 10.0),
            &[pb::EndReason::Exited],
            true,
            |result| assert_eq!(stdout_of(result), "started\n"),
        )
        .await;
}

/// Tries DNS, the engine's gateway and the server's port; prints one
/// "name: blocked|open" line each.
fn network_probe(gateway: &str, server_port: u16) -> String {
    format!(
        r#"
import socket
def attempt(name, f):
    try:
        f()
        print(name + ': open')
    except OSError:
        print(name + ': blocked')
def dns():
    socket.getaddrinfo('example.com', 80)
def tcp(host, port):
    def go():
        s = socket.create_connection((host, port), timeout=2)
        s.close()
    return go
attempt('dns', dns)
attempt('gateway:2375', tcp('{gateway}', 2375))
attempt('gateway:server', tcp('{gateway}', {server_port}))
attempt('gateway:22', tcp('{gateway}', 22))
attempt('1.1.1.1:53', tcp('1.1.1.1', 53))
"#
    )
}

async fn network_attempts(arena: &Arena) {
    let probe = network_probe(&bridge_gateway(), arena.server.addr.port());
    arena
        .case(
            "network attempts (DNS, gateway, server port)",
            python_run(&probe, 15.0),
            &[pb::EndReason::Exited],
            true,
            |result| {
                let out = stdout_of(result);
                assert_eq!(out.lines().count(), 5, "{out}");
                assert!(
                    !out.contains("open"),
                    "the sandbox reached the network: {out}"
                );
            },
        )
        .await;
}

async fn kernel_knobs(arena: &Arena) {
    let line = "n=0; for f in /proc/sys/kernel/sysrq /proc/sys/vm/drop_caches \
                /proc/sys/kernel/core_pattern /proc/sysrq-trigger /sys/kernel/mm/transparent_hugepage/enabled \
                /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/memory.max; do \
                  if (echo 1 > $f) 2>/dev/null; then echo \"wrote $f\"; n=$((n+1)); fi; \
                done; echo \"written $n\"";
    arena
        .case(
            "writes to /proc/sys and /sys",
            shell_run(line, 10.0),
            &[pb::EndReason::Exited],
            true,
            |result| assert_eq!(stdout_of(result), "written 0\n"),
        )
        .await;
}

async fn setuid_binaries(arena: &Arena) {
    // Whatever setuid binaries the image has, they give nothing: no new
    // privileges, no capabilities, and su/mount refuse.
    let line = "grep -E '^(NoNewPrivs|CapEff|CapPrm):' /proc/self/status | tr -s '\\t ' ' '; \
                for b in $(find / -xdev -perm -4000 -type f 2>/dev/null); do \
                  echo \"setuid $b\"; done >&2; \
                su -c id root </dev/null >/dev/null 2>&1 && echo 'su worked'; \
                mount -t tmpfs none /tmp 2>/dev/null && echo 'mount worked'; \
                cp /bin/sh /sandbox/sh && chmod 4755 /sandbox/sh && /sandbox/sh -c 'id -u'";
    arena
        .case(
            "setuid binaries",
            shell_run(line, 10.0),
            &[pb::EndReason::Exited],
            true,
            |result| {
                let out = stdout_of(result);
                assert_eq!(
                    out,
                    "CapPrm: 0000000000000000\nCapEff: 0000000000000000\nNoNewPrivs: 1\n1000\n",
                    "setuid gave something"
                );
            },
        )
        .await;
}

async fn kill_everything(arena: &Arena) {
    arena
        .case(
            "kill -9 -1",
            // Linux spares the caller of kill(-1) (the run's wrapper may
            // die, then the run ends SIGKILLed); everything else the sandbox
            // user may signal dies, and nothing of the container's own
            // (init, idle process, warden) is among it: the container
            // survives, the next lease gets it.
            shell_run("sleep 100 & kill -9 -1; wait; echo alone", 10.0),
            &[pb::EndReason::Exited, pb::EndReason::Signaled],
            true,
            |result| assert!(result.is_ok(), "{result:?}"),
        )
        .await;
}

/// Tries to trace the container's init, its idle process and everything
/// else it can see that is not its own; prints "traced N" with N the
/// number of processes it could attach to.
const PTRACE: &str = r#"
import ctypes, ctypes.util, os
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
mine = {os.getpid(), os.getppid()}
traced = []
for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) in mine:
        continue
    if libc.ptrace(PTRACE_ATTACH, int(pid), None, None) == 0:
        traced.append(pid)
        libc.ptrace(PTRACE_DETACH, int(pid), None, None)
readable = []
for what in ('/proc/1/environ', '/proc/1/mem', '/proc/1/root/etc/shadow'):
    try:
        open(what, 'rb').read(1)
        readable.append(what)
    except OSError:
        pass
print('traced', len(traced), 'read', readable)
"#;

async fn ptrace(arena: &Arena) {
    // gVisor (Debian's runsc) lets a process read another uid's
    // /proc/PID/environ (checked with a bare `docker run --runtime runsc`:
    // not sandpool's doing). PID 1's holds only the image's environment (a
    // pool's runtime.env reaches the lease's processes, never the
    // container's own environment), so there it may be readable; nothing
    // can be traced, and PID 1's memory and root stay closed on every
    // engine.
    let expected = if arena.engine == Engine::Gvisor {
        "traced 0 read ['/proc/1/environ']\n"
    } else {
        "traced 0 read []\n"
    };
    arena
        .case(
            "ptrace of other processes",
            python_run(PTRACE, 10.0),
            &[pb::EndReason::Exited],
            true,
            |result| assert_eq!(stdout_of(result), expected),
        )
        .await;
}

async fn all_cases(arena: &Arena) {
    fork_bomb(arena).await;
    memory_bomb(arena).await;
    gigabyte_to_stdout(arena).await;
    fill_the_disks(arena).await;
    sysv_shared_memory(arena).await;
    daemons(arena).await;
    network_attempts(arena).await;
    kernel_knobs(arena).await;
    setuid_binaries(arena).await;
    kill_everything(arena).await;
    ptrace(arena).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a slowdown ratio: runs alone (scripts/test.sh, stage hostile)"]
async fn hostile_code_on_docker() {
    let arena = Arena::start(Engine::Docker).await.expect("docker");
    all_cases(&arena).await;
    arena.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a slowdown ratio: runs alone (scripts/test.sh, stage hostile)"]
async fn hostile_code_on_podman() {
    let arena = Arena::start(Engine::Podman).await.expect("podman");
    fork_bomb(&arena).await;
    memory_bomb(&arena).await;
    fill_the_disks(&arena).await;
    daemons(&arena).await;
    kill_everything(&arena).await;
    arena.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a slowdown ratio: runs alone (scripts/test.sh, stage hostile)"]
async fn hostile_code_on_gvisor() {
    let Some(arena) = Arena::start(Engine::Gvisor).await else {
        return;
    };
    memory_bomb(&arena).await;
    sysv_shared_memory(&arena).await;
    daemons(&arena).await;
    kernel_knobs(&arena).await;
    kill_everything(&arena).await;
    ptrace(&arena).await;
    fork_bomb(&arena).await;
    arena.stop().await;
}

/// A pool library whose install script leaves a daemon: created while the
/// neighbour loops; its first lease sees no trace of the install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a slowdown ratio: runs alone (scripts/test.sh, stage hostile)"]
async fn hostile_pool_library() {
    let dir = temp_dir("hostile-lib");
    let hook = "    subprocess.Popen(['/bin/sh', '-c', 'trap \"\" TERM HUP; exec sleep 1007'], \
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, \
                stderr=subprocess.DEVNULL)";
    let sdist = build_sdist(&dir, "sandpoolhostile", hook);
    let index = serve_projects(&dir.join("www"), &[("sandpoolhostile", &sdist)]);
    let arena = Arena::start(Engine::Docker).await.expect("docker");
    let mut spec = python_pool("hostile-lib");
    spec.libraries = vec!["sandpoolhostile==1.0".into()];
    spec.package_index_url = index.url.clone();
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    let started = Instant::now();
    let (pool, load) = arena
        .under_load(arena.server.client.create_pool(spec, true))
        .await;
    let pool = pool.expect("create the pool");
    assert_ne!(
        pool.phase,
        pb::PoolPhase::Failing as i32,
        "{}",
        pool.status_message
    );
    let warm = started.elapsed();
    let session = arena
        .server
        .client
        .acquire("hostile-lib")
        .await
        .expect("acquire");
    let out = session
        .shell("python3 -c 'import sandpoolhostile; print(sandpoolhostile.VALUE)'; ps -eo args= | grep -c '[s]leep 1007' || true")
        .await
        .expect("probe");
    assert_eq!(
        out.stdout_text(),
        "7\n0\n",
        "the install's daemon outlived the warm-up: {}",
        out.stderr_text()
    );
    session.release().await.expect("release");
    println!(
        "hostile Docker pool library leaving a daemon: warm in {warm:.2?}; {load}; first lease clean"
    );
    arena.stop().await;
    drop(index);
    let _ = std::fs::remove_dir_all(dir);
}
