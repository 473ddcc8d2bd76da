//! Interactive runs in tests: reading a run's events up to some output or
//! its exit, and one terminal session that every engine must pass.

use std::time::{Duration, Instant};

use sandpool_client::{Interaction, RunEvent, RunStream, Session, proto as pb};

use crate::secs;

/// A command run as an interactive request (its stdin comes later).
pub fn argv_run(argv: &[&str], timeout: f64) -> pb::RunRequest {
    pb::RunRequest {
        program: Some(pb::run_request::Program::Command(pb::Command {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            shell: String::new(),
        })),
        timeout: secs(timeout),
        ..Default::default()
    }
}

/// Reads events, adding the output (both streams) to `seen`, until `needle`
/// is in it; panics with what came if it is not within 20 s.
pub async fn read_until(events: &mut RunStream, seen: &mut String, needle: &str) {
    read_until_in(events, seen, needle, true).await
}

/// `read_until` on stdout alone: the engine reads a program's two pipes
/// apart, so what it wrote to stderr between two pieces of a stdout line (a
/// REPL's next prompt after `print`'s pieces) can arrive between them.
pub async fn read_stdout_until(events: &mut RunStream, seen: &mut String, needle: &str) {
    read_until_in(events, seen, needle, false).await
}

async fn read_until_in(events: &mut RunStream, seen: &mut String, needle: &str, stderr: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let event = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not come; the run printed {seen:?}"));
        match event {
            Some(Ok(RunEvent::Stdout(d))) => seen.push_str(&String::from_utf8_lossy(&d)),
            Some(Ok(RunEvent::Stderr(d))) if stderr => {
                seen.push_str(&String::from_utf8_lossy(&d));
            }
            Some(Ok(RunEvent::Exit(e))) => {
                panic!("the run ended ({e:?}) before {needle:?}; it printed {seen:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the run failed before {needle:?}: {e}; it printed {seen:?}"),
            None => panic!("the events ended before {needle:?}; the run printed {seen:?}"),
        }
    }
}

/// Reads to the exit event; returns it, the output on the way and the
/// artifact chunks.
pub async fn read_to_exit(events: &mut RunStream) -> (pb::RunExit, String, Vec<pb::RunArtifact>) {
    let mut out = String::new();
    let mut artifacts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .unwrap_or_else(|_| panic!("no exit within 30 s; the run printed {out:?}"));
        match event {
            Some(Ok(RunEvent::Stdout(d) | RunEvent::Stderr(d))) => {
                out.push_str(&String::from_utf8_lossy(&d));
            }
            Some(Ok(RunEvent::Artifact(a))) => artifacts.push(a),
            Some(Ok(RunEvent::Exit(e))) => return (e, out, artifacts),
            Some(Ok(RunEvent::Started { .. })) => {}
            Some(Ok(RunEvent::Gap(g))) => panic!("an interactive run has no gaps: {g:?}"),
            Some(Err(e)) => panic!("the run failed: {e}; it printed {out:?}"),
            None => panic!("the events ended without an exit; the run printed {out:?}"),
        }
    }
}

/// An interactive bash with a terminal, as a person uses it: the terminal
/// has the size asked for and follows a resize, Ctrl-C interrupts the
/// foreground job and leaves the shell, the exit code is the shell's, and
/// the call ends with the run though the client still holds its input.
/// Then a signal ends a piped `cat` as SIGNALED.
pub async fn terminal_session(session: &Session) {
    let Interaction { input, mut events } = session
        .interact(
            argv_run(&["bash", "--norc", "--noprofile", "-i"], 60.0),
            Some((24, 80)),
        )
        .await
        .expect("interact");
    let mut seen = String::new();
    input.write("tty; stty size\r").await.expect("write");
    read_until(&mut events, &mut seen, "/dev/pts/").await;
    read_until(&mut events, &mut seen, "24 80").await;
    input.resize(30, 100).await.expect("resize");
    input.write("stty size\r").await.expect("write");
    read_until(&mut events, &mut seen, "30 100").await;
    // Ctrl-C as a keyboard sends it: the foreground sleep dies, bash stays.
    input.write("sleep 50; echo slept\r").await.expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let interrupted = Instant::now();
    input.write(vec![3u8]).await.expect("ctrl-c");
    input.write("echo after-$((6 * 7))\r").await.expect("write");
    read_until(&mut events, &mut seen, "after-42").await;
    assert!(
        interrupted.elapsed() < Duration::from_secs(10),
        "Ctrl-C did not interrupt the sleep ({:?})",
        interrupted.elapsed()
    );
    assert!(
        !seen.contains("\nslept\r\n"),
        "the sleep was not interrupted: {seen:?}"
    );
    input.write("exit 3\r").await.expect("write");
    let (exit, _, _) = read_to_exit(&mut events).await;
    assert_eq!(exit.end_reason, pb::EndReason::Exited as i32, "{exit:?}");
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.stderr_bytes, 0, "a terminal has one stream: {exit:?}");
    // The call ends with the run, though the client still holds its input.
    let end = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    assert!(matches!(end, Ok(None)), "the call went on after the exit");
    drop(input);

    let Interaction { input, mut events } = session
        .interact(argv_run(&["cat"], 60.0), None)
        .await
        .expect("interact");
    let mut seen = String::new();
    input.write("ping\n").await.expect("write");
    read_until(&mut events, &mut seen, "ping\n").await;
    input.signal(15).await.expect("SIGTERM");
    let (exit, _, _) = read_to_exit(&mut events).await;
    assert_eq!(exit.end_reason, pb::EndReason::Signaled as i32, "{exit:?}");
    assert_eq!(exit.exit_code, 143, "{exit:?}");
}
