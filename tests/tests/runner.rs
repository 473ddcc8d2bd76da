//! The resident runner (`sandbox::runner`), on Docker, Podman and
//! Kubernetes (the test API server): runs go through it and look as they do
//! on the exec path (output, exit codes, signals, stdin, env, cwd, uid, a
//! group of each run's own, caps); a timeout's kill takes it down and a
//! fresh one comes back; a program that kills every process of its user
//! (`kill -9 -1`) ends as on the exec path, one that forges junk frames
//! ends with end reason RUNNER_LOST, never a hang, and the lease goes on by
//! exec until the reset brings a fresh runner. A pool chooses its path.
//! Every test checks that no container is left.

use std::time::{Duration, Instant};

use sandpool_client::{RunOptions, RunOutput, Session, proto as pb};
use sandpool_server::ServerConfig;

mod k8s_common;
use sandpool_tests::{Engine, TestServer, empty_config, python_pool, shell_run};

/// Shell that writes "runner" to stderr when an ancestor of the shell is the
/// resident runner, "exec" otherwise (an engine exec's process has no
/// parent in the container's pid namespace).
const WHICH_PATH: &str = r#"w=exec; p=$$
while [ "$p" -gt 0 ]; do
  read -r c < /proc/$p/comm
  [ "$c" = sandpool-runner ] && w=runner
  p=$(cut -d' ' -f4 /proc/$p/stat)
done
echo $w >&2
"#;

/// The same in Python.
const WHICH_PATH_PY: &str = r#"import os, sys
def _which():
    p = os.getpid()
    while p > 0:
        if open(f'/proc/{p}/comm').read().strip() == 'sandpool-runner':
            return 'runner'
        p = int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])
    return 'exec'
sys.stderr.write(_which() + '\n')
sys.stderr.flush()
"#;

/// Where a test's pool runs: an engine, or Kubernetes (the test API server,
/// which runs pods as Docker containers, kept alive by the returned handle).
#[derive(Clone, Copy)]
enum Place {
    Engine(Engine),
    Kubernetes,
}

async fn server_and_session(
    place: Place,
    name: &str,
) -> (TestServer, Session, Option<k8s_common::K8s>) {
    let (mut config, spec, k8s) = match place {
        Place::Engine(engine) => (empty_config(), engine.python_pool(name), None),
        Place::Kubernetes => {
            let k8s = k8s_common::K8s::start(&format!("runner-{name}")).await;
            let mut spec = python_pool(name);
            spec.backend = pb::Backend::Kubernetes as i32;
            (k8s.config(), spec, Some(k8s))
        }
    };
    config.resident_runner = true;
    let server = TestServer::start_with(config).await;
    server.pool(one_container(spec)).await;
    let session = server.client.acquire(name).await.expect("acquire");
    (server, session, k8s)
}

async fn path_of(session: &Session) -> String {
    let out = session.shell(WHICH_PATH).await.expect("run");
    assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
    out.stderr_text().trim().to_string()
}

/// Runs `request` (whose program first writes its path to stderr) until it
/// ran on the runner, and returns its output without that line: a fresh
/// runner starts after each run, and a run that comes before it is ready
/// takes the exec path.
async fn on_runner(session: &Session, request: pb::RunRequest) -> RunOutput {
    on_path(session, request, "runner").await
}

/// The same until it ran on the exec path (right after a run on the runner,
/// while the next runner starts).
async fn on_exec(session: &Session, request: pb::RunRequest) -> RunOutput {
    on_path(session, request, "exec").await
}

async fn on_path(session: &Session, request: pb::RunRequest, path: &str) -> RunOutput {
    let deadline = Instant::now() + Duration::from_secs(30);
    let other = if path == "exec" { "runner" } else { "exec" };
    loop {
        let mut out = session
            .run_request(request.clone())
            .await
            .expect("run")
            .collect()
            .await
            .expect("collect");
        let stderr = out.stderr_text();
        if let Some(rest) = stderr.strip_prefix(&format!("{path}\n")) {
            out.stderr = rest.as_bytes().to_vec().into();
            return out;
        }
        assert!(stderr.starts_with(&format!("{other}\n")), "{stderr}");
        assert!(Instant::now() < deadline, "no run went by {path}");
        tokio::time::sleep(Duration::from_millis(if path == "exec" { 0 } else { 100 })).await;
    }
}

async fn behaves_as_exec(place: Place) {
    let (server, session, _k8s) = server_and_session(place, "runner-same").await;
    assert_eq!(path_of(&session).await, "runner");

    // Python as a fresh `python3 main.py`: name, argv, cwd, uid, env.
    let code = format!(
        "{WHICH_PATH_PY}print(__name__, sys.argv, os.getcwd(), os.getuid(), os.environ['GREETING'])\n\
         print('to stderr', file=sys.stderr)\nsys.exit(3)"
    );
    let out = on_runner(
        &session,
        RunOptions::new().env("GREETING", "hello").request(code),
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "__main__ ['main.py'] /sandbox 1000 hello\n"
    );
    assert_eq!(out.stderr_text(), "to stderr\n");
    assert_eq!(
        (out.exit_code(), out.end_reason()),
        (3, pb::EndReason::Exited)
    );

    // A signal: the code and reason an exec reports.
    let out = on_runner(
        &session,
        shell_run(&format!("{WHICH_PATH}kill -TERM $$"), 30.0),
    )
    .await;
    assert_eq!(out.end_reason(), pb::EndReason::Signaled, "{:?}", out.exit);
    assert_eq!(out.exit.as_ref().map(|e| e.signal), Some(15));

    // Input larger than one frame, and a working directory of the run's.
    let input = vec![b'x'; 200_000];
    let out = on_runner(
        &session,
        pb::RunRequest {
            stdin: input.into(),
            working_dir: "/tmp".into(),
            ..shell_run(&format!("{WHICH_PATH}wc -c; pwd"), 30.0)
        },
    )
    .await;
    assert_eq!(out.stdout_text(), "200000\n/tmp\n");

    // Each run a group of its own, as on the exec path.
    let gid = |out: RunOutput| out.stdout_text().trim().to_string();
    let a = gid(on_runner(&session, shell_run(&format!("{WHICH_PATH}id -g"), 30.0)).await);
    let b = gid(on_runner(&session, shell_run(&format!("{WHICH_PATH}id -g"), 30.0)).await);
    assert_ne!(a, b, "runs share a group");

    // A program that leaves a process behind holding its output ends when
    // it exits, as an engine exec does (found with the resident runner on
    // for every suite: the reset suite's runs hung until their timeout).
    let started = Instant::now();
    let out = on_runner(
        &session,
        shell_run(&format!("{WHICH_PATH}sleep 1000 & echo ok"), 30.0),
    )
    .await;
    assert_eq!(
        (out.stdout_text().as_str(), out.end_reason()),
        ("ok\n", pb::EndReason::Exited)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the run waited for its leftover: {:?}",
        started.elapsed()
    );

    // The output cap cuts and stops the run.
    let out = on_runner(
        &session,
        RunOptions::new().output_limit_bytes(1000).request(format!(
            "{WHICH_PATH_PY}sys.stdout.write('y' * 1_000_000)\nsys.stdout.flush()"
        )),
    )
    .await;
    assert_eq!(out.end_reason(), pb::EndReason::OutputLimit);
    assert_eq!(out.stdout.len(), 1000);

    session.release().await.expect("release");
    server.stop().await;
}

/// A timeout kills the run's tree (and the runner with it: same group);
/// the reset starts a new one.
async fn timeout_then_fresh_runner(place: Place) {
    let (server, session, _k8s) = server_and_session(place, "runner-timeout").await;
    assert_eq!(path_of(&session).await, "runner");
    let started = Instant::now();
    let out = session
        .run_request(shell_run("sleep 60 & sleep 60; echo never", 1.0))
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(out.end_reason(), pb::EndReason::Timeout, "{:?}", out.exit);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.stdout_text().contains("never"));
    // The background sleep went with the kill (the sandbox user's; the
    // container's idle process has a sleep of its own).
    let out = session
        .shell("for p in /proc/[0-9]*; do read -r c < $p/comm; [ \"$c\" = sleep ] && grep -q '^Uid:[[:space:]]*1000[[:space:]]' $p/status && cat $p/stat; done; true")
        .await
        .expect("run");
    assert!(
        out.stdout_text().lines().all(|l| l.contains(") Z ")),
        "live processes of the run: {}",
        out.stdout_text()
    );
    session.release().await.expect("release");

    let session = server
        .client
        .acquire("runner-timeout")
        .await
        .expect("acquire again");
    assert_eq!(
        path_of(&session).await,
        "runner",
        "the reset started a new runner"
    );
    session.release().await.expect("release");
    server.stop().await;
}

/// `kill -9 -1` kills the runner under its own run: the run ends as on the
/// exec path (killed by SIGKILL), not a hang; the lease goes on by exec.
/// A program that writes junk into the runner's stream (it can: same uid
/// and group) ends its run with an end reason of its own (RUNNER_LOST), its
/// processes killed, the output before it kept. The reset brings a fresh
/// runner.
async fn kill_everything(place: Place) {
    let (server, session, _k8s) = server_and_session(place, "runner-kill-all").await;
    // The first run of a lease: the runner is up (warm-up and reset wait
    // for it).
    let started = Instant::now();
    let out = session
        .run_request(shell_run("kill -9 -1; sleep 1; echo survived", 30.0))
        .await
        .expect("run starts")
        .collect()
        .await
        .expect("the run ends with an exit");
    assert_eq!(
        (out.end_reason(), out.exit_code()),
        (pb::EndReason::Signaled, 137),
        "{:?}",
        out.exit
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let out = session.shell("echo next").await.expect("next run");
    assert_eq!(out.stdout_text(), "next\n");
    // No new runner before the reset: a moment later, still by exec.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(path_of(&session).await, "exec");
    session.release().await.expect("release");

    // A run cannot write into its runner's stream: it is a pipe of the
    // runner host's (root's), and on Kubernetes, where a runner the host
    // could not start is started by an exec that drops from root to the
    // sandbox user (setpriv), the runner is not dumpable either.
    let (session, result) = junk_on_a_new_lease(&server).await;
    assert_eq!(
        (result.end_reason(), result.exit_code()),
        (pb::EndReason::Exited, 3),
        "{:?} {}",
        result.exit,
        result.stderr_text()
    );
    assert!(
        result.stderr_text().contains("Permission denied"),
        "{}",
        result.stderr_text()
    );
    let Place::Engine(engine) = place else {
        session.release().await.expect("release");
        server.stop().await;
        return;
    };
    // Without the host (killed from outside: the sandbox user cannot),
    // runners start by exec again, and such a runner's stream is the
    // sandbox user's: junk written into it ends the run as RUNNER_LOST.
    engine.cli(&[
        "exec",
        "-u",
        "0",
        session.container_id(),
        "/bin/sh",
        "-c",
        "for p in /proc/[0-9]*; do read -r c < $p/comm; [ \"$c\" = sandpool-runner ] && \
         grep -q '^Uid:[[:space:]]*0[[:space:]]' $p/status && kill -9 ${p#/proc/}; done; true",
    ]);
    session.release().await.expect("release");
    let started = Instant::now();
    let (session, result) = junk_on_a_new_lease(&server).await;
    assert_eq!(
        result.end_reason(),
        pb::EndReason::RunnerLost,
        "{:?} {}",
        result.exit,
        result.stderr_text()
    );
    let message = &result.exit.as_ref().expect("exit").message;
    assert!(message.contains("runner"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let out = session
        .shell("for p in /proc/[0-9]*; do read -r c < $p/comm; [ \"$c\" = sleep ] && grep -q '^Uid:[[:space:]]*1000[[:space:]]' $p/status && echo alive; done; true")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "", "the run's sleep outlived it");
    session.release().await.expect("release");

    let session = server
        .client
        .acquire("runner-kill-all")
        .await
        .expect("acquire again");
    assert_eq!(path_of(&session).await, "runner");
    session.release().await.expect("release");
    server.stop().await;
}

/// The pid of the runner host: the `sandpool-runner` of root's.
const FIND_HOST: &str = "for p in /proc/[0-9]*; do read -r c < $p/comm; [ \"$c\" = sandpool-runner ] && \
     grep -q '^Uid:[[:space:]]*0[[:space:]]' $p/status && echo ${p#/proc/}; done; true";

/// The runner host, root's, is out of the sandbox user's reach: a run can
/// neither signal it nor read its memory, environment or descriptors; the
/// reset spares it (the same host serves the next lease), and the next
/// lease's runs are on a runner it started.
async fn host_out_of_reach(place: Place) {
    let (server, session, _k8s) = server_and_session(place, "runner-host").await;
    let host = session.shell(FIND_HOST).await.expect("run").stdout_text();
    let host = host.trim().to_string();
    assert!(
        !host.is_empty() && host.parse::<u32>().is_ok(),
        "one runner host: {host:?}"
    );
    let out = session
        .shell(&format!(
            "kill -9 {host}; kill -STOP {host}; cat /proc/{host}/environ; cat /proc/{host}/mem; \
             ls /proc/{host}/fd; echo done"
        ))
        .await
        .expect("run");
    let stderr = out.stderr_text();
    assert_eq!(out.stdout_text(), "done\n", "{stderr}");
    assert_eq!(
        stderr.matches("Operation not permitted").count(),
        2,
        "{stderr}"
    );
    assert_eq!(stderr.matches("Permission denied").count(), 3, "{stderr}");
    session.release().await.expect("release");
    let session = server
        .client
        .acquire("runner-host")
        .await
        .expect("acquire again");
    // The first run of a lease: the runner is up (the reset waits for it).
    assert_eq!(path_of(&session).await, "runner");
    let after = session.shell(FIND_HOST).await.expect("run").stdout_text();
    assert_eq!(after.trim(), host, "the reset spared the host");
    session.release().await.expect("release");
    server.stop().await;
}

/// A run that writes a junk frame into its runner's stream (exit 3 when it
/// cannot), then waits.
fn junk_writer() -> pb::RunRequest {
    shell_run(
        "echo before; sleep 0.2; for p in /proc/[0-9]*; do read -r c < $p/comm; \
         [ \"$c\" = sandpool-runner ] && grep -q '^Uid:[[:space:]]*1000[[:space:]]' $p/status && \
         { printf 'Zjunk' > $p/fd/1 || exit 3; }; done; sleep 30",
        60.0,
    )
}

/// A new lease of the kill test's pool, and its `junk_writer` run, which
/// printed "before" first.
async fn junk_on_a_new_lease(server: &TestServer) -> (Session, RunOutput) {
    let session = server
        .client
        .acquire("runner-kill-all")
        .await
        .expect("acquire again");
    let result = session
        .run_request(junk_writer())
        .await
        .expect("run starts")
        .collect()
        .await
        .expect("the run ends with an exit");
    assert_eq!(result.stdout_text(), "before\n");
    (session, result)
}

/// What a Python program sees of its interpreter, for comparing a run on
/// the runner (handed to the pre-started interpreter, the zygote) with a
/// fresh `python3` on the exec path. Every line must be the same on both.
const SAME_ON_BOTH: &str = r#"import threading
print(__name__, sys.argv, os.getcwd(), os.environ['GREETING'], repr(sys.stdin.read()))
print(sorted(sys.modules))
print(sys.path, sys.flags, sys.executable)
print(threading.active_count(), len(os.listdir('/proc/self/task')))
print(sorted(os.environ))
print(sys.stdout.line_buffering, sys.stdout.encoding, sys.stdin.encoding, sys.getfilesystemencoding())
print(os.getuid(), os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), os.umask(0o22))
print(os.stat(0).st_mode & 0o170000, sorted(globals()))
def fail():
    raise ValueError('boom')
fail()
"#;

/// What must differ from one run to the next, as between two fresh
/// processes (no state forked from a common parent), and whether the run
/// went through the zygote (its code is in the process's argv; the name is
/// split so that the run's own code, also in its argv, does not match).
const FRESH: &str = r#"import random
print(os.getpid(), hash('abc'), random.random(), ('_zy' + 'gote') in ' '.join(sys.orig_argv))
"#;

/// A Python run on the runner is handed to a pre-started interpreter (the
/// zygote) and cannot tell: it sees what a fresh `python3 main.py` on the
/// exec path sees (name, argv, cwd, env, stdin, modules, path, flags, one
/// thread, session, umask, traceback, exit code), and what must differ
/// between runs differs (pid, hash seed, random state). A signal ends it as
/// on the exec path. A run whose environment sets what Python reads at
/// start-up (PYTHONHASHSEED), or that comes after a library appeared in a
/// site directory, starts cold instead, and sees it.
async fn zygote_runs_as_a_fresh_interpreter(place: Place) {
    let (server, session, _k8s) = server_and_session(place, "runner-zygote").await;
    let request = RunOptions::new()
        .env("GREETING", "hello")
        .stdin("some input")
        .working_dir("/tmp")
        .request(format!("{WHICH_PATH_PY}{SAME_ON_BOTH}"));
    let zygote = on_runner(&session, request.clone()).await;
    let exec = on_exec(&session, request).await;
    assert!(
        zygote
            .stdout_text()
            .starts_with("__main__ ['main.py'] /tmp hello 'some input'\n"),
        "{}",
        zygote.stdout_text()
    );
    assert_eq!(zygote.stdout_text(), exec.stdout_text());
    assert_eq!(zygote.stderr_text(), exec.stderr_text());
    assert!(
        zygote
            .stderr_text()
            .contains("File \"main.py\", line 21, in fail"),
        "{}",
        zygote.stderr_text()
    );
    assert_eq!((zygote.exit_code(), exec.exit_code()), (1, 1));

    // Fresh per run, and through the zygote.
    let fresh = |out: RunOutput| -> Vec<String> {
        out.stdout_text()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let first = fresh(
        on_runner(
            &session,
            RunOptions::new().request(format!("{WHICH_PATH_PY}{FRESH}")),
        )
        .await,
    );
    let second = fresh(
        on_runner(
            &session,
            RunOptions::new().request(format!("{WHICH_PATH_PY}{FRESH}")),
        )
        .await,
    );
    assert_eq!(
        (first[3].as_str(), second[3].as_str()),
        ("True", "True"),
        "runs went through the zygote"
    );
    for (i, what) in ["pid", "hash seed", "random state"].iter().enumerate() {
        assert_ne!(first[i], second[i], "two runs share a {what}");
    }

    // A signal, as on the exec path.
    let out = on_runner(
        &session,
        RunOptions::new().request(format!(
            "{WHICH_PATH_PY}import signal\nos.kill(os.getpid(), signal.SIGTERM)"
        )),
    )
    .await;
    assert_eq!(out.end_reason(), pb::EndReason::Signaled, "{:?}", out.exit);
    assert_eq!(out.exit.as_ref().map(|e| e.signal), Some(15));

    // A start-up variable of the run's own: a cold start that honours it.
    let seeded = RunOptions::new()
        .env("PYTHONHASHSEED", "0")
        .request(format!("{WHICH_PATH_PY}{FRESH}"));
    let a = fresh(on_runner(&session, seeded.clone()).await);
    let b = fresh(on_runner(&session, seeded.clone()).await);
    let c = fresh(on_exec(&session, seeded).await);
    assert_eq!(a[3], "False", "a run with PYTHONHASHSEED started cold");
    assert_eq!(
        (&a[1], &b[1]),
        (&c[1], &c[1]),
        "PYTHONHASHSEED=0 gives the same hash everywhere"
    );

    // A module that appears in the user site directory after the zygote
    // started (written by what a run left behind, a second after it ended;
    // the next zygote starts meanwhile): the zygote could not see it, so
    // the run starts cold. Whether that zygote was up before the module
    // appeared is up to timing: the run tells (its process, the zygote's,
    // is older than the file), and the scenario is tried again until it was.
    let site = on_runner(
        &session,
        RunOptions::new().request(format!(
            "{WHICH_PATH_PY}import site\nprint(site.getusersitepackages())"
        )),
    )
    .await;
    let site = site.stdout_text().trim().to_string();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts <= 5,
            "the zygote was never up before the module appeared"
        );
        let module = format!("late{attempts}");
        let later = format!(
            "{WHICH_PATH_PY}import subprocess\n\
             subprocess.Popen(['sh', '-c', 'sleep 1; mkdir -p {site}; echo VALUE = 7 > {site}/{module}.py'], \
             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)"
        );
        on_runner(&session, RunOptions::new().request(later)).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let code = format!(
            "{WHICH_PATH_PY}import {module}, time\n\
             ticks = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19])\n\
             age = float(open('/proc/uptime').read().split()[0]) - ticks / os.sysconf('SC_CLK_TCK')\n\
             older = age > time.time() - os.stat({module}.__file__).st_mtime + 0.05\n\
             print({module}.VALUE, older, ('_zy' + 'gote') in ' '.join(sys.orig_argv))"
        );
        let words = fresh(on_runner(&session, RunOptions::new().request(code)).await);
        assert_eq!(
            words.first().map(String::as_str),
            Some("7"),
            "the module is not importable: {words:?}"
        );
        if words[1] == "True" {
            assert_eq!(
                words[2], "False",
                "the zygote took a run after its site directory changed"
            );
            break;
        }
    }
    session.release().await.expect("release");
    server.stop().await;
}

/// The runner is the server's default; a pool may turn it off (every run
/// an engine exec) and says which it does; a config-file pool likewise; a
/// server with it off leaves a pool that asks for it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_chooses_its_path() {
    let text = format!(
        "[[pools]]\nname = \"file-exec\"\nlanguage = \"python\"\nimage = {:?}\n\
         min_pool_size = 1\nmax_pool_size = 1\nresident_runner = false\n",
        sandpool_tests::python_image()
    );
    let mut config =
        ServerConfig::from_toml(&text, std::path::Path::new("<test>")).expect("config");
    assert!(config.resident_runner, "on by default");
    let defaults = empty_config();
    config.server_id = defaults.server_id;
    config.shutdown_grace = defaults.shutdown_grace;
    config.policy = defaults.policy;
    let server = TestServer::start_with(config).await;

    let default = server
        .pool(one_container(python_pool("path-default")))
        .await;
    let mut off = one_container(python_pool("path-off"));
    off.resident_runner = Some(false);
    let off = server.pool(off).await;
    let spec_of = |p: &pb::Pool| p.spec.as_ref().expect("spec").resident_runner;
    assert_eq!(spec_of(&default), Some(true));
    assert_eq!(spec_of(&off), Some(false));

    let session = server
        .client
        .acquire("path-default")
        .await
        .expect("acquire");
    assert_eq!(path_of(&session).await, "runner");
    session.release().await.expect("release");
    server.wait_idle("file-exec").await;
    for pool in ["path-off", "file-exec"] {
        let session = server.client.acquire(pool).await.expect("acquire");
        // Every run, not only the first: no runner comes later either.
        for _ in 0..3 {
            assert_eq!(path_of(&session).await, "exec", "{pool}");
        }
        session.release().await.expect("release");
    }
    let file = server.client.get_pool("file-exec").await.expect("get pool");
    assert_eq!(spec_of(&file), Some(false));
    // gVisor pools take the exec path unless they ask (see the pool
    // manager's `create_pool`); asked, their runs go through the runner.
    if sandpool_tests::runsc_available() {
        let mut gvisor = one_container(python_pool("path-gvisor"));
        gvisor
            .runtime
            .get_or_insert_with(Default::default)
            .oci_runtime = Some("runsc".into());
        assert_eq!(spec_of(&server.pool(gvisor.clone()).await), Some(false));
        gvisor.name = "path-gvisor-runner".into();
        gvisor.resident_runner = Some(true);
        assert_eq!(spec_of(&server.pool(gvisor).await), Some(true));
        let session = server
            .client
            .acquire("path-gvisor-runner")
            .await
            .expect("acquire");
        let mut paths = Vec::new();
        for _ in 0..3 {
            paths.push(path_of(&session).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(paths.iter().any(|p| p == "runner"), "{paths:?}");
        session.release().await.expect("release");
    }
    server.stop().await;

    // A server with the runner off: a pool may still ask for it.
    let mut config = empty_config();
    config.resident_runner = false;
    let server = TestServer::start_with(config).await;
    let plain = server.pool(one_container(python_pool("path-plain"))).await;
    let mut on = one_container(python_pool("path-on"));
    on.resident_runner = Some(true);
    server.pool(on).await;
    assert_eq!(spec_of(&plain), Some(false));
    let session = server.client.acquire("path-plain").await.expect("acquire");
    assert_eq!(path_of(&session).await, "exec");
    session.release().await.expect("release");
    let session = server.client.acquire("path-on").await.expect("acquire");
    assert_eq!(path_of(&session).await, "runner");
    session.release().await.expect("release");
    server.stop().await;
}

/// The engine execs created in a container from `since` (unix seconds) to
/// now, as the engine's own event log counts them.
fn execs_since(container: &str, since: f64) -> usize {
    let until = unix_now();
    sandpool_tests::docker_cli(&[
        "events",
        "--since",
        &format!("{since:.3}"),
        "--until",
        &format!("{until:.3}"),
        "--filter",
        &format!("container={container}"),
        "--filter",
        "event=exec_create",
        "--format",
        "{{.ID}}",
    ])
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A lease that runs once and is released costs no engine exec: the run
/// is the runner's, the reset the warden's, and the fresh runner after it
/// a fork of the runner host. The runner's replacement after the run waits,
/// and the release came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_once_costs_no_engine_exec() {
    let mut config = empty_config();
    config.resident_runner = true;
    let server = TestServer::start_with(config).await;
    server.pool(one_container(python_pool("one-exec"))).await;
    let container = sandpool_tests::containers_of(&server.server_id)
        .await
        .pop()
        .expect("one container");
    for round in 0..3 {
        let since = unix_now();
        let session = server.client.acquire("one-exec").await.expect("acquire");
        assert_eq!(path_of(&session).await, "runner", "round {round}");
        session.release().await.expect("release");
        server.wait_idle("one-exec").await;
        // Past the replacement's delay: one scheduled by the run would have
        // started by now.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(execs_since(&container, since), 0, "round {round}");
    }
    // A lease that is still held after its run gets its runner back, and
    // its next run takes it.
    let session = server.client.acquire("one-exec").await.expect("acquire");
    assert_eq!(path_of(&session).await, "runner");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(path_of(&session).await, "runner");
    session.release().await.expect("release");
    server.stop().await;
}

/// Idle health checks of a pool on the runner need no engine exec (the
/// runner's liveness and a warden ping); a pool on the exec path still
/// checks its toolchain by exec, which shows the checks did run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_health_checks_on_the_runner_need_no_engine_exec() {
    let mut config = empty_config();
    config.resident_runner = true;
    let server = TestServer::start_with(config).await;
    let checked_every_second = |name: &str, runner: bool| {
        let mut spec = one_container(python_pool(name));
        spec.resident_runner = Some(runner);
        spec.config.as_mut().expect("config").health_check_interval = sandpool_tests::secs(1.0);
        spec
    };
    server
        .pool(checked_every_second("health-runner", true))
        .await;
    let on_runner = sandpool_tests::containers_of(&server.server_id)
        .await
        .pop()
        .expect("one container");
    server
        .pool(checked_every_second("health-exec", false))
        .await;
    let on_exec = sandpool_tests::containers_of(&server.server_id)
        .await
        .into_iter()
        .find(|c| *c != on_runner)
        .expect("a second container");
    let since = unix_now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        execs_since(&on_exec, since) >= 2,
        "the exec-path pool's health checks ran no exec"
    );
    assert_eq!(execs_since(&on_runner, since), 0, "health checks by exec");
    for pool in ["health-runner", "health-exec"] {
        let stats = server.stats(pool).await;
        assert_eq!(stats.counters.expect("counters").health_failures, 0);
        assert_eq!(stats.state_counts.expect("states").idle, 1, "{pool}");
    }
    server.stop().await;
}

/// A pool that preloads numpy: a run on the zygote finds it imported
/// already (and imports it again for nothing), yet is a fresh process: its
/// numpy random state, pid and hash seed are its own, its name, argv and
/// cwd a fresh program's, and it has the threads a cold `import numpy`
/// gives (OpenBLAS's pool), no more. A run whose environment differs from
/// the pool's (a variable numpy reads at import) starts cold and honours
/// it. A module that cannot be imported sends every run cold, and runs
/// still work. Preload is refused where it cannot work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_preloads_modules_into_its_zygote() {
    let mut config = empty_config();
    config.resident_runner = true;
    let server = TestServer::start_with(config).await;
    let mut spec = one_container(Engine::Docker.python_pool("preload"));
    spec.preload = vec!["numpy".into()];
    server.pool(spec).await;
    let session = server.client.acquire("preload").await.expect("acquire");
    const PROBE: &str = r#"import sys
preloaded = 'numpy' in sys.modules
import numpy, os, random
print(preloaded, __name__, sys.argv, os.getcwd(), ('_zy' + 'gote') in ' '.join(sys.orig_argv))
print(os.getpid(), hash('abc'), random.random(), numpy.random.random())
print(len(os.listdir('/proc/self/task')))
"#;
    let run = |env: Option<(&str, &str)>| {
        let mut options = RunOptions::new().working_dir("/tmp");
        if let Some((k, v)) = env {
            options = options.env(k, v);
        }
        options.request(format!("{WHICH_PATH_PY}{PROBE}"))
    };
    let lines = |out: &RunOutput| -> Vec<String> {
        assert_eq!(out.exit_code(), 0, "{}", out.stderr_text());
        out.stdout_text().lines().map(str::to_string).collect()
    };
    let first = lines(&on_runner(&session, run(None)).await);
    let second = lines(&on_runner(&session, run(None)).await);
    let cold = lines(&on_exec(&session, run(None)).await);
    assert_eq!(
        first[0], "True __main__ ['main.py'] /tmp True",
        "a run on the zygote finds numpy imported"
    );
    assert_eq!(cold[0], "False __main__ ['main.py'] /tmp False");
    let (a, b): (Vec<&str>, Vec<&str>) = (
        first[1].split(' ').collect(),
        second[1].split(' ').collect(),
    );
    for (i, what) in ["pid", "hash seed", "random state", "numpy random state"]
        .iter()
        .enumerate()
    {
        assert_ne!(a[i], b[i], "two runs share a {what}");
    }
    assert_eq!(
        first[2], cold[2],
        "threads after import numpy: preloaded against cold"
    );

    // numpy reads OPENBLAS_NUM_THREADS at import: a run that sets it
    // starts cold, with one thread.
    let one_thread = lines(&on_runner(&session, run(Some(("OPENBLAS_NUM_THREADS", "1")))).await);
    assert_eq!(one_thread[0], "False __main__ ['main.py'] /tmp False");
    assert_eq!(one_thread[2], "1", "OPENBLAS_NUM_THREADS=1 honoured");
    session.release().await.expect("release");

    // A module that is not there: every run cold, and fine.
    let mut spec = one_container(Engine::Docker.python_pool("preload-missing"));
    spec.preload = vec!["numpy".into(), "no_such_module_here".into()];
    server.pool(spec).await;
    let session = server
        .client
        .acquire("preload-missing")
        .await
        .expect("acquire");
    for _ in 0..2 {
        let out = lines(&on_runner(&session, run(None)).await);
        assert_eq!(out[0], "False __main__ ['main.py'] /tmp False");
    }
    session.release().await.expect("release");

    // Refused: not a module name, a language without an interpreter to
    // preload into, a pool without the runner.
    let refused = |spec: pb::PoolSpec| async {
        let err = server
            .client
            .create_pool(spec, false)
            .await
            .expect_err("created");
        let status = err.status().expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    };
    let mut bad = Engine::Docker.python_pool("preload-bad");
    bad.preload = vec!["os; import shutil".into()];
    let message = refused(bad.clone()).await;
    assert!(message.contains("preload[0]"), "{message}");
    bad.preload = vec!["numpy".into()];
    bad.language = "bash".into();
    bad.image = String::new();
    let message = refused(bad.clone()).await;
    assert!(message.contains("pre-started interpreter"), "{message}");
    bad.language = "python".into();
    bad.resident_runner = Some(false);
    let message = refused(bad).await;
    assert!(message.contains("resident_runner"), "{message}");
    server.stop().await;
}

fn one_container(mut spec: pb::PoolSpec) -> pb::PoolSpec {
    let config = spec.config.as_mut().expect("config");
    config.min_pool_size = Some(1);
    config.max_pool_size = Some(1);
    spec
}

/// Each case on Docker, on Podman, and on Kubernetes.
macro_rules! on_every_backend {
    ($case:ident => $docker:ident, $podman:ident, $kubernetes:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $docker() {
            $case(Place::Engine(Engine::Docker)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $podman() {
            if let Some(engine) = Engine::Podman.available() {
                $case(Place::Engine(engine)).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $kubernetes() {
            $case(Place::Kubernetes).await;
        }
    };
}

on_every_backend!(
    host_out_of_reach =>
    docker_the_runner_host_is_out_of_the_sandbox_users_reach,
    podman_the_runner_host_is_out_of_the_sandbox_users_reach,
    kubernetes_the_runner_host_is_out_of_the_sandbox_users_reach
);
on_every_backend!(
    behaves_as_exec =>
    docker_runs_on_the_runner_behave_as_on_exec,
    podman_runs_on_the_runner_behave_as_on_exec,
    kubernetes_runs_on_the_runner_behave_as_on_exec
);
on_every_backend!(
    timeout_then_fresh_runner =>
    docker_a_timeout_takes_the_runner_and_the_reset_brings_it_back,
    podman_a_timeout_takes_the_runner_and_the_reset_brings_it_back,
    kubernetes_a_timeout_takes_the_runner_and_the_reset_brings_it_back
);
on_every_backend!(
    kill_everything =>
    docker_kill_everything_and_junk_frames_end_the_run,
    podman_kill_everything_and_junk_frames_end_the_run,
    kubernetes_kill_everything_and_junk_frames_end_the_run
);
on_every_backend!(
    zygote_runs_as_a_fresh_interpreter =>
    docker_a_python_run_on_the_zygote_is_a_fresh_interpreter,
    podman_a_python_run_on_the_zygote_is_a_fresh_interpreter,
    kubernetes_a_python_run_on_the_zygote_is_a_fresh_interpreter
);
