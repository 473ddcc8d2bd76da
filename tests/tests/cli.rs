//! The `sandpool` command line against a live server.

use std::process::Command;

use sandpool_tests::{TestServer, python_pool, workspace_binary};

fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("sandpool"))
        .env("SANDPOOL_ADDR", server.addr.to_string())
        .args(args)
        .output()
        .expect("run the cli")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pools_and_stats() {
    let server = TestServer::start().await;
    server.pool(python_pool("python")).await;
    let out = tokio::task::spawn_blocking({
        let addr = server.addr;
        move || {
            Command::new(workspace_binary("sandpool"))
                .env("SANDPOOL_ADDR", addr.to_string())
                .args([
                    "run",
                    "--pool",
                    "python",
                    "import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)",
                ])
                .output()
                .expect("cli")
        }
    })
    .await
    .expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));

    let out = cli(&server, &["run", "--timeout", "1", "while True: pass"]);
    assert_eq!(out.status.code(), Some(124), "timeout exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));

    let out = cli(&server, &["pools"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("python") && text.contains("READY"), "{text}");
    let out = cli(&server, &["stats", "python"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("acquisitions 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = cli(
        &server,
        &[
            "create-pool",
            "extra",
            "--language",
            "python",
            "--min",
            "0",
            "--max",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&server, &["delete-pool", "extra", "--wait"]);
    assert!(out.status.success());
    // --backend and --namespace reach the server: a Docker pool has no
    // namespace, and the server says which field is wrong.
    let out = cli(
        &server,
        &[
            "create-pool",
            "ns",
            "--backend",
            "docker",
            "--namespace",
            "team-a",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid namespace"), "{stderr}");
    let out = cli(&server, &["create-pool", "ns", "--backend", "lxc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend"));
    let out = cli(&server, &["run", "--pool", "nope", "print(1)"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    server.stop().await;
}

/// `sandpool shell` on a real pseudo-terminal, as a person at a keyboard
/// has it: the sandbox's terminal has this one's size and follows its
/// resizes, Ctrl-C interrupts the sandbox's foreground job, the exit code is
/// the shell's, and this terminal leaves raw mode again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_is_an_interactive_terminal() {
    let server = TestServer::start().await;
    server.pool(python_pool("python")).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || pty::shell_session(addr))
        .await
        .expect("the terminal session");
    server.stop().await;
}

mod pty {
    use std::{
        io::{Read, Write},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
        os::unix::process::CommandExt,
        process::{Command, Stdio},
        sync::mpsc,
        time::{Duration, Instant},
    };

    use sandpool_tests::workspace_binary;

    fn winsize(rows: u16, cols: u16) -> libc::winsize {
        libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }

    /// Reads from the terminal until `needle` appeared.
    fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut String, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("{needle:?} did not come; the terminal showed {seen:?}"),
            }
        }
    }

    pub fn shell_session(addr: std::net::SocketAddr) {
        let (mut master_fd, mut slave_fd) = (-1, -1);
        let size = winsize(24, 80);
        // SAFETY: openpty fills two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are fresh and ours.
        let (master, slave) = unsafe {
            (
                OwnedFd::from_raw_fd(master_fd),
                OwnedFd::from_raw_fd(slave_fd),
            )
        };
        let mut command = Command::new(workspace_binary("sandpool"));
        command
            .env("SANDPOOL_ADDR", addr.to_string())
            .args([
                "shell",
                "python",
                "--",
                "bash",
                "--norc",
                "--noprofile",
                "-i",
            ])
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave.try_clone().expect("dup")));
        // SAFETY: between fork and exec only async-signal-safe calls: a
        // session of its own with the terminal as its controlling one, so
        // that a resize sends it SIGWINCH as a shell's child gets.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start sandpool shell");
        let mut reader = std::fs::File::from(master.try_clone().expect("dup"));
        let mut writer = std::fs::File::from(master.try_clone().expect("dup"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let mut seen = String::new();
        writer.write_all(b"stty size; tty\r").expect("type");
        read_until(&rx, &mut seen, "24 80");
        read_until(&rx, &mut seen, "/dev/pts/");
        // SAFETY: TIOCSWINSZ reads the winsize we own.
        let bigger = winsize(33, 111);
        assert_eq!(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &bigger) },
            0
        );
        // The resize travels beside the keys: ask until it has arrived.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains("33 111") {
            assert!(
                Instant::now() < deadline,
                "the resize did not arrive: {seen:?}"
            );
            writer.write_all(b"stty size\r").expect("type");
            let _ = rx
                .recv_timeout(Duration::from_millis(500))
                .map(|c| seen.push_str(&String::from_utf8_lossy(&c)));
        }
        writer.write_all(b"sleep 50; echo slept\r").expect("type");
        std::thread::sleep(Duration::from_millis(500));
        let interrupted = Instant::now();
        writer.write_all(&[3]).expect("ctrl-c");
        writer.write_all(b"echo after-$((6 * 7))\r").expect("type");
        read_until(&rx, &mut seen, "after-42");
        assert!(interrupted.elapsed() < Duration::from_secs(10), "{seen:?}");
        assert!(!seen.contains("\nslept\r\n"), "{seen:?}");
        writer.write_all(b"exit 3\r").expect("type");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sandpool shell did not exit: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(3), "{seen:?}");
        // The terminal is cooked again: line editing and echo are back.
        // SAFETY: tcgetattr fills the termios we own.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut termios) },
            0
        );
        assert_ne!(termios.c_lflag & libc::ICANON, 0, "the terminal stayed raw");
        assert_ne!(termios.c_lflag & libc::ECHO, 0, "the terminal stayed raw");
    }
}
