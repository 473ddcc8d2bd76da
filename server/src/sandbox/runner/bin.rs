//! sandpool-runner: the resident runner inside a warm container (see
//! `sandbox::runner` for why it exists and why it is this binary). Built by
//! the server's build.rs with rustc alone, statically linked, std only.
//!
//! It reads frames from standard input, starts one program per `RUN` frame
//! (as itself: the sandbox user, its group; in a session of its own; with
//! its own environment plus the run's), forwards `STDIN` frames to the
//! program, sends its output back as it comes, and its exit status once
//! the program has exited and its output has ended (as an engine exec
//! ends). Standard input at EOF: it exits. One run at a time.

#[path = "protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::{
    ffi::{OsStr, OsString},
    io::{self, Read, Write},
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        process::{CommandExt, ExitStatusExt},
    },
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
};

use protocol::*;

unsafe extern "C" {
    fn setsid() -> i32;
}

type Out = Arc<Mutex<io::Stdout>>;

fn send(out: &Out, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
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

/// Copies a pipe of the program to the server as `kind` frames.
fn pump(mut from: impl Read, kind: u8, out: Out) {
    let mut buf = vec![0u8; MAX_OUTPUT_FRAME];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if send(&out, kind, &buf[..n]).is_err() {
                    std::process::exit(0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Starts a run; returns where its standard input goes.
fn start(
    request: Request,
    base: &[(OsString, OsString)],
    out: &Out,
) -> Option<mpsc::Sender<Option<Vec<u8>>>> {
    let argv: Vec<OsString> = request.argv.into_iter().map(OsString::from_vec).collect();
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(environment(base, &request.env))
        .current_dir(OsStr::from_bytes(&request.working_dir))
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A session of its own, as an engine exec's process has: a program
    // that signals its process group does not hit the runner.
    unsafe {
        command.pre_exec(|| {
            setsid();
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            // What the engines answer for a program that cannot start.
            let code: i32 = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("exec {}: {e}\n", argv[0].to_string_lossy());
            let _ = send(out, STDERR, message.as_bytes());
            let _ = send(out, EXIT, &code.to_be_bytes());
            return None;
        }
    };
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
    let out = Arc::clone(out);
    thread::spawn(move || {
        let readers: Vec<_> = [
            (stdout.map(|s| Box::new(s) as Box<dyn Read + Send>), STDOUT),
            (stderr.map(|s| Box::new(s) as Box<dyn Read + Send>), STDERR),
        ]
        .into_iter()
        .filter_map(|(pipe, kind)| {
            let out = Arc::clone(&out);
            pipe.map(|p| thread::spawn(move || pump(p, kind, out)))
        })
        .collect();
        for reader in readers {
            let _ = reader.join();
        }
        let code = match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(_) => -1,
        };
        if send(&out, EXIT, &code.to_be_bytes()).is_err() {
            std::process::exit(0);
        }
    });
    Some(tx)
}

fn main() {
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    if send(&out, HELLO, VERSION).is_err() {
        return;
    }
    let mut input = io::stdin().lock();
    let mut stdin: Option<mpsc::Sender<Option<Vec<u8>>>> = None;
    while let Some((kind, payload)) = read_frame(&mut input) {
        match kind {
            RUN => match Request::decode(&payload) {
                Some(request) => stdin = start(request, &base, &out),
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
