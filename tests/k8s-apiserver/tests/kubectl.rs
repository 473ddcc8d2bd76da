//! Fidelity against a client nobody here wrote: real kubectl 1.37 (from
//! scripts/kubectl.sh) drives the test API server in-process: create,
//! get -l, exec with stdin and exit codes, stderr, delete, NetworkPolicies,
//! a deny-all policy that really takes a pod's network away, and the
//! EndpointSlices sandpool's peer discovery reads.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::{IMAGE, docker_ps, eventually, require_image};
use sandpool_k8s_testserver::{Config, LABEL_INSTANCE, TestServer, serve};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, process::Command};

/// kubectl's path, installed by scripts/kubectl.sh when missing; None (the
/// test is skipped) only when it cannot be installed.
fn kubectl_path() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kubectl.sh");
    let out = std::process::Command::new("bash")
        .args([script, "--path"])
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("SKIP: scripts/kubectl.sh could not install kubectl: {out:?}");
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

struct Kubectl {
    path: PathBuf,
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(path: PathBuf, server: &TestServer, namespace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig, namespace).unwrap();
        Self {
            path,
            kubeconfig,
            dir,
        }
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(&self.path);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // No cache of discovery between tests.
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(data).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} hung"))
            .unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None).await
    }

    /// Runs and asserts success.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(
            out.code, 0,
            "kubectl {args:?} failed: {}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `kubectl create -f` (or `apply -f`) of a manifest, with kubectl's
    /// default validation (left to the server through `fieldValidation`).
    async fn create(&self, manifest: &Value) -> String {
        self.file_verb("create", manifest).await
    }

    async fn file_verb(&self, verb: &str, manifest: &Value) -> String {
        let file = self.dir.path().join(format!("{}.json", rand_name()));
        std::fs::write(&file, manifest.to_string()).unwrap();
        self.ok(&[verb, "-f", file.to_str().unwrap()]).await
    }

    async fn wait_running(&self, selector: &str) -> Value {
        eventually(
            &format!("a Running pod -l {selector}"),
            Duration::from_secs(60),
            || async {
                let out = self
                    .ok(&["get", "pods", "-l", selector, "-o", "json"])
                    .await;
                let list: Value = serde_json::from_str(&out).unwrap();
                let pod = list["items"].get(0)?.clone();
                (pod["status"]["phase"] == "Running").then_some(pod)
            },
        )
        .await
    }
}

fn rand_name() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn pod(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "infinity"]}],
        },
    })
}

fn deny_all(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress", "Egress"]},
    })
}

#[tokio::test]
async fn kubectl_create_get_exec_delete() {
    let Some(path) = kubectl_path() else { return };
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
    let k = Kubectl::new(path, &server, "kubectl-test");

    // Strict field validation (kubectl's default) refuses a misspelt field;
    // quantities may be numbers, as in YAML.
    let mut typo = pod("typo", "web");
    typo["spec"]["containers"][0]["imagePullPolicyy"] = json!("Never");
    let file = k.dir.path().join("typo.json");
    std::fs::write(&file, typo.to_string()).unwrap();
    let refused = k.run(&["create", "-f", file.to_str().unwrap()]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(
            r#"strict decoding error: unknown field "spec.containers[0].imagePullPolicyy""#
        ),
        "{}",
        refused.stderr
    );
    let mut web = pod("web-1", "web");
    web["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": 1, "memory": "64Mi"}});
    k.create(&web).await;
    let running = k.wait_running("app=web").await;
    assert_eq!(running["metadata"]["name"], "web-1");
    assert_eq!(running["status"]["containerStatuses"][0]["ready"], true);
    assert!(running["status"]["podIP"].is_string());
    // Other selectors: not matching, and set-based.
    let none = k
        .ok(&["get", "pods", "-l", "app=other", "-o", "json"])
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&none).unwrap()["items"],
        json!([])
    );
    let set = k
        .ok(&["get", "pods", "-l", "app in (web,db),!gone", "-o", "name"])
        .await;
    assert_eq!(set.trim(), "pod/web-1");

    // stdin in, stdout out, exit code through.
    let out = k
        .run_with_stdin(
            &["exec", "web-1", "-i", "--", "sh", "-c", "cat; exit 3"],
            Some(b"hello from stdin\n"),
        )
        .await;
    assert_eq!(out.stdout, "hello from stdin\n", "stderr: {}", out.stderr);
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    // stderr apart from stdout.
    let out = k
        .run(&[
            "exec",
            "web-1",
            "--",
            "sh",
            "-c",
            "echo out; echo to-stderr >&2",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("to-stderr"), "{}", out.stderr);

    // Labels change through kubectl (a merge patch).
    k.ok(&["label", "pod", "web-1", "leased=yes"]).await;
    let leased = k
        .ok(&["get", "pods", "-l", "leased=yes", "-o", "name"])
        .await;
    assert_eq!(leased.trim(), "pod/web-1");

    // NetworkPolicies: apply (create, then a patch), list by resource name
    // and short name.
    k.file_verb("apply", &deny_all("deny-db", "db")).await;
    let changed = k.file_verb("apply", &deny_all("deny-db", "db2")).await;
    assert!(changed.contains("configured"), "{changed}");
    let table = k.ok(&["get", "networkpolicies"]).await;
    assert!(table.contains("deny-db"), "{table}");
    let listed = k.ok(&["get", "netpol", "-o", "json"]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["items"][0]["spec"]["policyTypes"],
        json!(["Ingress", "Egress"])
    );

    // Delete: kubectl waits until the pod is gone; so is its container.
    assert_eq!(docker_ps(&[&instance]).len(), 1);
    k.ok(&["delete", "pod", "web-1"]).await;
    let gone = k.run(&["get", "pod", "web-1"]).await;
    assert_ne!(gone.code, 0);
    assert!(
        gone.stderr.contains("NotFound") || gone.stderr.contains("not found"),
        "{}",
        gone.stderr
    );
    assert!(
        docker_ps(&[&instance]).is_empty(),
        "container left after delete"
    );
    k.ok(&["delete", "networkpolicy", "deny-db"]).await;

    server.shutdown().await;
    assert!(docker_ps(&[&instance]).is_empty());
}

/// `/proc/net/dev` of the pod: the interfaces it has.
async fn interfaces(k: &Kubectl, pod: &str) -> Vec<String> {
    let dev = k.ok(&["exec", pod, "--", "cat", "/proc/net/dev"]).await;
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test]
async fn deny_all_policy_takes_the_network_away() {
    let Some(path) = kubectl_path() else { return };
    require_image();
    let server = serve(Config::default()).await.unwrap();
    let instance = format!("{LABEL_INSTANCE}={}", server.instance_id());
    let k = Kubectl::new(path, &server, "netpol-test");

    // The policy exists before the pod: the pod never has a network.
    k.create(&deny_all("deny-sandbox", "sandbox")).await;
    k.create(&pod("sandbox-1", "sandbox")).await;
    k.create(&pod("free-1", "free")).await;
    k.wait_running("app=sandbox").await;
    k.wait_running("app=free").await;
    assert_eq!(interfaces(&k, "sandbox-1").await, ["lo"]);
    let free = interfaces(&k, "free-1").await;
    assert!(free.len() > 1, "unselected pod has no network: {free:?}");
    // And the unselected pod can reach the outside of its namespace (the
    // Docker gateway's address is on its routing table).
    let route = k
        .ok(&["exec", "free-1", "--", "cat", "/proc/net/route"])
        .await;
    assert!(route.lines().count() > 1, "{route}");
    let route = k
        .ok(&["exec", "sandbox-1", "--", "cat", "/proc/net/route"])
        .await;
    assert_eq!(route.lines().count(), 1, "isolated pod has routes: {route}");

    // A policy created later cuts a running pod off by the time create
    // returns; deleting it gives the network back.
    k.create(&deny_all("deny-free", "free")).await;
    assert_eq!(interfaces(&k, "free-1").await, ["lo"]);
    k.ok(&["delete", "networkpolicy", "deny-free"]).await;
    assert!(interfaces(&k, "free-1").await.len() > 1);

    server.shutdown().await;
    assert!(docker_ps(&[&instance]).is_empty());
}

/// An EndpointSlice of Service `service` listing `pods` (name, IP), as the
/// endpoint controller writes them: there is none here, so the test plays
/// its part.
fn endpoint_slice(name: &str, service: &str, address_type: &str, pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(pod, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "peers"},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// EndpointSlices as sandpool's peer discovery reads them: discovered by
/// kubectl, applied (created, then patched), listed by the Service's
/// label, validated strictly, `addressType` immutable, deleted.
#[tokio::test]
async fn kubectl_endpoint_slices() {
    let Some(path) = kubectl_path() else { return };
    let server = serve(Config::default()).await.unwrap();
    let k = Kubectl::new(path, &server, "peers");

    let resources = k
        .ok(&[
            "api-resources",
            "--api-group=discovery.k8s.io",
            "-o",
            "name",
        ])
        .await;
    assert!(
        resources.contains("endpointslices.discovery.k8s.io"),
        "{resources}"
    );

    let one = [("sandpool-0", "10.0.0.1")];
    let two = [("sandpool-0", "10.0.0.1"), ("sandpool-1", "10.0.0.2")];
    let created = k
        .file_verb(
            "apply",
            &endpoint_slice("sandpool-peers-abc", "sandpool-peers", "IPv4", &one),
        )
        .await;
    assert!(created.contains("created"), "{created}");
    let changed = k
        .file_verb(
            "apply",
            &endpoint_slice("sandpool-peers-abc", "sandpool-peers", "IPv4", &two),
        )
        .await;
    assert!(changed.contains("configured"), "{changed}");
    k.create(&endpoint_slice("other-xyz", "other", "IPv4", &one))
        .await;

    let listed = k
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=sandpool-peers",
            "-o",
            "json",
        ])
        .await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["addressType"], "IPv4");
    assert_eq!(items[0]["ports"][0]["name"], "grpc");
    assert_eq!(items[0]["endpoints"][1]["targetRef"]["name"], "sandpool-1");
    assert_eq!(items[0]["endpoints"][1]["addresses"], json!(["10.0.0.2"]));
    assert_eq!(items[0]["endpoints"][1]["conditions"]["serving"], true);

    // kubectl's strict validation, left to the server: unknown fields are
    // refused.
    let mut bad = endpoint_slice("bad", "sandpool-peers", "IPv4", &one);
    bad["endpoints"][0]["bogus"] = json!(1);
    let file = k.dir.path().join("bad.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let refused = k.run(&["create", "-f", file.to_str().unwrap()]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("unknown field"),
        "{}",
        refused.stderr
    );

    // addressType cannot change, as on a real server.
    let file = k.dir.path().join("v6.json");
    std::fs::write(
        &file,
        endpoint_slice("sandpool-peers-abc", "sandpool-peers", "IPv6", &two).to_string(),
    )
    .unwrap();
    let immutable = k.run(&["apply", "-f", file.to_str().unwrap()]).await;
    assert_ne!(immutable.code, 0);
    assert!(
        immutable.stderr.contains("immutable"),
        "{}",
        immutable.stderr
    );

    k.ok(&["delete", "endpointslice", "sandpool-peers-abc"])
        .await;
    let left = k.ok(&["get", "endpointslices", "-o", "name"]).await;
    assert_eq!(
        left.trim(),
        "endpointslice.discovery.k8s.io/other-xyz",
        "{left}"
    );
    server.shutdown().await;
}
