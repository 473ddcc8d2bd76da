//! Interactive runs (the Interact RPC) against a real engine: input
//! streamed while the program runs, stdin closed, signals to the whole run,
//! a terminal that can be resized and interrupted with Ctrl-C, and every bad
//! request refused with INVALID_ARGUMENT while the server keeps serving.

use std::time::{Duration, Instant};

use sandpool_client::{Interaction, RunEvent, Session, proto as pb};
use sandpool_tests::{
    TestServer, code_of,
    interactive::{argv_run, read_stdout_until, read_to_exit, read_until, terminal_session},
    python_pool, secs, shell_run,
};

async fn server_and_session(name: &str) -> (TestServer, Session) {
    let server = TestServer::start().await;
    server.pool(python_pool(name)).await;
    let session = server.client.acquire(name).await.expect("acquire");
    (server, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repl_answers_each_line_as_it_comes_then_ends_at_end_of_input() {
    let (server, session) = server_and_session("repl").await;
    let Interaction { input, mut events } = session
        .interact(argv_run(&["python3", "-u", "-i", "-q"], 60.0), None)
        .await
        .expect("interact");
    let mut seen = String::new();
    input.write("x = 21\n").await.expect("write");
    input
        .write("print('answer', x * 2)\n")
        .await
        .expect("write");
    // The answer comes while the input is still open: a real conversation.
    read_stdout_until(&mut events, &mut seen, "answer 42").await;
    input
        .write("import os; print('pid', os.getpid() > 1)\n")
        .await
        .expect("write");
    read_stdout_until(&mut events, &mut seen, "pid True").await;
    input.close_stdin().await.expect("close stdin");
    let (exit, _, _) = read_to_exit(&mut events).await;
    assert_eq!(exit.end_reason, pb::EndReason::Exited as i32, "{exit:?}");
    assert_eq!(exit.exit_code, 0);

    // Echo round trips through `cat`: each line comes back before the next
    // is sent.
    let Interaction { input, mut events } = session
        .interact(argv_run(&["cat"], 60.0), None)
        .await
        .expect("interact");
    let mut seen = String::new();
    let mut trips = Vec::new();
    for i in 0..20 {
        let line = format!("line-{i}\n");
        let sent = Instant::now();
        input.write(line.clone()).await.expect("write");
        read_until(&mut events, &mut seen, &line).await;
        trips.push(sent.elapsed());
    }
    trips.sort();
    println!(
        "echo round trip through an interactive cat: median {:?}, max {:?}",
        trips[trips.len() / 2],
        trips[trips.len() - 1]
    );
    // Ending the request stream closes stdin too.
    drop(input);
    let (exit, _, _) = read_to_exit(&mut events).await;
    assert_eq!(exit.exit_code, 0, "{exit:?}");

    // The lease is as usable as before.
    let after = session.run_collect("print('after')").await.expect("run");
    assert_eq!(after.stdout_text(), "after\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_every_process_of_the_run() {
    let (server, session) = server_and_session("signals").await;
    // A handler proves delivery without ending the run; the child started
    // by the shell proves the signal reaches the whole tree.
    let program = "import signal, subprocess, sys, time\n\
        signal.signal(signal.SIGUSR1, lambda *a: print('usr1 in the program', flush=True))\n\
        child = subprocess.Popen(['python3', '-c', \"import signal, time\\nsignal.signal(signal.SIGUSR1, lambda *a: print('usr1 in the child', flush=True))\\nprint('child ready', flush=True)\\ntime.sleep(60)\"])\n\
        print('ready', flush=True)\n\
        time.sleep(60)\n";
    let run = pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(program.into())),
            language: String::new(),
        })),
        timeout: secs(60.0),
        ..Default::default()
    };
    let Interaction { input, mut events } = session.interact(run, None).await.expect("interact");
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "child ready").await;
    read_until(&mut events, &mut seen, "ready\n").await;
    input.signal(10).await.expect("SIGUSR1");
    read_until(&mut events, &mut seen, "usr1 in the program").await;
    read_until(&mut events, &mut seen, "usr1 in the child").await;
    let sent = Instant::now();
    input.signal(15).await.expect("SIGTERM");
    let (exit, _, _) = read_to_exit(&mut events).await;
    assert_eq!(exit.end_reason, pb::EndReason::Signaled as i32, "{exit:?}");
    assert_eq!(exit.signal, 15, "{exit:?}");
    assert_eq!(exit.exit_code, 143, "{exit:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        sent.elapsed()
    );
    // The child got it too: no process of the run is left.
    let scan = "import os\n\
        needle = b'child ' + b'ready'\n\
        left = 0\n\
        for pid in filter(str.isdigit, os.listdir('/proc')):\n\
        \x20   try:\n\
        \x20       left += needle in open(f'/proc/{pid}/cmdline', 'rb').read()\n\
        \x20   except OSError:\n\
        \x20       pass\n\
        print(left)\n";
    let left = session.run_collect(scan).await.expect("scan");
    assert_eq!(left.stdout_text().trim(), "0", "a child survived: {left:?}");
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_has_its_size_follows_resizes_and_ctrl_c_interrupts_the_foreground_job() {
    let (server, session) = server_and_session("terminal").await;
    terminal_session(&session).await;

    // Python in a terminal: its figures still arrive as artifacts, and the
    // report that carries them never shows in the terminal's output.
    let plot =
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('plotted')\n";
    let run = pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(plot.into())),
            language: String::new(),
        })),
        timeout: secs(60.0),
        ..Default::default()
    };
    let Interaction { input, mut events } = session
        .interact(run, Some((24, 80)))
        .await
        .expect("interact");
    let (exit, out, artifacts) = read_to_exit(&mut events).await;
    drop(input);
    assert_eq!(exit.exit_code, 0, "{exit:?} {out:?}");
    assert!(out.contains("plotted\r\n"), "{out:?}");
    assert!(
        !out.contains('\u{1e}'),
        "the artifact report leaked into the terminal: {out:?}"
    );
    assert!(
        artifacts
            .iter()
            .any(|a| a.info.as_ref().is_some_and(|i| i.plot)),
        "no plot came: {artifacts:?}"
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_interactive_requests_are_invalid_and_the_server_keeps_serving() {
    let (server, session) = server_and_session("interact-bad").await;
    let invalid = |what: &str, e: sandpool_client::Error| {
        assert_eq!(code_of(&e), tonic::Code::InvalidArgument, "{what}: {e}");
        e.to_string()
    };
    // Refused at the start.
    let mut with_stdin = argv_run(&["cat"], 10.0);
    with_stdin.stdin = "x".into();
    let message = invalid(
        "stdin in the start",
        session
            .interact(with_stdin, None)
            .await
            .err()
            .expect("refused"),
    );
    assert!(message.contains("stdin"), "{message}");
    let message = invalid(
        "zero rows",
        session
            .interact(argv_run(&["cat"], 10.0), Some((0, 80)))
            .await
            .err()
            .expect("refused"),
    );
    assert!(message.contains("rows"), "{message}");
    let mut in_context = argv_run(&["cat"], 10.0);
    in_context.context_id = "ctx".into();
    invalid(
        "context",
        session
            .interact(in_context, None)
            .await
            .err()
            .expect("refused"),
    );

    // Refused mid-run: the call ends with the status, and the run with it.
    for (what, bad) in [
        ("signal 99", Bad::Signal(99)),
        ("resize without a terminal", Bad::Resize),
        ("stdin after close", Bad::WriteAfterClose),
    ] {
        let Interaction { input, mut events } = session
            .interact(argv_run(&["cat"], 30.0), None)
            .await
            .expect("interact");
        match bad {
            Bad::Signal(n) => input.signal(n).await.expect("send"),
            Bad::Resize => input.resize(10, 10).await.expect("send"),
            Bad::WriteAfterClose => {
                input.close_stdin().await.expect("send");
                input.write("late").await.expect("send");
            }
        }
        let mut error = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(event) = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: the call did not end"))
        {
            match event {
                Ok(RunEvent::Exit(e)) if matches!(bad, Bad::WriteAfterClose) => {
                    // cat may see end of file and exit before the late write.
                    assert_eq!(e.exit_code, 0, "{what}: {e:?}");
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = error {
            invalid(what, e);
        } else {
            assert!(matches!(bad, Bad::WriteAfterClose), "{what}: no error came");
        }
    }

    // Over the bare protocol: a first request that is not a start, and an
    // unknown lease.
    let mut raw = pb::session_service_client::SessionServiceClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .expect("connect");
    let not_start = pb::InteractRequest {
        action: Some(pb::interact_request::Action::Stdin("x".into())),
    };
    let status = raw
        .interact(futures::stream::iter([not_start]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("start"), "{status:?}");
    let mut unknown = shell_run("cat", 5.0);
    unknown.lease_id = "no-such-lease".into();
    let start = pb::InteractRequest {
        action: Some(pb::interact_request::Action::Start(pb::InteractStart {
            run: Some(unknown),
            terminal: None,
        })),
    };
    let status = raw
        .interact(futures::stream::iter([start]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // The timeout still holds: an interactive cat whose input never ends.
    let started = Instant::now();
    let Interaction { input, mut events } = session
        .interact(argv_run(&["cat"], 1.0), None)
        .await
        .expect("interact");
    let (exit, _, _) = read_to_exit(&mut events).await;
    drop(input);
    assert_eq!(exit.end_reason, pb::EndReason::Timeout as i32, "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let out = session
        .run_collect("print('still serving')")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "still serving\n");
    session.release().await.expect("release");
    server.stop().await;
}

#[derive(Clone, Copy)]
enum Bad {
    Signal(i32),
    Resize,
    WriteAfterClose,
}
