//! Files in and out of a leased container: uploads (a file, or a tar
//! unpacked into a directory), downloads (a file, or a directory as a tar),
//! and the listing of a run's artifacts. Everything streams through an exec
//! of the sandbox user, so it works on read-only roots, tmpfs mounts and any
//! backend, and runs with exactly the sandbox's own permissions.

pub mod tar_stream;

use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, stream::BoxStream};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    artifact::ArtifactInfo,
    error::{Error, Result},
    pool::LeaseGuard,
    sandbox::{self, EngineResult, Output, WriteKind, sh},
};

/// Server-wide bounds on file transfer.
#[derive(Debug, Clone)]
pub struct FileLimits {
    pub max_upload_bytes: u64,
    /// Paths a transfer may touch (after resolving symlinks, for downloads).
    pub allowed_roots: Vec<String>,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 100 << 20,
            allowed_roots: vec![sandbox::WORKSPACE.to_string(), "/tmp".to_string()],
        }
    }
}

/// What an upload writes.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    pub path: String,
    pub mode: u32,
    /// The content is a tar archive to unpack into `path`.
    pub tar: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadResult {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What a download carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadKind {
    File,
    Tar,
}

#[derive(Debug, Clone)]
pub struct DownloadHeader {
    pub path: String,
    pub kind: DownloadKind,
    pub mode: u32,
    pub size: u64,
}

/// Normalizes an absolute path and checks that it lies under an allowed root.
pub fn check_path(field: &str, path: &str, roots: &[String]) -> Result<String> {
    if path.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL bytes"));
    }
    if !path.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{path:?} must be an absolute path"),
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(
                    field,
                    format!("{path:?} must not contain '..'"),
                ));
            }
            p => parts.push(p),
        }
    }
    let normal = format!("/{}", parts.join("/"));
    let inside = roots
        .iter()
        .any(|root| normal == *root || normal.starts_with(&format!("{root}/")));
    if !inside {
        return Err(Error::invalid(
            field,
            format!(
                "{path:?} is outside the allowed roots ({})",
                roots.join(", ")
            ),
        ));
    }
    Ok(normal)
}

/// Streams `chunks` into a file (or a tar into a directory) in the lease's
/// container. Parents are created; a failed or oversized upload leaves no
/// partial file behind.
pub async fn upload<S>(
    lease: &LeaseGuard,
    target: UploadTarget,
    mut chunks: S,
    limits: &FileLimits,
) -> Result<UploadResult>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    let path = check_path("path", &target.path, &limits.allowed_roots)?;
    if target.mode > 0o7777 {
        return Err(Error::invalid(
            "mode",
            format!("{:o} is not a file mode", target.mode),
        ));
    }
    let kind = if target.tar {
        WriteKind::Tar
    } else {
        WriteKind::File {
            mode: target.mode & 0o777,
        }
    };
    let container = lease.sandbox();
    let (exec, mut stdin) = container
        .start_write(&path, kind)
        .await
        .map_err(|e| lease.engine_error(e))?;
    // Read the output while writing: a process that writes much (tar
    // warnings) must not block on a full pipe while we block on its input.
    let collect = tokio::spawn(collect_stderr(exec.output));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut failure: Option<Error> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        size += chunk.len() as u64;
        if size > limits.max_upload_bytes {
            failure = Some(Error::TooLarge(format!(
                "upload to {path} exceeds the limit of {} bytes",
                limits.max_upload_bytes
            )));
            break;
        }
        hasher.update(&chunk);
        if stdin.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = stdin.shutdown().await;
    drop(stdin);
    let stderr = collect.await.unwrap_or_default();
    let code = container.exit_code(&exec.id).await?;
    if failure.is_none() && code != 0 {
        failure = Some(Error::FileFailed {
            path: path.clone(),
            message: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    if let Some(failure) = failure {
        if !target.tar {
            let _ = container
                .run_script("rm -f -- \"$1\"", &[&path], None)
                .await;
        }
        return Err(failure);
    }
    Ok(UploadResult {
        path,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

async fn collect_stderr(mut output: BoxStream<'static, EngineResult<Output>>) -> Bytes {
    let mut err = BytesMut::new();
    while let Some(Ok(item)) = output.next().await {
        if let Output::Stderr(data) = item
            && err.len() < 64 * 1024
        {
            err.extend_from_slice(&data);
        }
    }
    err.freeze()
}

/// Resolves the path (symlinks included) and refuses anything outside the
/// roots; then sends a header line and the content: a file's bytes or a tar
/// of a directory (whose symlinks tar stores as links, never following them).
const DOWNLOAD_SCRIPT: &str = r#"p="$1"; shift
r=$(readlink -f -- "$p" 2>/dev/null)
if [ -z "$r" ] || [ ! -e "$r" ]; then echo "no such file or directory" >&2; exit 44; fi
ok=
for root in "$@"; do case "$r" in "$root"|"$root"/*) ok=1;; esac; done
if [ -z "$ok" ]; then echo "resolves to $r, outside the allowed roots" >&2; exit 45; fi
if [ -d "$r" ]; then
  printf 'D %s 0\n' "$(stat -c %a -- "$r")"; exec tar -c -f - -C "$r" .
elif [ -f "$r" ]; then
  printf 'F %s\n' "$(stat -c '%a %s' -- "$r")"; exec cat -- "$r"
fi
echo "not a regular file or directory" >&2; exit 46"#;

/// Starts a download: returns its header and the content's chunks.
pub async fn download(
    lease: &LeaseGuard,
    path: &str,
    limits: &FileLimits,
) -> Result<(DownloadHeader, BoxStream<'static, Result<Bytes>>)> {
    let path = check_path("path", path, &limits.allowed_roots)?;
    let mut argv = sh(DOWNLOAD_SCRIPT, &[&path]);
    argv.extend(limits.allowed_roots.iter().cloned());
    let container = lease.sandbox().clone();
    let exec = container
        .start(container.internal(argv))
        .await
        .map_err(|e| lease.engine_error(e))?;
    let mut output = exec.output;
    let mut head = BytesMut::new();
    let mut stderr = BytesMut::new();
    let newline = loop {
        if let Some(i) = head.iter().position(|&b| b == b'\n') {
            break Some(i);
        }
        match output.next().await {
            Some(Ok(Output::Stdout(d))) => head.extend_from_slice(&d),
            Some(Ok(Output::Stderr(d))) => stderr.extend_from_slice(&d),
            Some(Err(e)) => return Err(lease.engine_error(e)),
            None => break None,
        }
    };
    let Some(newline) = newline else {
        let code = container.exit_code(&exec.id).await?;
        let message = String::from_utf8_lossy(&stderr).trim().to_string();
        return Err(match code {
            44 => Error::PathNotFound { path, message },
            45 | 46 => Error::invalid("path", format!("{path:?} {message}")),
            _ => Error::FileFailed { path, message },
        });
    };
    let line = String::from_utf8_lossy(&head[..newline]).to_string();
    let rest = head.split_off(newline + 1).freeze();
    let mut fields = line.split_whitespace();
    let kind = match fields.next() {
        Some("D") => DownloadKind::Tar,
        _ => DownloadKind::File,
    };
    let mode = fields
        .next()
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0);
    let size = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = DownloadHeader {
        path: path.clone(),
        kind,
        mode,
        size,
    };
    let exec_id = exec.id;
    let body = futures::stream::once(async move { Ok(rest) })
        .chain(output.filter_map(|item| async move {
            match item {
                Ok(Output::Stdout(d)) => Some(Ok(d)),
                Ok(Output::Stderr(_)) => None,
                Err(e) => Some(Err(Error::from(e))),
            }
        }))
        .chain(futures::stream::once(async move {
            // A non-zero exit after the header means the content is cut.
            match container.exit_code(&exec_id).await {
                Ok(0) => Ok(Bytes::new()),
                Ok(code) => Err(Error::FileFailed {
                    path,
                    message: format!("reading stopped with exit code {code}"),
                }),
                Err(e) => Err(Error::from(e)),
            }
        }))
        .filter(|item| futures::future::ready(!matches!(item, Ok(b) if b.is_empty())))
        .boxed();
    Ok((header, body))
}

/// Lists the files in the pool's output directory: size, mtime, relative name.
const LIST_SCRIPT: &str = r#"cd -- "$1" 2>/dev/null || exit 0
find . -type f -printf '%s\t%T@\t%P\0'"#;

/// Every file under the lease's output directory, oldest first.
pub async fn list_artifacts(lease: &LeaseGuard) -> Result<Vec<ArtifactInfo>> {
    let out_dir = lease.spec().output_dir.clone();
    let out = lease
        .sandbox()
        .run_script(LIST_SCRIPT, &[&out_dir], None)
        .await
        .map_err(|e| lease.sandbox_error(e))?;
    let mut found: Vec<ArtifactInfo> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|rec| !rec.is_empty())
        .filter_map(|rec| {
            let text = String::from_utf8_lossy(rec);
            let mut fields = text.splitn(3, '\t');
            let size: u64 = fields.next()?.parse().ok()?;
            let mtime: f64 = fields.next()?.parse().ok()?;
            let name = fields.next()?.to_string();
            let modified = UNIX_EPOCH + Duration::from_secs_f64(mtime.max(0.0));
            Some(ArtifactInfo::new(
                &out_dir,
                name,
                size,
                modified,
                String::new(),
            ))
        })
        .collect();
    found.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    // What the runs reported: which run made a file, and its digest (while
    // the file is as the run left it).
    let recorded = lease.artifacts();
    for file in &mut found {
        if let Some(r) = recorded.iter().rev().find(|r| r.name == file.name) {
            file.run_id = r.run_id.clone();
            if r.size == file.size {
                file.sha256 = r.sha256.clone();
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<String> {
        vec!["/sandbox".into(), "/tmp".into()]
    }

    #[test]
    fn paths_are_normalized_and_confined() {
        assert_eq!(
            check_path("p", "/sandbox//a/./b", &roots()).unwrap(),
            "/sandbox/a/b"
        );
        assert_eq!(check_path("p", "/tmp", &roots()).unwrap(), "/tmp");
        assert!(check_path("p", "/sandbox/../etc/passwd", &roots()).is_err());
        assert!(check_path("p", "/etc/passwd", &roots()).is_err());
        assert!(check_path("p", "/sandboxx/a", &roots()).is_err());
        assert!(check_path("p", "relative", &roots()).is_err());
        assert!(check_path("p", "/sandbox/a\0b", &roots()).is_err());
    }
}
