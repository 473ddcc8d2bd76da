//! Runs over the fake engine in paused time: output streamed as produced,
//! the timeout, the output cap and the lease's end each stop a run with
//! their own end reason, by a kill of the run's group.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{EndReason, RunEvent, RunExit, RunLimits, RunSpec};
use crate::{backend::fake::Program, pool::LeaseInfo, testkit::Harness};

/// A warm one-container pool and a lease on it (with `ttl`, if given).
async fn leased(h: &Harness, ttl: Option<Duration>) -> LeaseInfo {
    h.warm_pool("run", 1, 1, |_| {}).await;
    h.acquire_for("run", ttl).await.expect("a lease")
}

/// Runs bash `code` on the lease and returns its output events, each with
/// the time it arrived since the start, and its exit.
async fn run(
    h: &Harness,
    lease: &LeaseInfo,
    spec: RunSpec,
) -> (Vec<(Duration, RunEvent)>, RunExit) {
    let guard = h.lease(lease).expect("a live lease");
    let start = Instant::now();
    let mut events = super::start(guard, spec, &RunLimits::default())
        .await
        .expect("the run starts");
    let mut output = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            RunEvent::Started { .. } => assert!(output.is_empty(), "Started comes first"),
            RunEvent::Exit(exit) => {
                assert!(events.recv().await.is_none(), "events after the exit");
                return (output, exit);
            }
            RunEvent::Failed(e) => panic!("the run failed: {e}"),
            other => output.push((start.elapsed(), other)),
        }
    }
    panic!("the run ended without an exit event")
}

/// The gid the run of `word` ran under (its user is "uid:gid").
fn run_gid(h: &Harness, word: &str) -> String {
    let journal = h.fake.journal();
    let exec = journal
        .execs
        .iter()
        .find(|e| e.argv.iter().any(|a| a == word))
        .expect("the run's exec");
    assert!(!exec.privileged);
    let (uid, gid) = exec.user.split_once(':').expect("uid:gid");
    assert_eq!(uid, "1000");
    gid.to_string()
}

fn stdout_bytes(output: &[(Duration, RunEvent)]) -> Vec<u8> {
    output
        .iter()
        .filter_map(|(_, e)| match e {
            RunEvent::Stdout(data) => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn output_is_streamed_as_produced_and_the_exit_code_reported() {
    let h = Harness::new();
    let lease = leased(&h, None).await;
    h.fake.program(
        Program::matching(&["bash", "-c", "work"])
            .stdout("one\n")
            .sleep(Duration::from_secs(1))
            .stderr("two\n")
            .sleep(Duration::from_secs(1))
            .stdout("three\n")
            .exit(3),
    );
    let (output, exit) = run(&h, &lease, RunSpec::code("work")).await;
    let second = Duration::from_secs(1);
    let near = |at: Duration, want: Duration| at >= want && at < want + second / 10;
    match output.as_slice() {
        [
            (t1, RunEvent::Stdout(a)),
            (t2, RunEvent::Stderr(b)),
            (t3, RunEvent::Stdout(c)),
        ] => {
            assert_eq!(
                (&a[..], &b[..], &c[..]),
                (&b"one\n"[..], &b"two\n"[..], &b"three\n"[..])
            );
            // Each chunk when it was written, not at the end; the artifact
            // wrapper's frame taken out of stderr.
            assert!(near(*t1, Duration::ZERO), "{t1:?}");
            assert!(near(*t2, second), "{t2:?}");
            assert!(near(*t3, 2 * second), "{t3:?}");
        }
        other => panic!("unexpected output {other:?}"),
    }
    assert_eq!(
        (exit.exit_code, exit.reason, exit.signal),
        (3, EndReason::Exited, 0)
    );
    assert_eq!((exit.stdout_bytes, exit.stderr_bytes), (10, 4));
    assert!(!exit.truncated);
    assert!(near(exit.duration, 2 * second), "{:?}", exit.duration);
    let gid: u32 = run_gid(&h, "work").parse().expect("a gid");
    assert!((20_000..=29_999).contains(&gid), "{gid}");
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_is_killed_and_ends_with_timeout() {
    let h = Harness::new();
    let lease = leased(&h, None).await;
    h.fake.program(
        Program::matching(&["bash", "-c", "forever"])
            .stdout("started\n")
            .until_killed(),
    );
    let mut spec = RunSpec::code("forever");
    spec.timeout = Some(Duration::from_secs(3));
    let (output, exit) = run(&h, &lease, spec).await;
    assert_eq!(stdout_bytes(&output), b"started\n");
    assert_eq!(exit.reason, EndReason::Timeout);
    assert!(
        exit.duration >= Duration::from_secs(3) && exit.duration < Duration::from_millis(3100),
        "{:?}",
        exit.duration
    );
    assert!(exit.message.contains("timeout"), "{}", exit.message);
    // The warden killed the run's group, and only that.
    let kill = format!("kill gid {}", run_gid(&h, "forever"));
    assert!(h.fake.warden_commands(&lease.container_id).contains(&kill));
    assert_eq!(h.fake.live_execs(&lease.container_id), 0);
    // The container stays usable.
    h.fake
        .program(Program::matching(&["bash", "-c", "after"]).stdout("fine\n"));
    let (output, exit) = run(&h, &lease, RunSpec::code("after")).await;
    assert_eq!(stdout_bytes(&output), b"fine\n");
    assert_eq!((exit.exit_code, exit.reason), (0, EndReason::Exited));
}

#[tokio::test(start_paused = true)]
async fn output_beyond_the_cap_is_cut_and_stops_the_run() {
    let h = Harness::new();
    let lease = leased(&h, None).await;
    let mut flood = Program::matching(&["bash", "-c", "flood"]);
    for _ in 0..10 {
        flood = flood.stdout(Bytes::from(vec![b'x'; 100]));
    }
    h.fake.program(flood.until_killed());
    let mut spec = RunSpec::code("flood");
    spec.output_limit = Some(250);
    let (output, exit) = run(&h, &lease, spec).await;
    assert_eq!(stdout_bytes(&output), vec![b'x'; 250]);
    assert_eq!(exit.reason, EndReason::OutputLimit);
    assert!(exit.truncated);
    assert!(exit.stdout_bytes > 250, "{}", exit.stdout_bytes);
    let kill = format!("kill gid {}", run_gid(&h, "flood"));
    assert!(h.fake.warden_commands(&lease.container_id).contains(&kill));
    assert_eq!(h.fake.live_execs(&lease.container_id), 0);
}

#[tokio::test(start_paused = true)]
async fn a_run_ends_when_its_lease_expires_and_the_container_is_reset() {
    let h = Harness::new();
    let lease = leased(&h, Some(Duration::from_secs(2))).await;
    h.fake
        .program(Program::matching(&["bash", "-c", "forever"]).until_killed());
    let (_, exit) = run(&h, &lease, RunSpec::code("forever")).await;
    assert_eq!(exit.reason, EndReason::LeaseExpired);
    assert!(
        exit.duration >= Duration::from_secs(2) && exit.duration < Duration::from_millis(2200),
        "{:?}",
        exit.duration
    );
    h.until_idle("run", 1).await;
    assert_eq!(h.fake.running(), [lease.container_id.as_str()]);
    assert_eq!(h.fake.live_execs(&lease.container_id), 0);
}
