//! Bad input gets a clear status and message; nothing leaks and the server
//! keeps serving.

use sandpool_client::proto as pb;
use sandpool_tests::{TestServer, python_pool, secs};
use tonic::Code;

fn code(text: &str) -> Option<pb::run_request::Program> {
    Some(pb::run_request::Program::Code(pb::Code {
        source: Some(pb::code::Source::Text(text.into())),
        language: String::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status() {
    let server = TestServer::start().await;
    server.pool(python_pool("ok")).await;
    let session = server.client.acquire("ok").await.expect("acquire");
    let lease = session.lease_id().to_string();
    let mut sessions = server.client.sessions();
    let mut pools = server.client.pools();

    let status = sessions
        .acquire(pb::AcquireRequest {
            pool: "nope".into(),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("\"nope\""),
        "{}",
        status.message()
    );
    let status = pools
        .get_pool_stats(pb::GetPoolStatsRequest {
            name: "nope".into(),
            replica: String::new(),
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);
    // One replica's stats, of a server that is alone.
    let status = pools
        .get_pool_stats(pb::GetPoolStatsRequest {
            name: "nope".into(),
            replica: "b".into(),
        })
        .await
        .expect_err("no replica b");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("\"b\" is not a replica") && status.message().contains("alone"),
        "{}",
        status.message()
    );
    let status = pools
        .create_pool(pb::CreatePoolRequest {
            spec: None,
            wait_ready: false,
            ..Default::default()
        })
        .await
        .expect_err("no spec");
    assert_eq!(status.code(), Code::InvalidArgument);

    let run = |lease_id: &str, program, tweak: fn(&mut pb::RunRequest)| {
        let mut req = pb::RunRequest {
            lease_id: lease_id.to_string(),
            program,
            ..Default::default()
        };
        tweak(&mut req);
        req
    };
    let cases: Vec<(pb::RunRequest, Code, &str)> = vec![
        (
            run(&"a".repeat(32), code("print(1)"), |_| {}),
            Code::NotFound,
            "does not exist",
        ),
        (
            run("", code("print(1)"), |_| {}),
            Code::InvalidArgument,
            "lease_id",
        ),
        (run(&lease, None, |_| {}), Code::InvalidArgument, "program"),
        (run(&lease, code(""), |_| {}), Code::InvalidArgument, "code"),
        (
            run(&lease, code(&"x".repeat(10 << 20)), |_| {}),
            Code::InvalidArgument,
            "limit",
        ),
        (
            run(
                &lease,
                Some(pb::run_request::Program::Code(pb::Code {
                    source: Some(pb::code::Source::Text("puts 1".into())),
                    language: "ruby".into(),
                })),
                |_| {},
            ),
            Code::InvalidArgument,
            "code.language",
        ),
        (
            run(
                &lease,
                Some(pb::run_request::Program::Command(pb::Command::default())),
                |_| {},
            ),
            Code::InvalidArgument,
            "command",
        ),
        (
            run(
                &lease,
                Some(pb::run_request::Program::Command(pb::Command {
                    argv: vec!["ls".into()],
                    shell: "ls".into(),
                })),
                |_| {},
            ),
            Code::InvalidArgument,
            "not both",
        ),
        (
            run(&lease, code("print(1)"), |r| {
                r.env.insert("BAD NAME".into(), "x".into());
            }),
            Code::InvalidArgument,
            "env",
        ),
        (
            run(&lease, code("print(1)"), |r| {
                r.env.insert("SANDPOOL_RUN_ID".into(), "x".into());
            }),
            Code::InvalidArgument,
            "reserved",
        ),
        (
            run(&lease, code("print(1)"), |r| {
                r.working_dir = "rel/dir".into()
            }),
            Code::InvalidArgument,
            "working_dir",
        ),
        (
            run(&lease, code("print(1)"), |r| r.timeout = secs(0.0)),
            Code::InvalidArgument,
            "timeout",
        ),
        (
            run(&lease, code("print(1)"), |r| r.timeout = secs(1e6)),
            Code::InvalidArgument,
            "max_run_timeout",
        ),
    ];
    for (request, want, hint) in cases {
        let status = match sessions.run(request).await {
            Ok(_) => panic!("expected {want:?} ({hint})"),
            Err(s) => s,
        };
        assert_eq!(status.code(), want, "{hint}: {}", status.message());
        assert!(
            status.message().contains(hint),
            "message {:?} should mention {hint:?}",
            status.message()
        );
    }
    let status = sessions
        .cancel(pb::CancelRequest {
            lease_id: lease.clone(),
            run_id: "not-a-run".into(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(status.code(), Code::NotFound);

    // The server and the lease are fine after all of that.
    let out = session
        .run_collect("print('still serving')")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "still serving\n");
    let stats = server.stats("ok").await;
    assert_eq!(stats.active_leases, 1);
    assert_eq!(
        stats.counters.expect("c").runs,
        1,
        "rejected runs never started"
    );
    session.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_usable_only_by_its_caller_when_auth_is_on() {
    let mut config = sandpool_tests::empty_config();
    config.auth.add_tokens(
        &["alice-token".into(), "bob-token".into()],
        sandpool_server::identity::Role::Tenant,
    );
    let server = TestServer::start_with(config).await;
    let addr = format!("http://{}", server.addr);
    let anonymous = &server.client;
    let err = anonymous.list_pools().await.expect_err("no token");
    assert_eq!(err.status().expect("status").code(), Code::Unauthenticated);
    let alice = sandpool_client::Client::builder(&addr)
        .token("alice-token")
        .connect()
        .await
        .expect("alice");
    let bob = sandpool_client::Client::builder(&addr)
        .token("bob-token")
        .connect()
        .await
        .expect("bob");
    let wrong = sandpool_client::Client::builder(&addr)
        .token("mallory")
        .connect()
        .await
        .expect("mallory");
    assert_eq!(
        wrong
            .list_pools()
            .await
            .expect_err("bad token")
            .status()
            .expect("s")
            .code(),
        Code::Unauthenticated
    );
    alice
        .create_pool(python_pool("shared"), true)
        .await
        .expect("create");
    let session = alice.acquire("shared").await.expect("acquire");
    let status = bob
        .sessions()
        .run(pb::RunRequest {
            lease_id: session.lease_id().into(),
            program: code("print(1)"),
            ..Default::default()
        })
        .await
        .expect_err("bob cannot use alice's lease");
    assert_eq!(status.code(), Code::NotFound);
    let status = bob
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: session.lease_id().into(),
        })
        .await
        .expect_err("nor release it");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        session
            .run_collect("print(1)")
            .await
            .expect("alice runs")
            .stdout_text(),
        "1\n"
    );
    session.release().await.expect("release");
    server.stop().await;
}
