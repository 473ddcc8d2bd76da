//! sandpool-runner: the resident runner inside a warm container (see
//! `sandbox::runner` for why it exists and why it is this binary). Built by
//! the server's build.rs with rustc alone, statically linked, std only.
//!
//! It reads frames from standard input, starts one program per `RUN` frame
//! (as itself: the sandbox user, its group; in a session of its own; with
//! its own environment plus the run's), forwards `STDIN` frames to the
//! program, sends its output back as it comes, and its exit status once
//! the program has exited and its output has ended, or its pipes stayed
//! empty a moment while something it left behind holds them (an engine
//! exec ends at the program's exit too). Standard input at EOF: it exits. One run at a time. A `PREPARE`
//! frame starts a program ahead of the run (a pre-started interpreter) that
//! the next `RUN` is handed to (see `protocol`); if it is gone by then, the
//! run starts cold.

#[path = "drain.rs"]
mod drain;
#[path = "protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::{
    ffi::{OsStr, OsString},
    io::{self, PipeWriter, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd, RawFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            process::{CommandExt, ExitStatusExt},
        },
    },
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use drain::{BUSY, ENDED, READING, drain};
use protocol::*;

unsafe extern "C" {
    fn setsid() -> i32;
    fn dup2(old: i32, new: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn setgroups(size: usize, list: *const u32) -> i32;
    fn setgid(gid: u32) -> i32;
    fn setuid(uid: u32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// prctl's "drop a capability from the bounding set" (Linux).
const PR_CAPBSET_DROP: i32 = 24;
/// Above every capability a kernel knows (41 in 2024): dropping an unknown
/// one fails harmlessly.
const CAPABILITIES: u64 = 64;

/// Where a prepared program reads its run's request.
const CONTROL_FD: RawFd = 3;
/// fcntl's "set the descriptor flags" (Linux).
const F_SETFD: i32 = 2;

type Out = Arc<Mutex<io::Stdout>>;

fn send(out: &Out, kind: u8, payload: &[u8]) -> io::Result<()> {
    write_frame(
        &mut out.lock().unwrap_or_else(|e| e.into_inner()),
        kind,
        payload,
    )
}

/// One frame to the server, under the caller's lock of `out`.
fn write_frame(out: &mut io::Stdout, kind: u8, payload: &[u8]) -> io::Result<()> {
    out.write_all(&header(kind, payload.len()))?;
    out.write_all(payload)?;
    out.flush()
}

/// The next frame, `None` at EOF (or a broken frame: the server is gone or
/// confused; either way the runner is done).
fn read_frame(input: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; HEADER];
    input.read_exact(&mut head).ok()?;
    let len = payload_len(&head);
    if len > MAX_REQUEST_FRAME {
        return None;
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).ok()?;
    Some((head[0], payload))
}

/// The runner's environment with the run's entries replacing or added.
fn environment(base: &[(OsString, OsString)], extra: &[Vec<u8>]) -> Vec<(OsString, OsString)> {
    let mut env = base.to_vec();
    for kv in extra {
        let Some(eq) = kv.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = OsStr::from_bytes(&kv[..eq]).to_os_string();
        let value = OsStr::from_bytes(&kv[eq + 1..]).to_os_string();
        match env.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => env.push((key, value)),
        }
    }
    env
}

/// One run's output to the server; nothing of the run follows its exit.
struct RunOutput {
    out: Out,
    exited: AtomicBool,
}

impl RunOutput {
    /// Sends a frame of the run, unless its exit was sent already.
    fn send(&self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if self.exited.load(Ordering::SeqCst) {
            return Ok(());
        }
        if kind == EXIT {
            self.exited.store(true, Ordering::SeqCst);
        }
        write_frame(&mut out, kind, payload)
    }
}

/// Copies a pipe of the program to the server as `kind` frames; `state`
/// says whether it waits for the pipe.
fn pump(mut from: impl Read, kind: u8, run: &RunOutput, state: &AtomicU8, ended: mpsc::Sender<()>) {
    let mut buf = vec![0u8; MAX_OUTPUT_FRAME];
    loop {
        state.store(READING, Ordering::SeqCst);
        let read = from.read(&mut buf);
        state.store(BUSY, Ordering::SeqCst);
        match read {
            Ok(0) => break,
            Ok(n) => {
                if run.send(kind, &buf[..n]).is_err() {
                    std::process::exit(0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    state.store(ENDED, Ordering::SeqCst);
    let _ = ended.send(());
}

/// The same program line as `argv` would be on the exec path: argv, the
/// runner's environment with `env` on top, a working directory, and a
/// session of its own (as an engine exec's process has: a program that
/// signals its process group does not hit the runner). `control`, if any,
/// becomes the program's descriptor 3.
fn command(
    argv: &[OsString],
    base: &[(OsString, OsString)],
    env: &[Vec<u8>],
    working_dir: &[u8],
    stdin: Stdio,
    control: Option<RawFd>,
) -> Command {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(environment(base, env))
        .current_dir(OsStr::from_bytes(working_dir))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    unsafe {
        command.pre_exec(move || {
            setsid();
            if let Some(fd) = control {
                // dup2 onto itself would keep close-on-exec set.
                let placed = if fd == CONTROL_FD {
                    fcntl(CONTROL_FD, F_SETFD, 0)
                } else {
                    dup2(fd, CONTROL_FD)
                };
                if placed < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// What the engines answer for a program that cannot start.
fn failed_to_start(out: &Out, argv0: &OsStr, e: &io::Error) {
    let code: i32 = if e.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    let message = format!("exec {}: {e}\n", argv0.to_string_lossy());
    let _ = send(out, STDERR, message.as_bytes());
    let _ = send(out, EXIT, &code.to_be_bytes());
}

/// Starts a run cold; returns where its standard input goes.
fn start(
    request: Request,
    base: &[(OsString, OsString)],
    out: &Out,
) -> Option<mpsc::Sender<Option<Vec<u8>>>> {
    let argv: Vec<OsString> = request.argv.into_iter().map(OsString::from_vec).collect();
    let stdin = if request.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    match command(&argv, base, &request.env, &request.working_dir, stdin, None).spawn() {
        Ok(child) => Some(serve(child, out)),
        Err(e) => {
            failed_to_start(out, &argv[0], &e);
            None
        }
    }
}

/// A program started ahead of its run (`PREPARE`), waiting for the run's
/// request on its descriptor 3.
struct Prepared {
    child: Child,
    control: PipeWriter,
}

/// Starts the program of a `PREPARE`; `None` if it cannot start (runs then
/// start cold).
fn prepare(request: Request, base: &[(OsString, OsString)]) -> Option<Prepared> {
    let argv: Vec<OsString> = request.argv.into_iter().map(OsString::from_vec).collect();
    let (reader, control) = io::pipe().ok()?;
    let child = command(
        &argv,
        base,
        &request.env,
        &request.working_dir,
        Stdio::piped(),
        Some(reader.as_raw_fd()),
    )
    .spawn()
    .ok()?;
    drop(reader);
    Some(Prepared { child, control })
}

/// Hands a run to the prepared program: its request, with the whole
/// environment, on the program's descriptor 3. Gives the program back if
/// it is gone (the run then starts cold).
fn hand_over(
    mut prepared: Prepared,
    request: &Request,
    base: &[(OsString, OsString)],
    out: &Out,
) -> Result<mpsc::Sender<Option<Vec<u8>>>, ()> {
    let whole = Request {
        env: environment(base, &request.env)
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                kv
            })
            .collect(),
        ..request.clone()
    };
    if prepared.control.write_all(&whole.encode()).is_err() {
        let _ = prepared.child.kill();
        let _ = prepared.child.wait();
        return Err(());
    }
    drop(prepared.control);
    if !request.stdin {
        // The program reads /dev/null instead (it reopens its stdin).
        drop(prepared.child.stdin.take());
    }
    Ok(serve(prepared.child, out))
}

/// Forwards a started program's input and output; sends its exit status
/// once it exited and its output ended. Returns where its standard input
/// goes.
fn serve(mut child: Child, out: &Out) -> mpsc::Sender<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    if let Some(mut stdin) = child.stdin.take() {
        // Its own thread: a program that does not read must not stop the
        // runner from reading frames.
        thread::spawn(move || {
            while let Ok(Some(data)) = rx.recv() {
                if stdin.write_all(&data).is_err() {
                    return;
                }
            }
        });
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = Arc::new(RunOutput {
        out: Arc::clone(out),
        exited: AtomicBool::new(false),
    });
    thread::spawn(move || {
        let (ended_tx, ended) = mpsc::channel();
        // Each pump with a duplicate of its pipe, for `drain` to look at.
        let watched = |pipe: &dyn AsFd| pipe.as_fd().try_clone_to_owned().ok();
        let pumps: Vec<(Arc<AtomicU8>, Option<OwnedFd>)> = [
            stdout.map(|s| (watched(&s), Box::new(s) as Box<dyn Read + Send>, STDOUT)),
            stderr.map(|s| (watched(&s), Box::new(s) as Box<dyn Read + Send>, STDERR)),
        ]
        .into_iter()
        .flatten()
        .map(|(watch, pipe, kind)| {
            let state = Arc::new(AtomicU8::new(READING));
            let (run, mine, ended) = (Arc::clone(&run), Arc::clone(&state), ended_tx.clone());
            thread::spawn(move || pump(pipe, kind, &run, &mine, ended));
            (state, watch)
        })
        .collect();
        let code = match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(_) => -1,
        };
        drain(&pumps, &ended);
        if run.send(EXIT, &code.to_be_bytes()).is_err() {
            std::process::exit(0);
        }
    });
    tx
}

/// Starts a runner of a `SPAWN`: as the sandbox user and the run group the
/// server named (set in the child before the exec; the host's CAP_SETUID
/// and CAP_SETGID go with the setuid, its bounding set before it), in a
/// session of its own, with
/// exactly the environment the server sent (what an engine exec as that
/// user gets), its stderr discarded as the server discards an exec's.
fn spawn_runner(spawn: Spawn) -> io::Result<Child> {
    let Spawn {
        uid,
        gid,
        groups,
        request,
    } = spawn;
    let argv: Vec<OsString> = request.argv.into_iter().map(OsString::from_vec).collect();
    // A run's program line, with none of the host's environment (it sends
    // the whole of it), its stderr discarded.
    let mut command = command(
        &argv,
        &[],
        &request.env,
        &request.working_dir,
        Stdio::piped(),
        None,
    );
    command.stderr(Stdio::null());
    unsafe {
        // After `command`'s own (the session): the last thing before the
        // exec, dropping root.
        command.pre_exec(move || {
            // The runner and its programs get the bounding set an engine
            // exec of the sandbox user gets: none of the host's (where the
            // engine gives the server's execs their own, gVisor and Podman).
            // Without CAP_SETPCAP (an engine that keeps the helper's
            // capabilities in the container's bounding set) the drops fail
            // and the set stays the container's, which is the exec's too.
            for cap in 0..CAPABILITIES {
                prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if setgroups(groups.len(), groups.as_ptr()) != 0
                || setgid(gid) != 0
                || setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Copies one runner's stream to the server as `RELAY` frames while it is
/// the current one (`current` holds the generation whose stream goes out),
/// then says it ended; reaps it either way.
fn relay(mut child: Child, generation: u64, current: Arc<AtomicU64>, out: Out) {
    let Some(mut from) = child.stdout.take() else {
        return;
    };
    let mut buf = vec![0u8; MAX_OUTPUT_FRAME];
    let still_current = |out: &mut io::Stdout, kind: u8, payload: &[u8]| -> bool {
        if current.load(Ordering::SeqCst) != generation {
            return false;
        }
        if write_frame(out, kind, payload).is_err() {
            // The server is gone.
            std::process::exit(0);
        }
        true
    };
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                if !still_current(&mut o, RELAY, &buf[..n]) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(from);
    {
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        still_current(&mut o, RUNNER_ENDED, &[]);
    }
    let _ = child.wait();
}

/// The runner host (`--host`): started once per container by the server's
/// own exec, as root with CAP_SETUID and CAP_SETGID only, a fixed
/// environment and no other capability, and spared by the reset. Each
/// `SPAWN` starts a fresh runner (a fork, where an engine exec would cost
/// the engine a process of its own and a round trip), whose stream it
/// relays; the earlier runner's standard input closes, so it exits. The
/// sandbox user can neither signal nor trace it (another uid). Exits when
/// its standard input ends (the server went away), and its runners with it.
fn host() {
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    let mut hello = HOST_VERSION.to_vec();
    hello.extend_from_slice(format!(" {}", std::process::id()).as_bytes());
    if send(&out, HELLO, &hello).is_err() {
        return;
    }
    let current = Arc::new(AtomicU64::new(0));
    let mut generation = 0u64;
    // The current runner's standard input, written by a thread of its own:
    // a runner that stops reading (its program stopped it) must not stop
    // the host.
    let mut to_runner: Option<mpsc::Sender<Vec<u8>>> = None;
    let mut input = io::stdin().lock();
    while let Some((kind, payload)) = read_frame(&mut input) {
        match kind {
            SPAWN => {
                to_runner = None;
                generation += 1;
                let spawned = match Spawn::decode(&payload) {
                    Some(spawn) => spawn_runner(spawn),
                    None => return,
                };
                // Under the lock, so that nothing of an earlier runner
                // follows the answer.
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                current.store(generation, Ordering::SeqCst);
                let sent = match spawned {
                    Ok(mut child) => {
                        let answer = write_frame(&mut o, SPAWNED, &child.id().to_be_bytes());
                        if let Some(mut stdin) = child.stdin.take() {
                            let (tx, rx) = mpsc::channel::<Vec<u8>>();
                            thread::spawn(move || {
                                while let Ok(data) = rx.recv() {
                                    if stdin.write_all(&data).is_err() {
                                        return;
                                    }
                                }
                            });
                            to_runner = Some(tx);
                        }
                        let (current, out) = (Arc::clone(&current), Arc::clone(&out));
                        thread::spawn(move || relay(child, generation, current, out));
                        answer
                    }
                    Err(e) => write_frame(&mut o, SPAWN_FAILED, e.to_string().as_bytes()),
                };
                if sent.is_err() {
                    return;
                }
            }
            RELAY => {
                if let Some(tx) = &to_runner {
                    let _ = tx.send(payload);
                }
            }
            _ => return,
        }
    }
}

fn main() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("--host")) {
        host();
        return;
    }
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    if send(&out, HELLO, VERSION).is_err() {
        return;
    }
    let mut input = io::stdin().lock();
    let mut stdin: Option<mpsc::Sender<Option<Vec<u8>>>> = None;
    let mut prepared: Option<Prepared> = None;
    while let Some((kind, payload)) = read_frame(&mut input) {
        match kind {
            PREPARE => match Request::decode(&payload) {
                Some(request) => prepared = prepare(request, &base),
                None => return,
            },
            RUN => match Request::decode(&payload) {
                Some(request) => {
                    let handed = match prepared.take() {
                        Some(p) => hand_over(p, &request, &base, &out).ok(),
                        None => None,
                    };
                    stdin = match handed {
                        Some(tx) => Some(tx),
                        None => start(request, &base, &out),
                    };
                }
                None => return,
            },
            STDIN => {
                if let Some(tx) = &stdin {
                    let _ = tx.send(Some(payload));
                }
            }
            STDIN_END => {
                // Dropping the sender ends the writer thread, which closes
                // the program's stdin.
                stdin = None;
            }
            _ => return,
        }
    }
}
