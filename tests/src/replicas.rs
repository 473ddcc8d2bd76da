//! Several server processes as replicas of one cluster, and a real nginx
//! (`grpc_pass`, round-robin) in front of them: the harness of the
//! scale-out tests and of the replica benchmark.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{terminate, unique_id, workspace_binary};

/// What the log line of every forwarded call says (api::forward).
pub const FORWARDED: &str = "forwarding to the lease's owner";

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server process; SIGKILLed if the test ends before it is stopped.
pub struct Replica {
    pub name: &'static str,
    pub server_id: String,
    pub addr: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    pub fn start(
        name: &'static str,
        addr: String,
        config: &Path,
        dir: &Path,
        peer_token: Option<&str>,
    ) -> Self {
        Self::start_binary(
            &workspace_binary("sandpool-server"),
            name,
            addr,
            config,
            dir,
            peer_token,
        )
    }

    /// `start`, with the server binary `server` (a benchmark's release
    /// build).
    pub fn start_binary(
        server: &Path,
        name: &'static str,
        addr: String,
        config: &Path,
        dir: &Path,
        peer_token: Option<&str>,
    ) -> Self {
        let server_id = unique_id(&format!("scale-{name}"));
        // A log per process: a replica restarted under its name keeps its
        // predecessor's.
        let log = dir.join(format!("{server_id}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = Command::new(server);
        command
            .args(["--listen", &addr, "--config"])
            .arg(config)
            .args(["--server-id", &server_id, "--log-format", "json"])
            // One config for all: the environment names the replica, and
            // carries the secret.
            .env("SANDPOOL_REPLICA", name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if let Some(token) = peer_token {
            command.env("SANDPOOL_PEER_TOKEN", token);
        }
        let child = command.spawn().expect("start sandpool-server");
        Self {
            name,
            server_id,
            addr,
            log,
            child: Some(child),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines of calls for `lease_id` it forwarded.
    pub fn forwarded(&self, lease_id: &str) -> Vec<String> {
        self.log_lines(FORWARDED, lease_id)
    }

    pub fn log_lines(&self, message: &str, lease_id: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(message) && l.contains(lease_id))
            .map(String::from)
            .collect()
    }

    /// SIGKILL: no drain, no cleanup of its own.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, without waiting for it to exit (see `running`).
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`...) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    /// Whether the process is still there.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => {
                if let Ok(None) = child.try_wait() {
                    return true;
                }
                self.child = None;
                false
            }
            None => false,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The test failed midway: SIGTERM (the server removes its
            // containers), then SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// nginx in front of the replicas, with a prefix directory of its own; in
/// one process (`master_process off`), so that killing the child leaves no
/// worker behind.
pub struct Balancer {
    pub addr: String,
    child: Child,
}

impl Balancer {
    pub fn start(dir: &Path, replicas: &[Replica]) -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: run scripts/lb-up.sh (scripts/test.sh does)");
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp")).expect("nginx dir");
        let port = free_port();
        let servers: String = replicas
            .iter()
            .map(|r| format!("    server {};\n", r.addr))
            .collect();
        let p = prefix.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log {p}/access.log;\n\
             client_body_temp_path {p}/tmp/body;\nproxy_temp_path {p}/tmp/proxy;\n\
             fastcgi_temp_path {p}/tmp/fastcgi;\nuwsgi_temp_path {p}/tmp/uwsgi;\n\
             scgi_temp_path {p}/tmp/scgi;\n\
             upstream replicas {{\n{servers}  }}\n\
             server {{\n    listen 127.0.0.1:{port} http2;\n    client_max_body_size 0;\n\
             grpc_read_timeout 300s;\n    grpc_send_timeout 300s;\n\
             location / {{ grpc_pass grpc://replicas; }}\n  }}\n}}\n"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Self {
            addr: format!("127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server at `addr` answers its health check with SERVING.
pub async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

/// Replicas of one cluster, started from one config with a static peer
/// list, serving, and a balancer in front of them.
pub struct ReplicaSet {
    pub dir: PathBuf,
    /// The callers' token (`[auth] tokens`).
    pub token: String,
    pub replicas: Vec<Replica>,
    pub balancer: Balancer,
}

impl ReplicaSet {
    /// One replica per name, each with `pools` (TOML `[[pools]]` tables)
    /// and `shutdown_grace` 15 s, run from `server`.
    pub async fn start(server: &Path, names: &[&'static str], pools: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_id("sandpool-replicas"));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let token = format!("{:032x}", rand::random::<u128>());
        let peer_token = format!("{:032x}", rand::random::<u128>());
        let addrs: Vec<String> = names
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = names
            .iter()
            .zip(&addrs)
            .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"http://{addr}\" }}"))
            .collect();
        let config = dir.join("sandpool.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_grace = 15.0\n[auth]\ntokens = [\"{token}\"]\n\
                 [cluster]\npeers = [{}]\n{pools}",
                peers.join(", ")
            ),
        )
        .expect("write config");
        let replicas: Vec<Replica> = names
            .iter()
            .zip(addrs)
            .map(|(name, addr)| {
                Replica::start_binary(server, name, addr, &config, &dir, Some(&peer_token))
            })
            .collect();
        for r in &replicas {
            let until = Instant::now() + Duration::from_secs(60);
            while !serving(&r.addr).await {
                assert!(
                    Instant::now() < until,
                    "replica {} did not serve within 60 s; its log:\n{}",
                    r.name,
                    r.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let balancer = Balancer::start(&dir, &replicas);
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&balancer.addr)
            .await
            .is_err()
        {
            assert!(Instant::now() < until, "nginx did not listen within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            dir,
            token,
            replicas,
            balancer,
        }
    }

    /// The balancer's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.balancer.addr)
    }

    /// Stops every replica (SIGTERM: each removes its containers).
    pub async fn stop(mut self) {
        for r in &mut self.replicas {
            r.stop().await;
        }
    }
}
