//! The fake engine's side of the `Backend` trait: what the pools call.
//! Every call fails `Unreachable` while the engine is switched off.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;

use super::{Container, ExecRecord, ExecState, FakeBackend, Program, Subscriber, program, warden};
use crate::backend::{
    Backend, BackendKind, ContainerEvent, ContainerEventKind, ContainerInfo, ContainerSpec, Error,
    Exec, ExecSpec, ExecStdin, ListedContainer, Liveness, Output, Result,
};

/// Room in an exec's output channel: a reader that stops reading holds the
/// program up, as a full pipe does.
const OUTPUT_CHANNEL: usize = 16;
/// Room in an exec's stdin pipe.
const STDIN_PIPE: usize = 64 * 1024;

/// What an exec turned out to be.
enum Role {
    Warden(Option<String>),
    Program(Program),
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn ensure_image(&self, _image: &str) -> Result<()> {
        self.lock().reachable()
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let delay = {
            let mut st = self.lock();
            st.reachable()?;
            if st.fail_creates > 0 {
                st.fail_creates -= 1;
                return Err(Error::Engine {
                    op: "container create",
                    detail: "injected failure".into(),
                });
            }
            st.create_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.lock();
        st.reachable()?;
        let id = st.next_id("fake");
        let networks = match spec.network.as_str() {
            "none" => Vec::new(),
            other => vec![other.to_string()],
        };
        st.containers.insert(
            id.clone(),
            Container {
                labels: spec.labels.clone(),
                running: true,
                networks,
                env: spec.env.clone(),
            },
        );
        st.journal.created += 1;
        st.journal.peak = st.journal.peak.max(st.containers.len());
        Ok(id)
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut st = self.lock();
        st.journal.remove_attempts += 1;
        st.reachable()?;
        if st.fail_removes > 0 {
            st.fail_removes -= 1;
            return Err(Error::Engine {
                op: "container remove",
                detail: "injected failure".into(),
            });
        }
        if let Some(c) = st.containers.remove(id) {
            st.stop_execs(id);
            // As Docker does: a kill (for a running one), then the removal.
            if c.running {
                st.emit(id, &c.labels, ContainerEventKind::Died);
            }
            st.emit(id, &c.labels, ContainerEventKind::Removed);
        }
        Ok(())
    }

    async fn container_running(&self, id: &str) -> Result<bool> {
        let st = self.lock();
        st.reachable()?;
        Ok(st.containers.get(id).is_some_and(|c| c.running))
    }

    async fn list_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<ListedContainer>> {
        let st = self.lock();
        st.reachable()?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| match (c.labels.get(label), value) {
                (Some(v), Some(want)) => v == want,
                (found, None) => found.is_some(),
                (None, Some(_)) => false,
            })
            .map(|(id, c)| ListedContainer {
                id: id.clone(),
                labels: c.labels.clone(),
                running: c.running,
                starting: false,
                created,
            })
            .collect())
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<Exec> {
        let (exec_id, pid, role, stop) = {
            let mut st = self.lock();
            st.reachable()?;
            if !st.containers.get(container_id).is_some_and(|c| c.running) {
                return Err(Error::ContainerGone {
                    id: container_id.to_string(),
                });
            }
            st.journal.execs.push(ExecRecord {
                container: container_id.to_string(),
                argv: spec.argv.clone(),
                user: spec.user.clone(),
                privileged: spec.privileged,
                stdin: spec.stdin,
            });
            let role = match warden::detect(&spec.argv) {
                Some(command) if spec.privileged => Role::Warden(command),
                _ => Role::Program(st.program_for(&spec.argv)),
            };
            if let Role::Program(p) = &role
                && p.refuses()
            {
                return Err(Error::Engine {
                    op: "exec create",
                    detail: "injected failure".into(),
                });
            }
            let exec_id = st.next_id("exec");
            let stop = CancellationToken::new();
            st.execs.insert(
                exec_id.clone(),
                ExecState {
                    container: container_id.to_string(),
                    user: spec.user.clone(),
                    warden: matches!(role, Role::Warden(_)),
                    stop: stop.clone(),
                    exit: None,
                },
            );
            (exec_id, st.next, role, stop)
        };
        let (stdin, their_stdin) = if spec.stdin {
            let (ours, theirs) = tokio::io::duplex(STDIN_PIPE);
            (Some(Box::pin(ours) as ExecStdin), Some(theirs))
        } else {
            (None, None)
        };
        let (tx, rx) = mpsc::channel::<Result<Output>>(OUTPUT_CHANNEL);
        let state = Arc::clone(&self.state);
        let container = container_id.to_string();
        let id = exec_id.clone();
        let wrapper = program::ArtifactWrapper::detect(&spec.argv);
        tokio::spawn(async move {
            let code = match role {
                Role::Warden(None) => {
                    let shared = Arc::clone(&state);
                    warden::resident(shared, container, pid, their_stdin, &tx, &stop).await
                }
                Role::Warden(Some(command)) => {
                    warden::one_shot(Arc::clone(&state), container, pid, command, &tx).await
                }
                Role::Program(p) => program::run(p, wrapper, their_stdin, &tx, &stop).await,
            };
            // The exit code is known before the output ends, as on an engine.
            FakeBackend::finished(&state, &id, code);
            drop(tx);
        });
        Ok(Exec {
            id: exec_id,
            stdin,
            output: ReceiverStream::new(rx).boxed(),
            // The fake has no terminals: its programs' output is scripted.
            resize: None,
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let st = self.lock();
        st.reachable()?;
        match st.execs.get(exec_id) {
            Some(exec) => Ok(exec.exit),
            None => Err(Error::Engine {
                op: "exec inspect",
                detail: format!("no exec {exec_id}"),
            }),
        }
    }

    async fn set_network(&self, container_id: &str, network: Option<&str>) -> Result<()> {
        let mut st = self.lock();
        st.reachable()?;
        let Some(c) = st.containers.get_mut(container_id) else {
            return Err(Error::ContainerGone {
                id: container_id.to_string(),
            });
        };
        match network {
            None => c.networks.clear(),
            Some(n) if !c.networks.iter().any(|have| have == n) => c.networks.push(n.into()),
            Some(_) => {}
        }
        Ok(())
    }

    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo> {
        let st = self.lock();
        st.reachable()?;
        match st.containers.get(container_id) {
            Some(c) => Ok(ContainerInfo {
                networks: c.networks.clone(),
                env: c.env.clone(),
            }),
            None => Err(Error::ContainerGone {
                id: container_id.to_string(),
            }),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.lock().reachable()
    }

    async fn events(&self, label: &str) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        let mut st = self.lock();
        st.reachable()?;
        let (tx, rx) = mpsc::unbounded_channel();
        st.subscribers.push(Subscriber {
            label: label.to_string(),
            tx,
        });
        Ok(UnboundedReceiverStream::new(rx).boxed())
    }

    async fn announce(&self, server_id: &str, _image: &str) -> Result<Liveness> {
        let mut st = self.lock();
        st.reachable()?;
        let id = st.next_id(&format!("marker-{server_id}"));
        Ok(Liveness {
            id,
            hold: Box::new(()),
        })
    }

    async fn dead_instances(&self) -> Result<Vec<String>> {
        self.lock().reachable()?;
        Ok(Vec::new())
    }
}
