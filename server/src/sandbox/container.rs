//! One container as the layers above the sandbox see it: its engine, the
//! pool spec it was made from, its language and its id. Runs, transfers,
//! contexts and installs reach the engine only through this handle.

use std::sync::Arc;

use bytes::Bytes;

use super::{INTERNAL_OUTPUT_LIMIT, Result, internal, sh};
use crate::{
    backend::{self, Collected, Exec, ExecSpec, ExecStdin, SharedBackend},
    lang::{InstallScope, Language},
    spec::PoolSpec,
};

/// Writes standard input to a path: a file (parents made, mode set), or a
/// tar unpacked into a directory. Exit 45: the file path is a directory.
const WRITE_SCRIPT: &str = r#"p="$1"
if [ "$2" = tar ]; then
  mkdir -p -- "$p" && exec tar -x -f - -C "$p" --no-same-owner
fi
if [ -d "$p" ]; then echo "$p is a directory" >&2; exit 45; fi
mkdir -p -- "$(dirname -- "$p")" && cat > "$p" && chmod "$2" -- "$p""#;

/// What `start_write` makes of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    File { mode: u32 },
    Tar,
}

/// Output of the server's own listing scripts is kept up to this size.
const SCRIPT_OUTPUT_LIMIT: usize = 4 << 20;

#[derive(Clone)]
pub struct Container {
    backend: SharedBackend,
    spec: Arc<PoolSpec>,
    lang: &'static dyn Language,
    id: String,
}

impl Container {
    pub fn new(
        backend: SharedBackend,
        spec: Arc<PoolSpec>,
        lang: &'static dyn Language,
        id: impl Into<String>,
    ) -> Self {
        Self {
            backend,
            spec,
            lang,
            id: id.into(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &Arc<PoolSpec> {
        &self.spec
    }

    pub fn lang(&self) -> &'static dyn Language {
        self.lang
    }

    /// An exec of the server's own in this container: as the sandbox user, in
    /// /, without stdin.
    pub fn internal(&self, argv: Vec<String>) -> ExecSpec {
        internal(&self.spec, argv)
    }

    /// Starts a process (a run's program, a kernel, a transfer) and returns
    /// its streams.
    pub async fn start(&self, exec: ExecSpec) -> backend::Result<Exec> {
        self.backend.exec(&self.id, exec).await
    }

    /// The exit code of a process whose output has ended.
    pub async fn exit_code(&self, exec_id: &str) -> backend::Result<i64> {
        backend::wait_exit_code(&*self.backend, exec_id).await
    }

    /// Starts writing to `path` as the sandbox user: what goes into the
    /// returned stdin becomes the file (or the tar to unpack). The caller
    /// shuts stdin down, drains the output and checks the exit code.
    pub async fn start_write(
        &self,
        path: &str,
        kind: WriteKind,
    ) -> backend::Result<(Exec, ExecStdin)> {
        let how = match kind {
            WriteKind::File { mode } => format!("{mode:o}"),
            WriteKind::Tar => "tar".to_string(),
        };
        let exec = ExecSpec {
            stdin: true,
            ..self.internal(sh(WRITE_SCRIPT, &[path, &how]))
        };
        let mut started = self.start(exec).await?;
        let stdin = started.stdin.take().ok_or_else(|| backend::Error::Engine {
            op: "exec start",
            detail: "the engine attached no stdin to a write".into(),
        })?;
        Ok((started, stdin))
    }

    /// Writes `content` to the file `path` (parents made) with `mode`.
    pub async fn write_file(&self, path: &str, content: Bytes, mode: u32) -> Result<()> {
        let how = format!("{:o}", mode & 0o777);
        let out = self
            .collect(
                self.internal(sh(WRITE_SCRIPT, &[path, &how])),
                Some(content),
                INTERNAL_OUTPUT_LIMIT,
            )
            .await?;
        if out.success() {
            return Ok(());
        }
        Err(super::Error::CommandFailed {
            what: "writing a file",
            exit_code: out.exit_code,
            detail: format!("{path}: {}", out.diagnostic()),
        })
    }

    /// Runs a process to completion, keeping at most `limit` bytes of each
    /// output stream.
    pub async fn collect(
        &self,
        exec: ExecSpec,
        stdin: Option<Bytes>,
        limit: usize,
    ) -> backend::Result<Collected> {
        backend::exec_collect(&*self.backend, &self.id, exec, stdin, limit).await
    }

    /// Runs a command of the server's own as the sandbox user.
    pub async fn run_command(&self, argv: Vec<String>) -> Result<Collected> {
        Ok(self
            .collect(self.internal(argv), None, INTERNAL_OUTPUT_LIMIT)
            .await?)
    }

    /// Runs a shell script of the server's own as the sandbox user, its
    /// arguments as positional parameters, and returns its output (for
    /// listing files and the like).
    pub async fn run_script(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<Bytes>,
    ) -> Result<Collected> {
        Ok(self
            .collect(self.internal(sh(script, args)), stdin, SCRIPT_OUTPUT_LIMIT)
            .await?)
    }

    /// Kills every process of a run (or a context's kernel), found by the
    /// marker `run_id` in its environment.
    pub async fn kill_run(&self, run_id: &str) -> Result<()> {
        super::kill_run(&*self.backend, &self.spec, &self.id, run_id).await
    }

    /// Installs libraries for the lease that holds this container.
    pub async fn install_libraries(
        &self,
        packages: &[String],
        network: Option<&str>,
    ) -> Result<String> {
        super::install_libraries(
            &*self.backend,
            &self.spec,
            self.lang,
            &self.id,
            packages,
            InstallScope::Lease,
            network,
        )
        .await
    }
}
